#include "edgekd_model.h"

#include <math.h>

#include <new>

#include "model_data.h"
#include "model_ops.h"
#include "platform.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_log.h"
#include "tensorflow/lite/micro/micro_time.h"
#include "tensorflow/lite/schema/schema_generated.h"

// TFLM's profiler reads time through these; the board's tick counter answers.
namespace tflite {
uint32_t ticks_per_second() { return platform_ticks_per_second(); }
uint32_t GetCurrentTimeTicks() { return platform_ticks(); }
}  // namespace tflite

namespace edgekd {
namespace {

alignas(16) uint8_t g_arena[kTensorArenaSize];
tflite::MicroMutableOpResolver<kModelOpCount> g_resolver;
bool g_resolver_ready = false;
// The interpreter lives in static storage so that Setup() can rebuild it without a heap.
alignas(tflite::MicroInterpreter) uint8_t g_interpreter_storage[sizeof(tflite::MicroInterpreter)];
tflite::MicroInterpreter* g_interpreter = nullptr;

}  // namespace

TfLiteStatus Setup(tflite::MicroProfilerInterface* profiler) {
  if (g_interpreter != nullptr) {
    g_interpreter->~MicroInterpreter();
    g_interpreter = nullptr;
  }
  const tflite::Model* model = tflite::GetModel(g_model_data);
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    MicroPrintf("model schema version %d, this TFLM reads %d", static_cast<int>(model->version()),
                TFLITE_SCHEMA_VERSION);
    return kTfLiteError;
  }
  if (!g_resolver_ready) {
    TF_LITE_ENSURE_STATUS(RegisterModelOps(g_resolver));
    g_resolver_ready = true;
  }
  g_interpreter = new (g_interpreter_storage)
      tflite::MicroInterpreter(model, g_resolver, g_arena, kTensorArenaSize, nullptr, profiler);
  return g_interpreter->AllocateTensors();
}

TfLiteStatus Invoke() { return g_interpreter->Invoke(); }
TfLiteTensor* Input() { return g_interpreter->input(0); }
TfLiteTensor* Output() { return g_interpreter->output(0); }
size_t ArenaUsedBytes() { return g_interpreter->arena_used_bytes(); }
size_t ArenaSize() { return kTensorArenaSize; }

#if EDGEKD_IMAGE_INPUT
namespace {

// One pixel as kInputChannels 8-bit values (edgekd.preprocess.unpack, then to_channels).
inline void ReadPixel(const uint8_t* pixels, int index, PixelFormat format, uint32_t* value) {
  int red, green, blue;
  if (format == PixelFormat::kGray8) {
    red = green = blue = pixels[index];
    if (kInputChannels == 1) {
      value[0] = red;
      return;
    }
  } else if (format == PixelFormat::kRgb888) {
    red = pixels[3 * index];
    green = pixels[3 * index + 1];
    blue = pixels[3 * index + 2];
  } else {
    const int packed = pixels[2 * index] | (pixels[2 * index + 1] << 8);
    const int red5 = packed >> 11, green6 = (packed >> 5) & 63, blue5 = packed & 31;
    red = (red5 << 3) | (red5 >> 2);
    green = (green6 << 2) | (green6 >> 4);
    blue = (blue5 << 3) | (blue5 >> 2);
  }
  if (kInputChannels == 1) {
    value[0] = (299 * red + 587 * green + 114 * blue + 500) / 1000;
  } else {
    value[0] = red;
    value[1] = green;
    value[2] = blue;
  }
}

}  // namespace

TfLiteStatus SetImage(const uint8_t* pixels, int width, int height, PixelFormat format, Resize resize) {
  if (g_interpreter == nullptr || pixels == nullptr || width <= 0 || height <= 0) return kTfLiteError;
  // The canvas the boxes tile, and where the frame's pixel (0, 0) sits on it.
  int canvas_height = height, canvas_width = width, top = 0, left = 0;
  if (resize == Resize::kCrop) {
    const int side = width < height ? width : height;
    canvas_height = canvas_width = side;
    top = (height - side) / 2;
    left = (width - side) / 2;
  } else if (resize == Resize::kPad) {
    const int side = width > height ? width : height;
    canvas_height = canvas_width = side;
    top = -((side - height) / 2);  // black borders: canvas pixels outside the frame count as 0
    left = -((side - width) / 2);
  }
  int8_t* input = Input()->data.int8;
  for (int out_y = 0; out_y < kInputHeight; ++out_y) {
    const int y0 = out_y * canvas_height / kInputHeight;
    int y1 = (out_y + 1) * canvas_height / kInputHeight;
    if (y1 <= y0) y1 = y0 + 1;
    for (int out_x = 0; out_x < kInputWidth; ++out_x) {
      const int x0 = out_x * canvas_width / kInputWidth;
      int x1 = (out_x + 1) * canvas_width / kInputWidth;
      if (x1 <= x0) x1 = x0 + 1;
      uint32_t sum[kInputChannels] = {};
      uint32_t value[kInputChannels];
      for (int y = y0; y < y1; ++y) {
        const int row = y + top;
        if (row < 0 || row >= height) continue;
        for (int x = x0; x < x1; ++x) {
          const int column = x + left;
          if (column < 0 || column >= width) continue;
          ReadPixel(pixels, row * width + column, format, value);
          for (int c = 0; c < kInputChannels; ++c) sum[c] += value[c];
        }
      }
      const uint32_t count = static_cast<uint32_t>((y1 - y0) * (x1 - x0));
      for (int c = 0; c < kInputChannels; ++c) {
        const uint32_t mean = (sum[c] + count / 2) / count;
        input[(out_y * kInputWidth + out_x) * kInputChannels + c] = g_input_lut[c][mean];
      }
    }
  }
  return kTfLiteOk;
}

Prediction Predict() {
  Prediction prediction = {-1, 0.0f};
  if (Invoke() != kTfLiteOk) return prediction;
  const TfLiteTensor* output = Output();
  const int count = static_cast<int>(output->bytes);
  int best = 0;
  for (int i = 1; i < count; ++i) {
    if (output->data.int8[i] > output->data.int8[best]) best = i;
  }
  float total = 0.0f;
  for (int i = 0; i < count; ++i) total += expf((output->data.int8[i] - output->data.int8[best]) * kOutputScale);
  prediction.class_index = best;
  prediction.probability = 1.0f / total;
  return prediction;
}
#endif

}  // namespace edgekd
