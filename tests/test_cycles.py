"""The cycle models (exporters/firmware/cycles/cortex_m_cycles.c, a QEMU TCG plugin) on hand-written loops of
known timing. Cortex-M4: per iteration, cycles are the TRM table's sums exactly, a taken branch costs
1 + refill and a branch that falls through 1, a read of flash outside the line buffer costs the wait states,
and a run repeats to the cycle. Cortex-M7: the schedule LLVM's Cortex-M7 model gives (pairs that share a
cycle, operand latencies, slot-0-only DSP instructions), predicted branches free, and a 4-way cache."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgekd import firmware

# A bare-metal image for QEMU's mps2-an386 (Cortex-M4): vector table, then `BODY` ITERATIONS times between
# calls to window_start and window_stop, whose blocks the plugin's window is bound to; semihosting exit.
PROGRAM = """
  .syntax unified
  .cpu cortex-m4
  .thumb
  .text
  .word 0x20010000
  .word reset
  .thumb_func
reset:
  ldr r1, =values
  ldr r5, =constants
  movs r0, #0
  ldr r4, =ITERATIONS
  bl window_start
loop:
BODY
  subs r4, #1
  bne loop
  bl window_stop
  movs r0, #0x18
  ldr r1, =0x20026
  bkpt 0xab
  .ltorg
  .thumb_func
  .global window_start
window_start:
  bx lr
  .thumb_func
  .global window_stop
window_stop:
  bx lr
  .balign 64
constants: .space 256  /* in flash, as a model's weights are */
  .data
