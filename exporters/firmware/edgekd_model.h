// The model of model_data.cc behind TensorFlow Lite Micro: what an application on the device calls.
//
//   edgekd::Setup();                      // once: op resolver (this model's operators only) + arena
//   quantise an image into edgekd::Input()->data.int8 (see model_data.h for scale and zero point)
//   edgekd::Invoke();
//   read edgekd::Output()->data.int8
#ifndef EDGEKD_MODEL_H_
#define EDGEKD_MODEL_H_

#include <stddef.h>

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

}  // namespace edgekd

#endif  // EDGEKD_MODEL_H_
