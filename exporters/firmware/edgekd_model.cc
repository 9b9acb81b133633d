#include "edgekd_model.h"

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

}  // namespace edgekd
