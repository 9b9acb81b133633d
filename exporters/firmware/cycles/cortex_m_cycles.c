/* QEMU TCG plugin: core cycles of a Cortex-M4 (in-order, single issue) or a Cortex-M7 (in-order, dual issue)
 * for the code QEMU runs.
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
 * Cortex-M7 (`core=m7`; built with Capstone, -DWITH_CAPSTONE, which decodes each instruction's registers):
 * the timings of LLVM's Cortex-M7 scheduling model (ARMScheduleM7.td, Apache-2.0; facts carried over, no
 * code): two instructions issue per cycle, in order, if their units allow (two load pipes, one store, two
 * ALUs, one EX1 shifter, one MAC, one branch, one DSP/SIMD unit) and their operands are ready. ALU results
 * are ready a cycle later; word loads feed an ALU a cycle later but an address two; byte and halfword loads,
 * multiplies and MACs, QADD/SSAT two cycles (a MAC's accumulator is read a cycle late, so chained MACs go
 * back to back); store data is read a cycle late, addresses and shifted operands a cycle early. DSP/SIMD
 * instructions, CLZ, BFI/BFC issue only first in a pair; LDM/STM/PUSH/POP (two registers a cycle), LDRD/STRD,
 * TBB/TBH (2 cycles), divides (`divide` cycles) and system instructions issue alone. Each block is
 * scheduled from an idle pipeline. Branches are predicted (a two-bit counter and the last target per branch):
 * a correctly predicted branch costs nothing more, a mispredicted one `refill` cycles (LLVM uses 4).
 *
 * Memory: RAM has no wait states. Reads of the flash region (flash_start..flash_end: the model's weights,
 * constants and literal pools) go through a buffer of `flash_lines` lines of `flash_line` bytes, as the
 * flash accelerators of STM32 (ART) and Renesas RA parts do: a read within a buffered line costs nothing
 * extra, any other read adds `flash_wait` cycles (the flash's wait states at the core clock) and replaces
 * the oldest line (of the line's set, with `flash_ways` lines per set: a cache). Instruction fetches are taken to hit the accelerator's instruction cache (TFLM's hot
 * loops are a few hundred bytes). flash_wait=0 (the default) leaves memory out and costs nothing.
 *
 * Arguments: refill=P (default 2), divide=C (default 7), flash_start=ADDR, flash_end=ADDR, flash_wait=W,
 * flash_line=BYTES (default 16), flash_lines=N (default 1, at most 1024), flash_ways=N (default: flash_lines),
 * core=m4|m7 (default m4), start=ADDR, stop=ADDR (report the cycles between
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
  uint8_t counter;          /* M7: the branch predictor's two-bit counter for the block's last branch */
  uint64_t predicted;       /* M7: the last target it took (0: none yet) */
} Block;

enum Kind { OTHER, LOAD_STORE, BRANCH };
typedef struct Cost { enum Kind kind; uint32_t cycles; } Cost;

static unsigned refill = 2, divide = 7, m7;
static uint64_t flash_start, flash_end, flash_wait, flash_line = 16, flash_lines = 1, flash_ways;
static uint64_t buffered[1024], next_victim[1024], flash_misses;  /* line numbers + 1 (0: empty); per set */
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
  Block *block = data;
  if (previous && previous->ends_in_branch) {
    int taken = block->start != previous->end;
    if (!m7) {
      if (taken) cycles += refill;
    } else {
      Block *branch = (Block *)previous;
      int guessed_taken = branch->counter >= 2;
      if (guessed_taken != taken || (taken && branch->predicted != block->start)) cycles += refill;
      if (taken && branch->counter < 3) branch->counter++;
      if (!taken && branch->counter > 0) branch->counter--;
      if (taken) branch->predicted = block->start;
    }
  }
  if (block->is_start) { window_insns = insns; window_cycles = cycles; }
  if (block->is_stop) emit("cycles_window", insns - window_insns, cycles - window_cycles);
  if (block->is_mark) emit("cycles_mark", insns, cycles);
  insns += block->insns;
  cycles += block->cycles;
  previous = block;
}

static void on_read(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t address, void *data) {
  if (address < flash_start || address >= flash_end || qemu_plugin_mem_is_store(info)) return;
  uint64_t line = address / flash_line + 1, sets = flash_lines / flash_ways, set = line % sets;
  uint64_t *ways = buffered + set * flash_ways;
  for (uint64_t i = 0; i < flash_ways; i++)
    if (ways[i] == line) return;
  ways[next_victim[set]] = line;
  next_victim[set] = (next_victim[set] + 1) % flash_ways;
  cycles += flash_wait;
  flash_misses++;
}


