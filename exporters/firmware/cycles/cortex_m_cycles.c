/* QEMU TCG plugin: core cycles of a Cortex-M4 (in-order, single issue) for the code QEMU runs.
 *
 * QEMU executes instructions without timing. This plugin gives each instruction the cycles the
 * Cortex-M4 Technical Reference Manual (ARM DDI 0439, table 3-1 "instruction set summary") lists, with the
 * two effects that matter for TFLite Micro + CMSIS-NN kernels:
 *   - a taken branch costs 1 + P cycles (P, the pipeline refill, 1..3 on the core; a parameter, `refill`);
 *     a conditional branch that falls through costs 1 — decided at run time, by whether the next block
 *     starts where the branch's block ends;
 *   - neighbouring load/store single instructions pipeline: the first takes 2 cycles, each one right
 *     after another takes 1.
 * LDM/STM/PUSH/POP take 1 + N (N registers), LDRD/STRD 3, multiplies and multiply-accumulates 1 (the M4's
 * single-cycle MAC), SDIV/UDIV a constant `divide` (2..12 on the core, data dependent), the rest 1.
 *
 * Memory: RAM has no wait states. Reads of the flash region (flash_start..flash_end: the model's weights,
 * constants and literal pools) go through a buffer of `flash_lines` lines of `flash_line` bytes, as the
 * flash accelerators of STM32 (ART) and Renesas RA parts do: a read within a buffered line costs nothing
 * extra, any other read adds `flash_wait` cycles (the flash's wait states at the core clock) and replaces
 * the oldest line. Instruction fetches are taken to hit the accelerator's instruction cache (TFLM's hot
 * loops are a few hundred bytes). flash_wait=0 (the default) leaves memory out and costs nothing.
 *
 * Arguments: refill=P (default 2), divide=C (default 7), flash_start=ADDR, flash_end=ADDR, flash_wait=W,
 * flash_line=BYTES (default 16), flash_lines=N (default 1, at most 64), start=ADDR, stop=ADDR (report the cycles between
 * the executions of the blocks at these addresses), mark=ADDR (record instructions and cycles each time
 * the block at ADDR starts). Output on exit, one line each:
 *   cycles_total <instructions> <cycles>
 *   cycles_window <instructions> <cycles>          (each start..stop)
 *   cycles_mark <instructions> <cycles>            (each execution of the mark, in order)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "qemu_plugin_v1.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

typedef struct Block {
  uint64_t start, end;  /* guest addresses: first instruction, and just after the last */
  uint32_t insns, cycles;
  uint8_t ends_in_branch, is_start, is_stop, is_mark;
} Block;

enum Kind { OTHER, LOAD_STORE, BRANCH };
typedef struct Cost { enum Kind kind; uint32_t cycles; } Cost;

static unsigned refill = 2, divide = 7;
static uint64_t flash_start, flash_end, flash_wait, flash_line = 16, flash_lines = 1;
static uint64_t buffered[64], next_victim, flash_misses;  /* line numbers + 1 (0: empty) */
static uint64_t start_addr = 1, stop_addr = 1, mark_addr = 1;  /* 1: never a Thumb block address */
static uint64_t insns, cycles, window_insns, window_cycles;
static const Block *previous;
static char *out;
static size_t out_len, out_cap;

static void emit(const char *label, uint64_t a, uint64_t b) {
  char line[96];
  int n = snprintf(line, sizeof line, "%s %" PRIu64 " %" PRIu64 "\n", label, a, b);
  if (out_len + n + 1 > out_cap) {
    out_cap = out_cap ? 2 * out_cap : 1 << 16;
    out = realloc(out, out_cap);
  }
  memcpy(out + out_len, line, n + 1);
  out_len += n;
}

static Cost cost(uint32_t cycles_, enum Kind kind) { Cost c = {kind, cycles_}; return c; }