values: .word 0x00010002, 0x00030004
"""


@pytest.fixture(scope="module")
def toolchain():
    try:
        found = firmware.find_toolchain()
    except firmware.DeviceSetupError as exc:
        if os.environ.get("EDGEKD_REQUIRE_DEVICE") == "1":
            pytest.fail(f"EDGEKD_REQUIRE_DEVICE=1 but {exc}")
        pytest.skip(str(exc))
    if shutil.which("cc") is None:
        pytest.skip("no host C compiler (cc) to build the QEMU plugin")
    return found


@pytest.fixture(scope="module")
def plugin(toolchain) -> Path:
    return firmware.cycle_plugin()


def window_cycles(
    toolchain, plugin: Path, folder: Path, body: str, iterations: int, refill: int = 2, memory: str = ""
) -> tuple[int, int]:
    """(instructions, cycles) between window_start and window_stop."""
    source = folder / f"loop{iterations}.S"
    elf = source.with_suffix(".elf")
    source.write_text(PROGRAM.replace("BODY", body).replace("ITERATIONS", str(iterations)))
    subprocess.run(
        [f"{toolchain.prefix}gcc", "-mcpu=cortex-m4", "-mthumb", "-nostdlib",
         "-Wl,-Ttext=0x0,-Tdata=0x20000000,-e,reset", "-o", elf, source],
        check=True,
    )  # fmt: skip
    symbols = subprocess.run([f"{toolchain.prefix}nm", elf], capture_output=True, text=True, check=True).stdout
    address = {line.split()[2]: int(line.split()[0], 16) for line in symbols.splitlines() if len(line.split()) == 3}
    run = subprocess.run(
        [toolchain.qemu, "-M", "mps2-an386", "-nographic", "-monitor", "none", "-serial", "null",
         "-semihosting-config", "enable=on,target=native", "-kernel", elf, "-d", "plugin", "-plugin",
         f"{plugin},refill={refill},start={address['window_start']:#x},stop={address['window_stop']:#x}{memory}"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    window = [line.split() for line in (run.stdout + run.stderr).splitlines() if line.startswith("cycles_window")]
    assert len(window) == 1, run.stdout + run.stderr
    return int(window[0][1]), int(window[0][2])


def per_iteration(toolchain, plugin, folder, body, refill=2, memory="") -> tuple[float, float]:
    """Instructions and cycles of one iteration: the difference between 200 and 100 iterations, over 100."""
    insns_100, cycles_100 = window_cycles(toolchain, plugin, folder, body, 100, refill, memory)
    insns_200, cycles_200 = window_cycles(toolchain, plugin, folder, body, 200, refill, memory)
    return (insns_200 - insns_100) / 100, (cycles_200 - cycles_100) / 100


MAC_BODY = """
  ldr r2, [r1]
  ldr r3, [r1, #4]
  smlad r0, r2, r3, r0
  smlad r0, r2, r3, r0
"""


@pytest.mark.parametrize("refill", [1, 2, 3])
def test_cmsis_nn_style_mac_loop_takes_the_trm_cycles(toolchain, plugin, tmp_path, refill):
    # LDR 2, a second LDR pipelined behind it 1, SMLAD 1 + 1, SUBS 1, BNE taken 1 + refill
    instructions, cycles = per_iteration(toolchain, plugin, tmp_path, MAC_BODY, refill)
    assert instructions == 6
    assert cycles == 2 + 1 + 1 + 1 + 1 + (1 + refill)


def test_a_branch_that_falls_through_costs_one_cycle(toolchain, plugin, tmp_path):
    # CMP 1, BEQ not taken 1 (the next block starts where the branch's ends), SUBS 1, BNE taken 1 + 2
    body = "  cmp r4, #0\n  beq loop\n  nop\n"  # r4 counts down from ITERATIONS to 1 here
    instructions, cycles = per_iteration(toolchain, plugin, tmp_path, body)
    assert instructions == 5
    assert cycles == 1 + 1 + 1 + 1 + (1 + 2)


def test_multiple_loads_and_stores_take_one_plus_n(toolchain, plugin, tmp_path):
    # PUSH {r2, r3} 3, POP {r2, r3} 3, SUBS 1, BNE 3
    instructions, cycles = per_iteration(toolchain, plugin, tmp_path, "  push {r2, r3}\n  pop {r2, r3}\n")
    assert instructions == 4
    assert cycles == 3 + 3 + 1 + 3


def test_the_count_repeats_exactly(toolchain, plugin, tmp_path):
    first = window_cycles(toolchain, plugin, tmp_path, MAC_BODY, 100)
    assert window_cycles(toolchain, plugin, tmp_path, MAC_BODY, 100) == first


FLASH = ",flash_start=0x0,flash_end=0x400000,flash_line=16,flash_lines=1"


@pytest.mark.parametrize("wait", [1, 3, 5])
def test_a_flash_read_outside_the_buffered_line_costs_the_wait_states(toolchain, plugin, tmp_path, wait):
    # two lines 64 bytes apart and a buffer of one line: both loads miss, every iteration
    body = "  ldr r2, [r5]\n  ldr r3, [r5, #64]\n"
    _, zero_wait = per_iteration(toolchain, plugin, tmp_path, body)
    _, waited = per_iteration(toolchain, plugin, tmp_path, body, memory=f"{FLASH},flash_wait={wait}")
    assert waited - zero_wait == 2 * wait


def test_reads_within_the_buffered_line_and_from_ram_cost_nothing_more(toolchain, plugin, tmp_path):
    same_line = "  ldr r2, [r5]\n  ldr r3, [r5, #4]\n"  # one line: after the first miss, hits
    ram = "  ldr r2, [r1]\n  ldr r3, [r1, #4]\n"  # .data, in RAM
    for body in (same_line, ram):
        _, zero_wait = per_iteration(toolchain, plugin, tmp_path, body)
        assert per_iteration(toolchain, plugin, tmp_path, body, memory=f"{FLASH},flash_wait=3")[1] == zero_wait


def test_the_plugin_is_built_once_and_reused(plugin):
    built = plugin.stat().st_mtime_ns
    assert firmware.cycle_plugin() == plugin and plugin.stat().st_mtime_ns == built


# ---------------------------------------------------------------- Cortex-M7 (dual issue)


@pytest.fixture(scope="module")
def m7_plugin(toolchain) -> Path:
    try:
        return firmware.cycle_plugin("m7")
    except firmware.PluginUnsupported as exc:
        if os.environ.get("EDGEKD_REQUIRE_DEVICE") == "1":
            pytest.fail(f"EDGEKD_REQUIRE_DEVICE=1 but {exc}")
        pytest.skip(str(exc))


# Per iteration, as LLVM's Cortex-M7 model schedules it (two issue slots; ALU results ready the next cycle,
# word loads the next cycle for an ALU operand and the one after for an address; MACs 2 cycles with the
# accumulator read a cycle late; DSP instructions only first in a pair), the loop's SUBS and predicted BNE
# included.
M7_LOOPS = {
    # LDR ‖ LDR (two load pipes) | SMLAD | SMLAD ‖ SUBS (accumulator forwarded) | BNE
    "mac": (MAC_BODY, 6, 4),
    # ADDS ‖ ADDS | SUBS ‖ BNE
    "independent ALU ops pair": ("  adds r2, r2, #1\n  adds r3, r3, #1\n", 4, 2),
    # ADDS | ADDS (needs the first's result) ‖ SUBS | BNE
    "a dependent ALU op waits": ("  adds r2, r2, #1\n  adds r2, r2, #1\n", 4, 3),
    # LDR | (stall) | LDR from the loaded address ‖ SUBS | BNE
    "a loaded address waits two cycles": ("  ldr r2, [r1]\n  ldr r3, [r2]\n", 4, 4),
    # SXTB16 | SXTB16 (slot 0 only) ‖ SUBS | BNE
    "DSP instructions issue first of a pair": ("  sxtb16 r2, r3\n  sxtb16 r6, r3, ror #8\n", 4, 3),
    # PUSH (alone) | POP (alone, after SP) | ... : two registers a cycle
    "multiples issue alone": ("  push {r2, r3}\n  pop {r2, r3}\n", 4, 4),
}


@pytest.mark.parametrize("name", M7_LOOPS)
def test_m7_loops_take_the_dual_issue_schedule(toolchain, m7_plugin, tmp_path, name):
    body, instructions, cycles = M7_LOOPS[name]
    assert per_iteration(toolchain, m7_plugin, tmp_path, body, refill=4, memory=",core=m7") == (instructions, cycles)


def test_m7_predicted_branches_cost_nothing_more(toolchain, m7_plugin, tmp_path):
    # the loop's BNE mispredicts only on its first and last executions, whatever the penalty
    few = per_iteration(toolchain, m7_plugin, tmp_path, MAC_BODY, refill=1, memory=",core=m7")
    many = per_iteration(toolchain, m7_plugin, tmp_path, MAC_BODY, refill=8, memory=",core=m7")
    assert few == many
    _, cycles_1 = window_cycles(toolchain, m7_plugin, tmp_path, MAC_BODY, 100, 1, ",core=m7")
    _, cycles_8 = window_cycles(toolchain, m7_plugin, tmp_path, MAC_BODY, 100, 8, ",core=m7")
    # four first-time or changed outcomes in the window: the return from window_start, the loop's first
    # back edge (a new branch is guessed not taken), its exit, and the call of window_stop
    assert cycles_8 - cycles_1 == 4 * 7


CACHE = f"{FLASH},flash_lines=8,flash_ways=4,flash_wait=7,core=m7"  # 2 sets of 4 lines of 16 bytes


def test_m7_cache_keeps_four_lines_of_a_set_and_misses_a_fifth(toolchain, m7_plugin, tmp_path):
    # 32 bytes apart, every line falls in the same set
    four = "".join(f"  ldr r2, [r5, #{32 * k}]\n" for k in range(4))
    five = "".join(f"  ldr r2, [r5, #{32 * k}]\n" for k in range(5))
    for body, misses in ((four, 0), (five, 5)):  # first in, first out: five lines thrash four ways
        _, zero_wait = per_iteration(toolchain, m7_plugin, tmp_path, body, refill=4, memory=",core=m7")
        _, waited = per_iteration(toolchain, m7_plugin, tmp_path, body, refill=4, memory=CACHE)
        assert waited - zero_wait == 7 * misses


def test_m7_plugin_is_a_separate_build(plugin, m7_plugin):
    assert m7_plugin != plugin and m7_plugin.parent != plugin.parent