#ifdef WITH_CAPSTONE
#include <capstone/capstone.h>

enum Unit { LOAD_PIPE, STORE_PIPE, ALU, SHIFTER, MAC, BRANCH_UNIT, SIMD, VFP, UNITS };
static const uint8_t unit_width[UNITS] = {2, 1, 2, 1, 1, 1, 1, 1};
static csh capstone;

typedef struct M7Insn {
  uint8_t uses[UNITS];
  uint8_t alone, first;    /* issues alone; issues only first of a pair */
  uint8_t hold;            /* issue cycles it holds */
  uint8_t latency;         /* until its results feed an ALU operand */
  uint8_t branch;
  uint8_t n_reads, n_writes;
  int8_t reads[16][2];     /* (register 0..14, read advance: +1 read late, -1 read early) */
  int8_t writes[16][2];    /* (register, latency) */
} M7Insn;

static int gpr(int reg) {
  if (reg >= ARM_REG_R0 && reg <= ARM_REG_R12) return reg - ARM_REG_R0;
  if (reg == ARM_REG_SP) return 13;
  if (reg == ARM_REG_LR) return 14;
  return -1;  /* PC, flags, FP registers: not tracked */
}

/* Register `reg` in a (register, cycles) table, keeping the smaller figure when it is already there: a
 * register read in two roles is needed at the earlier one, written in two at the earlier one. */
static void note(int8_t table[16][2], uint8_t *count, int reg, int cycles) {
  int r = gpr(reg);
  if (r < 0) return;
  for (int i = 0; i < *count; i++)
    if (table[i][0] == r) {
      if (cycles < table[i][1]) table[i][1] = cycles;
      return;
    }
  if (*count < 16) { table[*count][0] = r; table[(*count)++][1] = cycles; }
}

static void read_as(M7Insn *m, int reg, int advance) { note(m->reads, &m->n_reads, reg, advance); }
static void write_as(M7Insn *m, int reg, int latency) { note(m->writes, &m->n_writes, reg, latency); }