static Cost thumb16(uint16_t hw) {
  if ((hw & 0xF800) == 0x4800) return cost(2, LOAD_STORE);          /* LDR (literal) */
  if ((hw & 0xF000) == 0x5000 || (hw & 0xE000) == 0x6000 ||          /* register / immediate offset */
      (hw & 0xF000) == 0x8000 || (hw & 0xF000) == 0x9000)            /* halfword, SP-relative */
    return cost(2, LOAD_STORE);
  if ((hw & 0xFF00) == 0x4700) return cost(1, BRANCH);               /* BX, BLX (register) */
  if ((hw & 0xFC00) == 0x4400) {                                     /* ADD/MOV (high registers) to PC */
    unsigned op = (hw >> 8) & 3, rd = ((hw >> 4) & 8) | (hw & 7);
    return cost(1, op != 1 && rd == 15 ? BRANCH : OTHER);
  }
  if ((hw & 0xFE00) == 0xB400) return cost(1 + __builtin_popcount(hw & 0x1FF), OTHER);  /* PUSH */
  if ((hw & 0xFE00) == 0xBC00)                                                           /* POP */
    return cost(1 + __builtin_popcount(hw & 0x1FF), (hw & 0x100) ? BRANCH : OTHER);
  if ((hw & 0xF500) == 0xB100) return cost(1, BRANCH);               /* CBZ, CBNZ */
  if ((hw & 0xF000) == 0xC000) return cost(1 + __builtin_popcount(hw & 0xFF), OTHER);  /* LDM, STM */
  if ((hw & 0xF000) == 0xD000) return cost(1, ((hw >> 8) & 0xE) != 0xE ? BRANCH : OTHER);  /* B<c>; SVC */
  if ((hw & 0xF800) == 0xE000) return cost(1, BRANCH);               /* B */
  return cost(1, OTHER);
}

static Cost thumb32(uint16_t hw1, uint16_t hw2) {
  unsigned op1 = (hw1 >> 11) & 3;
  if (op1 == 1) {
    if ((hw1 & 0x0640) == 0x0000) {                                  /* LDM, STM (and PUSH/POP .W) */
      unsigned n = __builtin_popcount(hw2);
      return cost(1 + n, (hw1 & 0x10) && (hw2 & 0x8000) ? BRANCH : OTHER);
    }
    if ((hw1 & 0x0640) == 0x0040) {                                  /* dual, exclusive, table branch */
      if ((hw1 & 0xFFF0) == 0xE8D0 && (hw2 & 0xFFE0) == 0xF000) return cost(2, BRANCH);  /* TBB, TBH */
      return cost(3, OTHER);                                         /* LDRD, STRD (LDREX/STREX: rare) */
    }
    return cost(1, OTHER);                                           /* data processing; coprocessor */
  }
  if (op1 == 2) {
    if (!(hw2 & 0x8000)) return cost(1, OTHER);                      /* data processing (immediate) */
    if ((hw2 & 0x5000) == 0x0000)                                    /* B<c> (T3), or MSR/MRS/hints */
      return cost(1, ((hw1 >> 6) & 0xE) != 0xE ? BRANCH : OTHER);
    return cost(1, BRANCH);                                          /* B (T4), BL, BLX */
  }
  unsigned op2 = (hw1 >> 4) & 0x7F;
  if ((op2 & 0x71) == 0x00) return cost(2, LOAD_STORE);              /* store single */
  if ((op2 & 0x67) == 0x01 || (op2 & 0x67) == 0x03 || (op2 & 0x67) == 0x05) {  /* load single */
    if ((hw2 >> 12) == 15) return (op2 & 0x67) == 0x05 ? cost(2, BRANCH) : cost(1, OTHER);  /* LDR PC; PLD */
    return cost(2, LOAD_STORE);
  }
  if (op2 == 0x39 || op2 == 0x3B) return cost(divide, OTHER);        /* SDIV, UDIV */
  return cost(1, OTHER);  /* data processing (register), multiply and MAC, long multiply, coprocessor */
}

