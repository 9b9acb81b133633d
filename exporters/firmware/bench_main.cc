// The edgekd benchmark firmware: feeds test inputs through the model one at a time, times every
// inference with the board's tick counter, then profiles one inference operator by operator.
//
// Inputs come from the file edgekd_inputs.bin on the host (semihosting; N images of the model's
// int8 input, back to back); without that file two built-in inputs are used (zeros, a fixed
// pseudo-random pattern). Everything edgekd reads is a line starting with "EDGEKD ":
//   EDGEKD platform <name> ticks_per_second <n>
//   EDGEKD arena_used <bytes> arena_size <bytes> input_bytes <n> output_bytes <n>
//   EDGEKD warmup <ticks>
//   EDGEKD result <image> <ticks> <int8 outputs...>
//   EDGEKD profile <ticks of the profiled inference>   followed by TFLM's MicroProfiler CSV
//   EDGEKD done <images>
//   EDGEKD error <what>                                 (and a non-zero exit code)
#include <stdio.h>
#include <string.h>

#include "edgekd_model.h"
#include "model_data.h"
#include "platform.h"
#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"
#include "tensorflow/lite/micro/micro_profiler.h"

namespace {

constexpr const char* kInputFile = "edgekd_inputs.bin";

// TFLM's MicroPrintf ends lines with "\r\n"; keep plain newlines so the host parses lines cleanly.
void log_to_stdout(const char* text) {
  if (strcmp(text, "\r\n") == 0) {
    fputc('\n', stdout);
  } else {
    fputs(text, stdout);
  }
}

void fill_builtin(int8_t* data, size_t bytes, int image) {
  if (image == 0) {
    memset(data, 0, bytes);
    return;
  }
  uint32_t state = 12345u;
  for (size_t i = 0; i < bytes; ++i) {
    state = state * 1103515245u + 12345u;
    data[i] = static_cast<int8_t>(state >> 24);
  }
}

// Reads the next image into the input tensor; false when there is none.
bool next_input(FILE* inputs, int image, TfLiteTensor* input) {
  if (inputs == nullptr) {
    if (image >= 2) return false;
    fill_builtin(input->data.int8, input->bytes, image);
    return true;
  }
  return fread(input->data.int8, 1, input->bytes, inputs) == input->bytes;
}

int fail(const char* what) {
  printf("EDGEKD error %s\n", what);
  fflush(stdout);
  return 3;
}

tflite::MicroProfiler g_profiler;
int8_t g_first_input[kInputHeight * kInputWidth * kInputChannels];  // profiled again at the end

}  // namespace

int main(void) {
  RegisterDebugLogCallback(log_to_stdout);
  platform_init();
  printf("EDGEKD platform %s ticks_per_second %lu\n", platform_name(),
         static_cast<unsigned long>(platform_ticks_per_second()));
  // TFLM says why (a missing operator, the arena) through MicroPrintf, just before; the host quotes it.
  if (edgekd::Setup() != kTfLiteOk) return fail("setup: AllocateTensors failed");
  TfLiteTensor* input = edgekd::Input();
  TfLiteTensor* output = edgekd::Output();
  if (input->type != kTfLiteInt8 || output->type != kTfLiteInt8) return fail("model input/output is not int8");
  if (input->bytes != sizeof(g_first_input)) return fail("input size differs from model_data.h");
  printf("EDGEKD arena_used %u arena_size %u input_bytes %u output_bytes %u\n",
         static_cast<unsigned>(edgekd::ArenaUsedBytes()), static_cast<unsigned>(edgekd::ArenaSize()),
         static_cast<unsigned>(input->bytes), static_cast<unsigned>(output->bytes));

  FILE* inputs = fopen(kInputFile, "rb");
  int images = 0;
  for (; next_input(inputs, images, input); ++images) {
    if (images == 0) {
      memcpy(g_first_input, input->data.int8, input->bytes);
      uint32_t start = platform_ticks();
      if (edgekd::Invoke() != kTfLiteOk) return fail("warm-up Invoke failed");
      printf("EDGEKD warmup %lu\n", static_cast<unsigned long>(platform_ticks() - start));
      memcpy(input->data.int8, g_first_input, input->bytes);  // an op may have written over it
    }
    uint32_t start = platform_ticks();
    TfLiteStatus status = edgekd::Invoke();
    uint32_t ticks = platform_ticks() - start;
    if (status != kTfLiteOk) return fail("Invoke failed");
    printf("EDGEKD result %d %lu", images, static_cast<unsigned long>(ticks));
    for (size_t i = 0; i < output->bytes; ++i) printf(" %d", output->data.int8[i]);
    printf("\n");
  }
  if (inputs != nullptr) fclose(inputs);
  if (images == 0) return fail("no input: edgekd_inputs.bin is empty or shorter than one image");

  // One more inference of the first image, with TFLM's profiler attached (it costs a little per
  // operator, so the timed inferences above run without it).
  if (edgekd::Setup(&g_profiler) != kTfLiteOk) return fail("setup with profiler failed");
  memcpy(edgekd::Input()->data.int8, g_first_input, edgekd::Input()->bytes);
  uint32_t start = platform_ticks();
  if (edgekd::Invoke() != kTfLiteOk) return fail("profiled Invoke failed");
  printf("EDGEKD profile %lu\n", static_cast<unsigned long>(platform_ticks() - start));
  g_profiler.LogCsv();
  printf("EDGEKD done %d\n", images);
  fflush(stdout);
  return 0;
}
