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
//
// Then, when the host gives edgekd_frames.bin (records of u16 width, u16 height, u8 pixel format, u8
// resize rule, all little-endian, then the frame's pixels), each frame goes through SetImage() and
// Predict(), the way an application feeds camera frames:
//   EDGEKD frame <frame> <class> <probability x 1e6> <FNV-1a 32-bit hash of the int8 input SetImage() wrote>
//   EDGEKD frames <frames>
#include <stdio.h>
#include <string.h>

#include "edgekd_model.h"
#include "model_data.h"
#include "platform.h"
#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"
#include "tensorflow/lite/micro/micro_profiler.h"

namespace {

constexpr const char* kInputFile = "edgekd_inputs.bin";
constexpr const char* kFrameFile = "edgekd_frames.bin";

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

#if EDGEKD_IMAGE_INPUT
// The largest frame the frames file may hold: 128x128 RGB, or an RGB frame of the model's input size.
constexpr size_t kFrameBytes = kInputHeight * kInputWidth * 3 > 128 * 128 * 3 ? kInputHeight * kInputWidth * 3
                                                                              : 128 * 128 * 3;
uint8_t g_frame[kFrameBytes];

// FNV-1a, 32 bits: the host recomputes it over the input it expects (a whole input per frame would make
// megabytes of output for a 144x144 RGB model).
uint32_t fnv1a(const int8_t* data, size_t bytes) {
  uint32_t hash = 2166136261u;
  for (size_t i = 0; i < bytes; ++i) hash = (hash ^ static_cast<uint8_t>(data[i])) * 16777619u;
  return hash;
}

// Every frame of the frames file through SetImage() and Predict(); the number of frames, or -1.
int run_frames(FILE* frames) {
  int count = 0;
  uint8_t header[6];
  while (fread(header, 1, sizeof(header), frames) == sizeof(header)) {
    const int width = header[0] | (header[1] << 8), height = header[2] | (header[3] << 8);
    if (header[4] > 2 || header[5] > 2) return -1;  // not a PixelFormat or a Resize
    const auto format = static_cast<edgekd::PixelFormat>(header[4]);
    constexpr int kBytesPerPixel[] = {1, 3, 2};  // GRAY8, RGB888, RGB565
    const size_t bytes = static_cast<size_t>(width) * height * kBytesPerPixel[header[4]];
    if (bytes > sizeof(g_frame) || fread(g_frame, 1, bytes, frames) != bytes) return -1;
    if (edgekd::SetImage(g_frame, width, height, format, static_cast<edgekd::Resize>(header[5])) != kTfLiteOk) {
      return -1;
    }
    const TfLiteTensor* input = edgekd::Input();
    const uint32_t written = fnv1a(input->data.int8, input->bytes);  // before Invoke() may write over it
    const edgekd::Prediction prediction = edgekd::Predict();
    printf("EDGEKD frame %d %d %ld %lu\n", count, prediction.class_index,
           static_cast<long>(prediction.probability * 1e6f + 0.5f), static_cast<unsigned long>(written));
    ++count;
  }
  return count;
}
#endif

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
#if EDGEKD_IMAGE_INPUT
  FILE* frames = fopen(kFrameFile, "rb");
  if (frames != nullptr) {
    if (edgekd::Setup() != kTfLiteOk) return fail("setup for frames failed");
    const int count = run_frames(frames);
    fclose(frames);
    if (count < 0) return fail("frames: a record is cut short, malformed or larger than the frame buffer");
    printf("EDGEKD frames %d\n", count);
  }
#endif
  fflush(stdout);
  return 0;
}
