// QEMU's MPS2 boards: the CMSDK APB timer 0, at MPS2_TIMER0 and clocked at MPS2_TIMER_HZ (the Makefile
// sets both per board: mps2-an386 and mps2-an500 at 0x40000000, 25 MHz; mps2-an505 through the secure alias
// 0x50000000, 20 MHz). It counts down from its reload value; platform_ticks() counts up.
#include "../platform.h"

namespace {
volatile uint32_t* const kTimer0 = reinterpret_cast<volatile uint32_t*>(MPS2_TIMER0);
enum { kCtrl = 0, kValue = 1, kReload = 2 };
}  // namespace

extern "C" void platform_init(void) {
  kTimer0[kCtrl] = 0;
  kTimer0[kReload] = 0xFFFFFFFFu;
  kTimer0[kValue] = 0xFFFFFFFFu;
  kTimer0[kCtrl] = 1;  // enable, system clock, no interrupt
}

extern "C" uint32_t platform_ticks(void) { return 0xFFFFFFFFu - kTimer0[kValue]; }
extern "C" uint32_t platform_ticks_per_second(void) { return MPS2_TIMER_HZ; }
extern "C" const char* platform_name(void) { return "qemu-mps2"; }
