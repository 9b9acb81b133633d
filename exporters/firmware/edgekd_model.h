// The model of model_data.cc behind TensorFlow Lite Micro: what an application on the device calls.
//
//   edgekd::Setup();                      // once: op resolver (this model's operators only) + arena
//   edgekd::SetImage(frame, 320, 240, edgekd::PixelFormat::kRgb565);  // any size: resized as in training
//   edgekd::Prediction p = edgekd::Predict();                          // p.class_index, p.probability
//
// or, for an input that is not an image: write edgekd::Input()->data.int8 yourself (model_data.h gives
// the scale and zero point), edgekd::Invoke(), read edgekd::Output()->data.int8.
#ifndef EDGEKD_MODEL_H_
#define EDGEKD_MODEL_H_

#include <stddef.h>
#include <stdint.h>

#include "model_data.h"
#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/micro_profiler_interface.h"

namespace edgekd {

// Builds the interpreter over the arena (kTensorArenaSize bytes) and allocates the tensors. A
// profiler, when given, receives one event per operator of every Invoke(). Calling Setup() again
// rebuilds the interpreter (e.g. with or without a profiler).
TfLiteStatus Setup(tflite::MicroProfilerInterface* profiler = nullptr);
TfLiteStatus Invoke();
TfLiteTensor* Input();
TfLiteTensor* Output();
size_t ArenaUsedBytes();  // what the interpreter really took from the arena after Setup()
size_t ArenaSize();

#if EDGEKD_IMAGE_INPUT
// A frame's pixels, row-major: GRAY8 one byte a pixel, RGB888 three (R, G, B), RGB565 two (little-endian,
// red in the top five bits).
enum class PixelFormat { kGray8 = 0, kRgb888 = 1, kRgb565 = 2 };
// How a frame that is not square becomes the model's square input (the recipe's data.resize).
enum class Resize { kCrop = 0, kPad = 1, kSquash = 2 };

// Fills the model's input from a frame of any size, exactly as edgekd.preprocess.frame_to_input does on
// the host (and as training decoded image folders): to the model's channels (BT.601 luma in integers),
// `resize` to kInputWidth × kInputHeight by box means, then normalised and quantised through
// g_input_lut. Call after Setup(); kTfLiteError for an empty frame.
TfLiteStatus SetImage(const uint8_t* pixels, int width, int height, PixelFormat format,
                      Resize resize = static_cast<Resize>(kResizeRule));

struct Prediction {
  int class_index;    // -1 when Invoke() failed
  float probability;  // softmax of the dequantised output at class_index
};
// Invoke() on the input SetImage() wrote; the most likely class and its probability.
Prediction Predict();
#endif

}  // namespace edgekd

#endif  // EDGEKD_MODEL_H_