static M7Insn m7_decode(const uint8_t *bytes, size_t size, uint64_t address) {
  M7Insn m;
  memset(&m, 0, sizeof m);
  m.hold = 1;
  m.latency = 1;
  static cs_insn *insn;  /* one, reused: translation is single-threaded with one vCPU */
  if (!insn) insn = cs_malloc(capstone);
  const uint8_t *code = bytes;
  uint64_t pc = address;
  if (!cs_disasm_iter(capstone, &code, &size, &pc, insn)) { m.uses[ALU] = 1; return m; }
  const cs_arm *arm = &insn->detail->arm;
  int registers = 0, is_store = 0, accumulator = -1;
  for (int i = 0; i < arm->op_count; i++) registers += arm->operands[i].type == ARM_OP_REG;
  switch (insn->id) {
    case ARM_INS_LDR: case ARM_INS_LDRT: case ARM_INS_LDREX: case ARM_INS_PLD: case ARM_INS_PLI: case ARM_INS_VLDR:
      m.uses[LOAD_PIPE] = 1; m.first = insn->id == ARM_INS_LDREX; break;
    case ARM_INS_LDRB: case ARM_INS_LDRH: case ARM_INS_LDRSB: case ARM_INS_LDRSH: case ARM_INS_LDRBT:
    case ARM_INS_LDRHT: case ARM_INS_LDRSBT: case ARM_INS_LDRSHT: case ARM_INS_LDREXB: case ARM_INS_LDREXH:
      m.uses[LOAD_PIPE] = 1; m.latency = 2; break;
    case ARM_INS_LDRD: m.uses[LOAD_PIPE] = 2; m.alone = 1; m.latency = 2; break;
    case ARM_INS_STR: case ARM_INS_STRB: case ARM_INS_STRH: case ARM_INS_STRT: case ARM_INS_STRBT:
    case ARM_INS_STRHT: case ARM_INS_VSTR:
      m.uses[STORE_PIPE] = 1; is_store = 1; break;
    case ARM_INS_STRD: case ARM_INS_STREX: case ARM_INS_STREXB: case ARM_INS_STREXH:
      m.uses[STORE_PIPE] = 1; m.alone = 1; is_store = 1; break;
    case ARM_INS_LDM: case ARM_INS_LDMDB: case ARM_INS_POP: case ARM_INS_VLDMIA: case ARM_INS_VLDMDB:
    case ARM_INS_VPOP:
      m.uses[LOAD_PIPE] = 2; m.alone = 1; m.hold = (registers - (insn->id != ARM_INS_POP) + 1) / 2; break;
    case ARM_INS_STM: case ARM_INS_STMDB: case ARM_INS_PUSH: case ARM_INS_VSTMIA: case ARM_INS_VSTMDB:
    case ARM_INS_VPUSH:
      m.uses[STORE_PIPE] = 1; m.alone = 1; is_store = 1; m.hold = (registers - (insn->id != ARM_INS_PUSH) + 1) / 2;
      break;
    case ARM_INS_B: case ARM_INS_BL: case ARM_INS_BX: case ARM_INS_BLX: case ARM_INS_CBZ: case ARM_INS_CBNZ:
      m.uses[BRANCH_UNIT] = 1; m.branch = 1; m.latency = 2; break;
    case ARM_INS_TBB: case ARM_INS_TBH:
      m.uses[LOAD_PIPE] = 1; m.uses[BRANCH_UNIT] = 1; m.branch = 1; m.alone = 1; m.hold = 2; break;
    case ARM_INS_MUL: case ARM_INS_SMULBB: case ARM_INS_SMULBT: case ARM_INS_SMULTB: case ARM_INS_SMULTT:
    case ARM_INS_SMULWB: case ARM_INS_SMULWT: case ARM_INS_SMUAD: case ARM_INS_SMUADX: case ARM_INS_SMUSD:
    case ARM_INS_SMUSDX: case ARM_INS_SMMUL: case ARM_INS_SMMULR: case ARM_INS_SMULL: case ARM_INS_UMULL:
      m.uses[MAC] = 1; m.latency = 2; break;
    case ARM_INS_MLA: case ARM_INS_MLS: case ARM_INS_SMLABB: case ARM_INS_SMLABT: case ARM_INS_SMLATB:
    case ARM_INS_SMLATT: case ARM_INS_SMLAWB: case ARM_INS_SMLAWT: case ARM_INS_SMLAD: case ARM_INS_SMLADX:
    case ARM_INS_SMLSD: case ARM_INS_SMLSDX: case ARM_INS_SMMLA: case ARM_INS_SMMLAR: case ARM_INS_SMMLS:
    case ARM_INS_SMMLSR:
      m.uses[MAC] = 1; m.latency = 2; accumulator = 3; break;
    case ARM_INS_SMLAL: case ARM_INS_UMLAL: case ARM_INS_UMAAL: case ARM_INS_SMLALBB: case ARM_INS_SMLALBT:
    case ARM_INS_SMLALTB: case ARM_INS_SMLALTT: case ARM_INS_SMLALD: case ARM_INS_SMLALDX: case ARM_INS_SMLSLD:
    case ARM_INS_SMLSLDX:
      m.uses[MAC] = 1; m.latency = 2; accumulator = 0; break;  /* RdLo and RdHi, operands 0 and 1 */
    case ARM_INS_SDIV: case ARM_INS_UDIV: m.uses[ALU] = 1; m.alone = 1; m.hold = divide; break;
    case ARM_INS_SSAT: case ARM_INS_USAT: case ARM_INS_SSAT16: case ARM_INS_USAT16: case ARM_INS_QADD:
    case ARM_INS_QSUB: case ARM_INS_QADD16: case ARM_INS_QADD8: case ARM_INS_QSUB16: case ARM_INS_QSUB8:
    case ARM_INS_QASX: case ARM_INS_QSAX: case ARM_INS_QDADD: case ARM_INS_QDSUB: case ARM_INS_UQADD16:
    case ARM_INS_UQADD8: case ARM_INS_UQSUB16: case ARM_INS_UQSUB8: case ARM_INS_UQASX: case ARM_INS_UQSAX:
    case ARM_INS_USAD8: case ARM_INS_USADA8:
      m.uses[SIMD] = 1; m.uses[ALU] = 1; m.first = 1; m.latency = 2; accumulator = insn->id == ARM_INS_USADA8 ? 3 : -1;
      break;
    case ARM_INS_SXTB: case ARM_INS_SXTH: case ARM_INS_UXTB: case ARM_INS_UXTH: case ARM_INS_SXTB16:
    case ARM_INS_UXTB16: case ARM_INS_SXTAB: case ARM_INS_SXTAH: case ARM_INS_SXTAB16: case ARM_INS_UXTAB:
    case ARM_INS_UXTAH: case ARM_INS_UXTAB16: case ARM_INS_SADD16: case ARM_INS_SADD8: case ARM_INS_SSUB16:
    case ARM_INS_SSUB8: case ARM_INS_SASX: case ARM_INS_SSAX: case ARM_INS_UADD16: case ARM_INS_UADD8:
    case ARM_INS_USUB16: case ARM_INS_USUB8: case ARM_INS_UASX: case ARM_INS_USAX: case ARM_INS_SHADD16:
    case ARM_INS_SHADD8: case ARM_INS_SHSUB16: case ARM_INS_SHSUB8: case ARM_INS_SHASX: case ARM_INS_SHSAX:
    case ARM_INS_UHADD16: case ARM_INS_UHADD8: case ARM_INS_UHSUB16: case ARM_INS_UHSUB8: case ARM_INS_UHASX:
    case ARM_INS_UHSAX: case ARM_INS_SEL: case ARM_INS_PKHBT: case ARM_INS_PKHTB: case ARM_INS_SBFX:
    case ARM_INS_UBFX: case ARM_INS_REV: case ARM_INS_REV16: case ARM_INS_REVSH: case ARM_INS_RBIT:
      m.uses[SIMD] = 1; m.uses[ALU] = 1; m.first = 1; break;
    case ARM_INS_CLZ: case ARM_INS_BFC: case ARM_INS_BFI: m.uses[ALU] = 1; m.first = 1; break;
    case ARM_INS_MRS: case ARM_INS_MSR: case ARM_INS_DMB: case ARM_INS_DSB: case ARM_INS_ISB: case ARM_INS_SVC:
    case ARM_INS_BKPT: case ARM_INS_CPS: case ARM_INS_UDF: case ARM_INS_WFI: case ARM_INS_WFE:
    case ARM_INS_CLREX: case ARM_INS_VMRS: case ARM_INS_VMSR:
      m.alone = 1; m.latency = 3; break;
    default:
      if (insn->mnemonic[0] == 'v') { m.uses[VFP] = 1; m.latency = 3; }
      else m.uses[ALU] = 1;
  }
  int register_index = 0;
  for (int i = 0; i < arm->op_count; i++) {  /* each operand's role decides when it is read */
    const cs_arm_op *op = &arm->operands[i];
    if (op->type == ARM_OP_MEM) {  /* addresses are needed at EX1; a written-back base is ready a cycle on */
      read_as(&m, op->mem.base, -1);
      read_as(&m, op->mem.index, -1);
      if (arm->writeback) write_as(&m, op->mem.base, 1);
    } else if (op->type == ARM_OP_REG && (op->access & CS_AC_READ)) {
      int advance = 0;
      if (op->shift.type != ARM_SFT_INVALID && op->shift.value) advance = -1;  /* shifted: EX1 */
      else if (is_store) advance = 1;                                          /* store data: EX3 */
      else if (accumulator >= 0 && (register_index == accumulator || (accumulator == 0 && register_index == 1)))
        advance = 1;                                                           /* MAC accumulator: EX3 */
      read_as(&m, op->reg, advance);
    }
    register_index += op->type == ARM_OP_REG;
  }
  uint8_t n_read, n_written;
  cs_regs read, written;
  if (cs_regs_access(capstone, insn, read, &n_read, written, &n_written) == CS_ERR_OK) {
    for (int i = 0; i < n_read; i++) {  /* implicit reads (SP of PUSH/POP, ...) at EX2 */
      int listed = 0, r = gpr(read[i]);
      for (int k = 0; k < m.n_reads; k++) listed |= m.reads[k][0] == r;
      if (!listed) read_as(&m, read[i], 0);
    }
    for (int i = 0; i < n_written; i++) {
      write_as(&m, written[i], m.latency);
      if (written[i] == ARM_REG_PC) { m.branch = 1; m.uses[BRANCH_UNIT] = 1; }
    }
  }
  if (insn->id == ARM_INS_PUSH || insn->id == ARM_INS_POP || insn->id == ARM_INS_VPUSH || insn->id == ARM_INS_VPOP) {
    read_as(&m, ARM_REG_SP, -1);
    write_as(&m, ARM_REG_SP, 1);
  }
  if (!m.hold) m.hold = 1;
  return m;
}

