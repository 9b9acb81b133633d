// What the benchmark firmware needs from a board: a free-running tick counter and a name.
// A port to real hardware implements these (on Cortex-M4/M7, DWT->CYCCNT counts core cycles), next to
// the board's own startup code and linker script; see README.md.
#ifndef EDGEKD_PLATFORM_H_
#define EDGEKD_PLATFORM_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void platform_init(void);                   // start the tick counter
uint32_t platform_ticks(void);              // counts up; wraps at 2^32
uint32_t platform_ticks_per_second(void);
const char* platform_name(void);

#ifdef __cplusplus
}
#endif

#endif  // EDGEKD_PLATFORM_H_
