/* Reset and fault handling for QEMU's MPS2 boards (Cortex-M4, M7, M33 in the secure state), with semihosting
   for I/O and exit. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern uint32_t __stack_top, __bss_start__, __bss_end__;
extern void __libc_init_array(void);
extern void initialise_monitor_handles(void);
extern int main(void);

void* __dso_handle = 0; /* crtbegin.o would define it; -nostartfiles leaves it out */
void _init(void) {}
void _fini(void) {}

void Reset_Handler(void) __attribute__((naked, noreturn));
void Fault_Handler(void);

static void __attribute__((noreturn, used)) start_c(void) {
  memset(&__bss_start__, 0, (size_t)((char*)&__bss_end__ - (char*)&__bss_start__));
  initialise_monitor_handles();
  __libc_init_array();
  exit(main());
}

void Reset_Handler(void) {
  /* The FPU (CP10/CP11 in CPACR) must be on before the first floating-point instruction. */
  __asm volatile(
      "ldr r0, =0xE000ED88\n"
      "ldr r1, [r0]\n"
      "orr r1, r1, #(0xF << 20)\n"
      "str r1, [r0]\n"
      "dsb\n"
      "isb\n"
      "ldr r0, =__stack_top\n"
      "mov sp, r0\n"
      "b start_c\n");
}

void Fault_Handler(void) {
  volatile uint32_t* cfsr = (volatile uint32_t*)0xE000ED28;
  printf("EDGEKD error fault CFSR=0x%08lx HFSR=0x%08lx\n", (unsigned long)cfsr[0], (unsigned long)cfsr[1]);
  exit(99);
}

/* Stack pointer, reset, then NMI, HardFault, MemManage, BusFault, UsageFault, 4 reserved, SVC,
   DebugMon, reserved, PendSV, SysTick. */
__attribute__((section(".isr_vector"), used)) const void* const vector_table[16] = {
    &__stack_top,  Reset_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, 0,             0,             0,             0,             Fault_Handler,
    Fault_Handler, 0,             Fault_Handler, Fault_Handler,
};