static void on_block(unsigned int vcpu, void *data) {
  const Block *block = data;
  if (previous && previous->ends_in_branch && block->start != previous->end) cycles += refill;  /* taken */
  if (block->is_start) { window_insns = insns; window_cycles = cycles; }
  if (block->is_stop) emit("cycles_window", insns - window_insns, cycles - window_cycles);
  if (block->is_mark) emit("cycles_mark", insns, cycles);
  insns += block->insns;
  cycles += block->cycles;
  previous = block;
}

static void on_read(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t address, void *data) {
  if (address < flash_start || address >= flash_end || qemu_plugin_mem_is_store(info)) return;
  uint64_t line = address / flash_line + 1;
  for (uint64_t i = 0; i < flash_lines; i++)
    if (buffered[i] == line) return;
  buffered[next_victim] = line;
  next_victim = (next_victim + 1) % flash_lines;
  cycles += flash_wait;
  flash_misses++;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  Block *block = calloc(1, sizeof *block);  /* lives as long as QEMU may run the block */
  size_t n = qemu_plugin_tb_n_insns(tb);
  enum Kind last = OTHER;
  block->start = qemu_plugin_tb_vaddr(tb);
  block->insns = n;
  for (size_t i = 0; i < n; i++) {
    struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
    const uint8_t *bytes = qemu_plugin_insn_data(insn);
    size_t size = qemu_plugin_insn_size(insn);
    uint16_t hw1 = bytes[0] | bytes[1] << 8;
    Cost c = size == 4 ? thumb32(hw1, bytes[2] | bytes[3] << 8) : thumb16(hw1);
    if (c.kind == LOAD_STORE && last == LOAD_STORE) c.cycles = 1;  /* pipelined behind its neighbour */
    block->cycles += c.cycles;
    last = c.kind;
    block->end = qemu_plugin_insn_vaddr(insn) + size;
    block->ends_in_branch = c.kind == BRANCH;
    /* QEMU 7.2 filters by the access kind unreliably (asked for reads, it reports stores): take both, keep reads */
    if (flash_wait) qemu_plugin_register_vcpu_mem_cb(insn, on_read, QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_MEM_RW, NULL);
  }
  block->is_start = block->start == start_addr;
  block->is_stop = block->start == stop_addr;
  block->is_mark = block->start == mark_addr;
  qemu_plugin_register_vcpu_tb_exec_cb(tb, on_block, QEMU_PLUGIN_CB_NO_REGS, block);
}

static void at_exit(qemu_plugin_id_t id, void *data) {
  emit("cycles_total", insns, cycles);
  emit("cycles_flash_misses", flash_misses, flash_misses * flash_wait);
  qemu_plugin_outs(out);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
  for (int i = 0; i < argc; i++) {
    char *value = strchr(argv[i], '=');
    if (!value) return -1;
    unsigned long long number = strtoull(value + 1, NULL, 0);
    if (!strncmp(argv[i], "refill=", 7)) refill = number;
    else if (!strncmp(argv[i], "divide=", 7)) divide = number;
    else if (!strncmp(argv[i], "flash_start=", 12)) flash_start = number;
    else if (!strncmp(argv[i], "flash_end=", 10)) flash_end = number;
    else if (!strncmp(argv[i], "flash_wait=", 11)) flash_wait = number;
    else if (!strncmp(argv[i], "flash_line=", 11)) flash_line = number;
    else if (!strncmp(argv[i], "flash_lines=", 12)) flash_lines = number;
    else if (!strncmp(argv[i], "start=", 6)) start_addr = number & ~1ull;
    else if (!strncmp(argv[i], "stop=", 5)) stop_addr = number & ~1ull;
    else if (!strncmp(argv[i], "mark=", 5)) mark_addr = number & ~1ull;
    else return -1;
  }
  if (!flash_line || !flash_lines || flash_lines > 64) return -1;
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_atexit_cb(id, at_exit, NULL);
  return 0;
}