/* The block's cycles on an idle dual-issue pipeline: each instruction in order, in the first cycle its
 * operands are ready, paired with the one before when both may share a cycle. */
static uint32_t m7_schedule(const M7Insn *insns, size_t n) {
  int ready[16], cycle = 0, slots = 0, used[UNITS] = {0};
  for (int r = 0; r < 16; r++) ready[r] = -8;  /* written long before the block */
  for (size_t i = 0; i < n; i++) {
    const M7Insn *m = &insns[i];
    int earliest = cycle;
    for (int k = 0; k < m->n_reads; k++) {
      int at = ready[(int)m->reads[k][0]] - m->reads[k][1];
      if (at > earliest) earliest = at;
    }
    int fits = earliest == cycle && slots < 2 && !(slots && (m->alone || m->first));
    for (int u = 0; fits && u < UNITS; u++) fits = used[u] + m->uses[u] <= unit_width[u];
    if (!fits) {
      cycle = earliest > cycle ? earliest : cycle + 1;
      slots = 0;
      memset(used, 0, sizeof used);
    }
    slots++;
    for (int u = 0; u < UNITS; u++) used[u] += m->uses[u];
    int issued = cycle;
    if (m->alone || m->hold > 1) { cycle += m->hold - 1; slots = 2; }
    for (int k = 0; k < m->n_writes; k++) ready[(int)m->writes[k][0]] = issued + m->hold - 1 + m->writes[k][1];
  }
  return n ? cycle + 1 : 0;
}
#endif

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  Block *block = calloc(1, sizeof *block);  /* lives as long as QEMU may run the block */
  size_t n = qemu_plugin_tb_n_insns(tb);
  enum Kind last = OTHER;
  block->start = qemu_plugin_tb_vaddr(tb);
  block->insns = n;
  block->counter = 1;  /* weakly not taken */
