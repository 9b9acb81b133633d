// QEMU's MPS2 boards (mps2-an386: Cortex-M4, mps2-an500: Cortex-M7): the CMSDK APB timer 0 at
// 0x40000000, clocked at 25 MHz. It counts down from its reload value; platform_ticks() counts up.
#include "../platform.h"

namespace {
volatile uint32_t* const kTimer0 = reinterpret_cast<volatile uint32_t*>(0x40000000u);
enum { kCtrl = 0, kValue = 1, kReload = 2 };
}  // namespace

extern "C" void platform_init(void) {
  kTimer0[kCtrl] = 0;
  kTimer0[kReload] = 0xFFFFFFFFu;
  kTimer0[kValue] = 0xFFFFFFFFu;
  kTimer0[kCtrl] = 1;  // enable, system clock, no interrupt
}

extern "C" uint32_t platform_ticks(void) { return 0xFFFFFFFFu - kTimer0[kValue]; }
extern "C" uint32_t platform_ticks_per_second(void) { return 25000000u; }
extern "C" const char* platform_name(void) { return "qemu-mps2"; }