#ifdef WITH_CAPSTONE
  M7Insn *scheduled = m7 ? calloc(n ? n : 1, sizeof *scheduled) : NULL;
#endif
  for (size_t i = 0; i < n; i++) {
    struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
    const uint8_t *bytes = qemu_plugin_insn_data(insn);
    size_t size = qemu_plugin_insn_size(insn);
    block->end = qemu_plugin_insn_vaddr(insn) + size;
    int reads_memory = 1;
#ifdef WITH_CAPSTONE
    if (m7) {
      scheduled[i] = m7_decode(bytes, size, qemu_plugin_insn_vaddr(insn));
      block->ends_in_branch = scheduled[i].branch;
      reads_memory = scheduled[i].uses[LOAD_PIPE] > 0;
    }
#endif
    if (!m7) {
      uint16_t hw1 = bytes[0] | bytes[1] << 8;
      Cost c = size == 4 ? thumb32(hw1, bytes[2] | bytes[3] << 8) : thumb16(hw1);
      if (c.kind == LOAD_STORE && last == LOAD_STORE) c.cycles = 1;  /* pipelined behind its neighbour */
      block->cycles += c.cycles;
      last = c.kind;
      block->ends_in_branch = c.kind == BRANCH;
    }
    /* QEMU 7.2 filters by the access kind unreliably (asked for reads, it reports stores): take both, keep reads */
    if (flash_wait && reads_memory)
      qemu_plugin_register_vcpu_mem_cb(insn, on_read, QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_MEM_RW, NULL);
  }
#ifdef WITH_CAPSTONE
  if (m7) {
    block->cycles = m7_schedule(scheduled, n);
    free(scheduled);
  }
#endif
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
    else if (!strncmp(argv[i], "flash_ways=", 11)) flash_ways = number;
    else if (!strcmp(argv[i], "core=m4")) m7 = 0;
    else if (!strcmp(argv[i], "core=m7")) m7 = 1;
    else if (!strncmp(argv[i], "start=", 6)) start_addr = number & ~1ull;
    else if (!strncmp(argv[i], "stop=", 5)) stop_addr = number & ~1ull;
    else if (!strncmp(argv[i], "mark=", 5)) mark_addr = number & ~1ull;
    else return -1;
  }
  if (!flash_ways) flash_ways = flash_lines;
  if (!flash_line || !flash_lines || flash_lines > 1024 || flash_lines % flash_ways) return -1;
  if (m7) {
#ifdef WITH_CAPSTONE
    if (cs_open(CS_ARCH_ARM, CS_MODE_THUMB | CS_MODE_MCLASS, &capstone) != CS_ERR_OK) return -1;
    cs_option(capstone, CS_OPT_DETAIL, CS_OPT_ON);
#else
    return -1;  /* built without Capstone */
#endif
  }
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_atexit_cb(id, at_exit, NULL);
  return 0;
}
