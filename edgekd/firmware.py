"""The device room: build an mcu-project firmware for a Cortex-M core with the Arm GNU toolchain and run
it in QEMU. Export (the mcu-project format checks a model's operators against the tree) and bench (the
device runtime) both use it, so it sits below both.

Plumbing only: find the toolchain and a TensorFlow Lite Micro source tree, build (the TFLM library
once per tree, core, flags and compiler, in a cache), run the firmware under `-icount shift=0`
(one guest instruction per nanosecond of virtual time) with the cycle-model plugin
(`exporters/firmware/cycles/cortex_m_cycles.c`, built once per source and compiler, in the cache), parse
what it prints, and split its flash image by component. `edgekd.benchmarks.device` turns these into the
report's figures.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from edgekd.cache import cache_dir
from edgekd.errors import CheckFailed, EdgeKDError
from edgekd.preprocess import FORMATS, RULES

TFLM_ENV = "EDGEKD_TFLM"
INPUT_FILE = "edgekd_inputs.bin"  # bench_main.cc reads it through semihosting
FRAME_FILE = "edgekd_frames.bin"  # and this one, when given, through SetImage()
BOARD_MEMORY = 4 * 1024 * 1024  # QEMU's MPS2 boards: 4 MiB for code and constants, 4 MiB of RAM
CODE_ALLOWANCE = 256 * 1024  # TFLM, kernels and C library beside the model (~150 KiB measured)
RAM_ALLOWANCE = 192 * 1024  # stack, heap, the profiler's event table (~80 KiB) and TFLM's state


class DeviceSetupError(EdgeKDError):
    """Something the device run needs is missing or unusable (toolchain, TFLM tree, board memory)."""


@dataclass(frozen=True)
class Target:
    name: str
    core: str  # the board's core, as device profiles name it
    machine: str  # QEMU board
    code_base: int = 0  # where the board's code memory (standing in for flash) starts


TARGETS = {
    "qemu-m4": Target("qemu-m4", "cortex-m4", "mps2-an386"),
    "qemu-m7": Target("qemu-m7", "cortex-m7", "mps2-an500"),
    # TrustZone: the firmware runs in the secure state, code from the secure alias of SSRAM1 (mps2-an505.ld)
    "qemu-m33": Target("qemu-m33", "cortex-m33", "mps2-an505", code_base=0x10000000),
}
TARGET_FOR_CORE = {target.core: name for name, target in TARGETS.items()}
TARGET_CHOICES = ("auto", "none", *TARGETS)  # auto: the device profile's core; none: no device run


def check_target(target: str) -> str:
    if target not in TARGET_CHOICES:
        raise DeviceSetupError(f"unknown target '{target}'; choose from {', '.join(TARGET_CHOICES)}")
    return target


# What to install when a program is missing (Debian/Ubuntu package names).
PACKAGES = {
    "arm-none-eabi-gcc": "gcc-arm-none-eabi",
    "arm-none-eabi-g++": "gcc-arm-none-eabi",
    "arm-none-eabi-size": "binutils-arm-none-eabi",
    "newlib (nano.specs, rdimon.specs)": "libnewlib-arm-none-eabi",
    "libstdc++ for newlib": "libstdc++-arm-none-eabi-newlib",
    "qemu-system-arm": "qemu-system-arm",
    "make": "make",
}
INSTALL_HINT = (
    "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib qemu-system-arm "
    "(or the Arm GNU toolchain from developer.arm.com and QEMU on macOS/Windows)"
)


# ---------------------------------------------------------------- the toolchain


@dataclass(frozen=True)
class Toolchain:
    prefix: str  # e.g. /usr/bin/arm-none-eabi-
    qemu: str
    make: str
    gcc_version: str
    qemu_version: str

    @property
    def description(self) -> str:
        return f"{self.gcc_version}; {self.qemu_version}"


def _first_line(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (result.stdout.strip().splitlines() or [""])[0]


def _library_present(gcc: str, name: str) -> bool:
    """gcc prints the bare name back when it cannot find a file in its search path."""
    found = _first_line(
        [gcc, "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", f"-print-file-name={name}"]
    )
    return found not in ("", name) and Path(found).is_file()


def toolchain_status() -> list[tuple[str, bool, str]]:
    """(component, present, detail) for each thing the device run needs: `edgekd doctor` shows it."""
    gcc = shutil.which("arm-none-eabi-gcc")
    rows = [
        ("arm-none-eabi-gcc", gcc is not None, _first_line([gcc, "--version"]) if gcc else ""),
        ("arm-none-eabi-g++", shutil.which("arm-none-eabi-g++") is not None, ""),
        ("arm-none-eabi-size", shutil.which("arm-none-eabi-size") is not None, ""),
    ]
    if gcc:
        rows.append(
            (
                "newlib (nano.specs, rdimon.specs)",
                _library_present(gcc, "nano.specs") and _library_present(gcc, "rdimon.specs"),
                "",
            )
        )
        rows.append(("libstdc++ for newlib", _library_present(gcc, "libstdc++_nano.a"), ""))
    else:
        rows += [("newlib (nano.specs, rdimon.specs)", False, ""), ("libstdc++ for newlib", False, "")]
    qemu = shutil.which("qemu-system-arm")
    rows.append(("qemu-system-arm", qemu is not None, _first_line([qemu, "--version"]) if qemu else ""))
    rows.append(("make", shutil.which("make") is not None, ""))
    return rows


def find_toolchain() -> Toolchain:
    """The Arm GNU toolchain, newlib and QEMU, or one line naming what to install."""
    missing = [name for name, present, _ in toolchain_status() if not present]
    if missing:
        packages = sorted({PACKAGES[name] for name in missing})
        raise DeviceSetupError(
            f"the device run needs {', '.join(missing)}: install {' '.join(packages)} ({INSTALL_HINT.split(' (')[0]})"
        )
    gcc = shutil.which("arm-none-eabi-gcc")
    qemu = shutil.which("qemu-system-arm")
    return Toolchain(
        prefix=gcc[: -len("gcc")],
        qemu=qemu,
        make=shutil.which("make"),
        gcc_version=_first_line([gcc, "--version"]),
        qemu_version=_first_line([qemu, "--version"]),
    )


# ---------------------------------------------------------------- the TFLM tree


def _is_tree(path: Path) -> bool:
    return (path / "tensorflow/lite/micro/micro_interpreter.h").is_file()


def resolve_tflm_tree(spec: str | Path | None = None) -> Path:
    """A TFLM source tree with CMSIS-NN: a folder, or a tarball of one (unpacked once into the cache).
    From `spec`, else $EDGEKD_TFLM."""
    spec = spec or os.environ.get(TFLM_ENV)
    if not spec:
        raise DeviceSetupError(
            f"no TensorFlow Lite Micro source tree: set {TFLM_ENV}=/path/to/tree (or a .tar.gz of one), or pass "
            "--tflm; the README's 'On the device' section says how to make one"
        )
    path = Path(spec).expanduser()
    if not path.exists():
        raise DeviceSetupError(f"TFLM tree {path} does not exist (from {TFLM_ENV} or --tflm)")
    if path.is_file():
        path = _unpacked(path)
    root = path if _is_tree(path) else next((p for p in path.iterdir() if p.is_dir() and _is_tree(p)), None)
    if root is None:
        raise DeviceSetupError(
            f"{path} is not a TensorFlow Lite Micro tree (no tensorflow/lite/micro/micro_interpreter.h); "
            "make one with TFLM's create_tflm_tree.py as the README says"
        )
    if not (root / "third_party/cmsis_nn/Include/arm_nnfunctions.h").is_file():
        raise DeviceSetupError(
            f"{root} has no CMSIS-NN (third_party/cmsis_nn): make the tree with OPTIMIZED_KERNEL_DIR=cmsis_nn"
        )
    return root.resolve()


def _unpacked(tarball: Path) -> Path:
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()[:16]
    target = cache_dir() / "tflm-trees" / digest
    if target.is_dir():
        return target
    try:
        with tarfile.open(tarball) as archive, tempfile.TemporaryDirectory(dir=_made(target.parent)) as scratch:
            archive.extractall(scratch, filter="data")  # no absolute paths, links out or devices
            os.replace(scratch, target)
            Path(scratch).mkdir()  # for TemporaryDirectory's cleanup
    except (tarfile.TarError, OSError) as exc:
        raise DeviceSetupError(f"{tarball}: cannot unpack the TFLM tree ({exc})") from None
    return target


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def tree_digest(tree: Path) -> str:
    """A hash of every file of the tree (its content, not its path or dates)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(tree)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def resolver_methods(tree: Path) -> dict[str, str]:
    """Operator → the MicroMutableOpResolver method that registers it, as the tree's header has them."""
    header = (tree / "tensorflow/lite/micro/micro_mutable_op_resolver.h").read_text()
    pairs = re.findall(r"TfLiteStatus (Add\w+)\([^{;]*\{\s*return AddBuiltin\(\s*BuiltinOperator_(\w+)", header)
    return {op: method for method, op in pairs}


# ---------------------------------------------------------------- building


def _make_environment() -> dict[str, str]:
    """Our environment without a parent make's settings (`make demo` runs edgekd, which runs make): its
    flags (-n, -p, -k, the jobserver) would change what the firmware build does and prints."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}


@dataclass
class Firmware:
    elf: Path
    map: Path
    target: Target
    compiled: list[str]  # sources make compiled in this build (empty when everything was up to date)
    library_built: bool
    seconds: float


def library_dir(project: Path, tree: Path, target: Target, toolchain: Toolchain) -> Path:
    """Where the TFLM library for (tree contents, core, flags and sources, compiler) is cached."""
    config = subprocess.run(
        [
            toolchain.make,
            "-s",
            "-C",
            str(project),
            "lib-config",
            f"TFLM_TREE={tree}",
            f"CPU={target.core}",
            f"CROSS={toolchain.prefix}",
        ],
        capture_output=True,
        text=True,
        env=_make_environment(),
    )
    if config.returncode != 0:
        raise CheckFailed(f"{project}/Makefile: {(config.stderr.strip().splitlines() or ['lib-config failed'])[-1]}")
    flags = config.stdout.replace(str(tree), "<tree>")
    key = hashlib.sha256("\0".join([tree_digest(tree), flags, toolchain.gcc_version]).encode()).hexdigest()[:16]
    return cache_dir() / "tflm-lib" / f"{target.core}-{key}"


def build_firmware(
    project: Path,
    target: Target,
    tree: Path,
    toolchain: Toolchain,
    *,
    jobs: int | None = None,
    log: Callable[[str], None] = print,
) -> Firmware:
    started = time.perf_counter()
    project = project.resolve()
    lib = library_dir(project, tree, target, toolchain)
    build = project / "build" / f"{target.core}-{lib.name.split('-')[-1][:8]}"
    if not (lib / "obj").is_dir():
        log(
            f"building the TFLite Micro library for {target.core} once (a CPU-minute or two) into {lib}; "
            "later builds reuse it"
        )
    command = [
        toolchain.make,
        "-C",
        str(project),
        f"-j{jobs or os.cpu_count() or 1}",
        f"TFLM_TREE={tree}",
        f"CPU={target.core}",
        f"BUILD={build}",
        f"LIB_DIR={lib}",
        f"CROSS={toolchain.prefix}",
    ]
    _made(lib.parent)
    with open(lib.parent / f"{lib.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build of a library at a time, across processes
        result = subprocess.run(command, capture_output=True, text=True, env=_make_environment())
        output = result.stdout + result.stderr
        if result.returncode != 0 and "undefined reference" in output:
            # The Makefile picks each operator's kernel files by name; a tree whose kernels need more files
            # than that rule finds still links against every kernel.
            log("  the model's kernels left a symbol undefined; building against every TFLM kernel instead")
            result = subprocess.run([*command, "KERNELS=all"], capture_output=True, text=True,
                                    env=_make_environment())  # fmt: skip
            output += result.stdout + result.stderr
    if result.returncode != 0:
        raise _build_error(output, project)
    compiled = [m.group(1) for m in re.finditer(r" -c (\S+) -o ", output)]
    return Firmware(
        elf=build / "firmware.elf",
        map=build / "firmware.map",
        target=target,
        compiled=compiled,
        library_built=any("/third_party/cmsis_nn/" in s or "/tensorflow/" in s for s in compiled),
        seconds=time.perf_counter() - started,
    )


def _build_error(output: str, project: Path) -> EdgeKDError:
    overflow = re.search(r"region `(\w+)' overflowed by (\d+) bytes", output)
    if overflow:
        region = "code memory (flash)" if overflow.group(1) == "FLASH" else "RAM"
        return DeviceSetupError(
            f"the firmware does not fit the QEMU board's {BOARD_MEMORY // 1024**2} MiB of {region}: "
            f"{int(overflow.group(2)):,} bytes over"
        )
    if "RAM overflow" in output:
        return DeviceSetupError(
            f"the firmware's RAM (tensor arena, profiler, stack) exceeds the QEMU board's {BOARD_MEMORY // 1024**2} MiB"
        )
    first_error = next((line for line in output.splitlines() if "error" in line.lower()), output.strip()[-300:])
    return CheckFailed(f"building the firmware in {project} failed: {first_error.strip()[:300]}")


def check_board_memory(model_bytes: int, arena_bytes: int, target: Target) -> None:
    """Refuse, before a long build, a model the emulated board cannot hold."""
    if model_bytes + CODE_ALLOWANCE > BOARD_MEMORY:
        raise DeviceSetupError(
            f"the model ({model_bytes / 1024:,.0f} KiB) and TFLM's code (~{CODE_ALLOWANCE // 1024} KiB) do not fit "
            f"{target.machine}'s {BOARD_MEMORY // 1024**2} MiB of code memory"
        )
    if arena_bytes + RAM_ALLOWANCE > BOARD_MEMORY:
        raise DeviceSetupError(
            f"the tensor arena ({arena_bytes / 1024:,.0f} KiB) and the runner's RAM (~{RAM_ALLOWANCE // 1024} KiB) "
            f"do not fit {target.machine}'s {BOARD_MEMORY // 1024**2} MiB of RAM"
        )


# ---------------------------------------------------------------- the cycle model


@dataclass(frozen=True)
class CycleModel:
    """What the QEMU plugin charges (see cortex_m_cycles.c): the core's timings (`core`: "m4" single issue,
    "m7" dual issue), its branch cost (M4: a taken branch's refill; M7: a mispredicted branch's) and divide,
    and the flash behind its line buffer or cache (`flash_ways` lines per set; 0: fully associative).
    `flash_wait` 0 leaves memory out."""

    refill: int = 2
    divide: int = 7
    flash_wait: int = 0
    flash_line: int = 16
    flash_lines: int = 1
    flash_ways: int = 0
    core: str = "m4"

    def arguments(self, code_base: int = 0) -> str:
        """The plugin's arguments; flash is the board's code memory, from `code_base`."""
        flash = f",flash_start={code_base:#x},flash_end={code_base + BOARD_MEMORY:#x}" if self.flash_wait else ""
        return (
            f"core={self.core},refill={self.refill},divide={self.divide},flash_wait={self.flash_wait},"
            f"flash_line={self.flash_line},flash_lines={self.flash_lines},flash_ways={self.flash_ways}{flash}"
        )


class PluginUnsupported(DeviceSetupError):
    """This QEMU cannot load TCG plugins (built without them) or the plugin cannot be built."""


def cycle_plugin(core: str = "m4") -> Path:
    """The cycle-model plugin as a shared library, compiled with the host's C compiler once per source,
    header, compiler and core into edgekd's cache. The M7's dual-issue model decodes instructions with
    Capstone (Debian's libcapstone-dev, installed by `make toolchain`)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise PluginUnsupported("no host C compiler (cc) to build the cycle-model QEMU plugin: install gcc")
    flags = ["-DWITH_CAPSTONE"] if core == "m7" else []
    libraries = ["-lcapstone"] if core == "m7" else []
    source_dir = resources.files("edgekd.exporters") / "firmware" / "cycles"
    with resources.as_file(source_dir) as folder:
        source = Path(folder) / "cortex_m_cycles.c"
        header = Path(folder) / "qemu_plugin_v1.h"
        compiler = _first_line([cc, "--version"]).encode()
        built_from = source.read_bytes() + header.read_bytes() + compiler + " ".join(flags).encode()
        digest = hashlib.sha256(built_from).hexdigest()[:16]
        library = cache_dir() / "qemu-plugins" / digest / "libcortex_m_cycles.so"
        if library.is_file():
            return library
        _made(library.parent)
        with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
            built = Path(scratch) / library.name
            result = subprocess.run([cc, "-O2", "-Wall", "-shared", "-fPIC", *flags, "-o", str(built), str(source),
                                     *libraries], capture_output=True, text=True)  # fmt: skip
            if result.returncode != 0 and "capstone" in result.stderr:
                raise PluginUnsupported("the Cortex-M7 cycle model needs Capstone: apt-get install libcapstone-dev")
            if result.returncode != 0:
                raise PluginUnsupported(f"building the cycle-model plugin failed: {result.stderr.strip()[-200:]}")
            os.replace(built, library)  # atomic: a concurrent build writes the same file
    return library


def symbol_address(elf: Path, name: str, toolchain: Toolchain) -> int:
    symbols = subprocess.run([f"{toolchain.prefix}nm", str(elf)], capture_output=True, text=True, check=True).stdout
    found = [int(line.split()[0], 16) for line in symbols.splitlines() if line.split()[-1:] == [name]]
    if len(found) != 1:
        raise CheckFailed(f"{elf.name} has {len(found)} symbols named {name}; the cycle windows need exactly one")
    return found[0]


# ---------------------------------------------------------------- running


@dataclass
class FirmwareRun:
    ticks_per_second: int
    arena_used: int
    arena_size: int
    warmup_ticks: int
    ticks: list[int]  # one per input, in order
    outputs: np.ndarray  # int8, one row per input
    profile_ticks: int  # the profiled inference, timed around Invoke()
    op_ticks: list[tuple[int, str, int]] = field(default_factory=list)  # (index, operator, ticks)
    seconds: float = 0.0
    cycles: Cycles | None = None  # when the cycle model ran
    cycles_unavailable: str = ""  # why it did not, when it was asked for
    frames: list[FrameResult] = field(default_factory=list)  # the frames given, through SetImage()

    @property
    def instructions_per_tick(self) -> float:
        """Under -icount shift=0 the guest executes one instruction per nanosecond of virtual time."""
        return 1e9 / self.ticks_per_second


@dataclass(frozen=True)
class FrameResult:
    """One camera frame through the firmware's SetImage() and Predict()."""

    class_index: int
    probability: float
    input_digest: int  # fnv1a() of the int8 input SetImage() wrote


def fnv1a(data: bytes) -> int:
    """FNV-1a, 32 bits: what bench_main.cc prints of the input SetImage() wrote."""
    digest = 2166136261
    for byte in data:
        digest = ((digest ^ byte) * 16777619) & 0xFFFFFFFF
    return digest


def frame_record(pixels: bytes, width: int, height: int, pixel_format: str, rule: str) -> bytes:
    """One record of the frames file bench_main.cc reads: u16 width, u16 height, u8 format, u8 rule, pixels."""
    header = width.to_bytes(2, "little") + height.to_bytes(2, "little")
    return header + bytes([FORMATS.index(pixel_format), RULES.index(rule)]) + bytes(pixels)


@dataclass
class Cycles:
    """Instructions (exact) and modelled cycles in the windows the firmware times with `platform_ticks()`."""

    model: CycleModel
    warmup: tuple[int, int]  # (instructions, cycles)
    inferences: list[tuple[int, int]]
    profile: tuple[int, int]
    ops: list[tuple[int, int]]  # the profiled inference, operator by operator
    flash_misses: int


def run_firmware(
    firmware: Firmware,
    inputs: np.ndarray,
    toolchain: Toolchain,
    *,
    cycles: CycleModel | None = None,
    timeout: float = 900.0,
    frames: bytes = b"",
) -> FirmwareRun:
    """Boot the firmware once and feed it every input (int8, one image per row); with `cycles`, under the
    cycle-model plugin, stamped at every call of `platform_ticks()`. `frames`: `frame_record`s, which the
    firmware then puts through SetImage() and Predict()."""
    plugin = []
    if cycles is not None:
        mark = symbol_address(firmware.elf, "platform_ticks", toolchain)
        arguments = f"{cycles.arguments(firmware.target.code_base)},mark={mark:#x}"
        plugin = ["-d", "plugin", "-plugin", f"{cycle_plugin(cycles.core)},{arguments}"]
    with tempfile.TemporaryDirectory() as scratch:
        np.ascontiguousarray(inputs, dtype=np.int8).tofile(Path(scratch) / INPUT_FILE)
        if frames:
            (Path(scratch) / FRAME_FILE).write_bytes(frames)
        command = [
            toolchain.qemu,
            "-M",
            firmware.target.machine,
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            "null",
            "-icount",
            "shift=0",
            "-semihosting-config",
            "enable=on,target=native",
            "-kernel",
            str(firmware.elf),
            *plugin,
        ]
        started = time.perf_counter()
        try:
            result = subprocess.run(command, cwd=scratch, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"the firmware did not finish in QEMU within {timeout:.0f} s") from None
        seconds = time.perf_counter() - started
    if plugin and result.returncode != 0 and "plugin" in result.stderr.lower() and "EDGEKD" not in result.stdout:
        raise PluginUnsupported(f"{toolchain.qemu} cannot load the cycle-model plugin: {result.stderr.strip()[-160:]}")
    run = parse_output(result.stdout, expected=len(inputs))
    if result.returncode != 0:
        raise CheckFailed(f"the firmware exited with code {result.returncode} in QEMU: {result.stdout.strip()[-200:]}")
    run.seconds = seconds
    if cycles is not None:
        run.cycles = parse_cycles(result.stderr, run, cycles)
    return run


def parse_cycles(log: str, run: FirmwareRun, model: CycleModel) -> Cycles:
    """Pair the plugin's stamps with the firmware's timer reads: warm-up (2), each inference (2), the profiled
    inference (start, each operator's begin and end, end). The instructions between two stamps must match
    the ticks the firmware printed (one instruction per nanosecond), which proves the pairing."""
    marks = [tuple(map(int, line.split()[1:3])) for line in log.splitlines() if line.startswith("cycles_mark ")]
    misses = [int(line.split()[1]) for line in log.splitlines() if line.startswith("cycles_flash_misses ")]
    expected = 2 + 2 * len(run.ticks) + 2 + 2 * len(run.op_ticks)
    if len(marks) != expected:
        raise CheckFailed(f"the cycle model stamped {len(marks)} timer reads, the firmware made {expected}")

    def window(first: int, last: int) -> tuple[int, int]:
        return marks[last][0] - marks[first][0], marks[last][1] - marks[first][1]

    inferences = [window(2 + 2 * i, 3 + 2 * i) for i in range(len(run.ticks))]
    profile_start = 2 + 2 * len(run.ticks)
    ops = [window(profile_start + 1 + 2 * k, profile_start + 2 + 2 * k) for k in range(len(run.op_ticks))]
    windows = [(window(0, 1), run.warmup_ticks), *zip(inferences, run.ticks, strict=True),
               (window(profile_start, len(marks) - 1), run.profile_ticks)]  # fmt: skip
    for (instructions, _), ticks in windows:
        if abs(instructions / run.instructions_per_tick - ticks) > max(4, 1e-4 * ticks):  # icount's timer jitters
            raise CheckFailed(
                f"the cycle model's window ({instructions:,} instructions) does not match the firmware's timer "
                f"({ticks:,} ticks): the stamps are not the firmware's timer reads"
            )
    return Cycles(
        model=model,
        warmup=window(0, 1),
        inferences=inferences,
        profile=window(profile_start, len(marks) - 1),
        ops=ops,
        flash_misses=misses[0] if misses else 0,
    )


def parse_output(text: str, expected: int) -> FirmwareRun:
    values: dict[str, list[str]] = {}
    results: list[tuple[int, int, list[int]]] = []
    frames: list[FrameResult] = []
    op_ticks: list[tuple[int, str, int]] = []
    said: list[str] = []  # what TFLM printed (MicroPrintf), which names the cause of a failure
    for line in text.splitlines():
        line = line.strip()
        csv = re.fullmatch(r"(\d+),(\w+),(-?\d+)", line)  # TFLM MicroProfiler::LogCsv(): event,tag,ticks
        if csv:
            op_ticks.append((int(csv.group(1)), csv.group(2), int(csv.group(3))))
            continue
        if not line.startswith("EDGEKD "):
            said += [line] if line else []
            continue
        kind, *rest = line.split()[1:]
        if kind == "error":
            cause = f"; TFLite Micro said: {' / '.join(said[-3:])}" if said else ""
            raise CheckFailed(f"the firmware failed in QEMU: {' '.join(rest)}{cause}")
        if kind == "result":
            results.append((int(rest[0]), int(rest[1]), [int(v) for v in rest[2:]]))
        elif kind == "frame":
            frames.append(FrameResult(int(rest[1]), int(rest[2]) / 1e6, int(rest[3])))
        else:
            values[kind] = rest
    if "done" not in values:
        raise CheckFailed(f"the firmware stopped early in QEMU; its last output: {text.strip()[-200:]!r}")
    if len(results) != expected:
        raise CheckFailed(f"the firmware ran {len(results)} of {expected} inputs")
    memory = dict(zip(values["arena_used"][1::2], values["arena_used"][2::2], strict=True))
    return FirmwareRun(
        ticks_per_second=int(values["platform"][2]),
        arena_used=int(values["arena_used"][0]),
        arena_size=int(memory["arena_size"]),
        warmup_ticks=int(values["warmup"][0]),
        ticks=[ticks for _, ticks, _ in results],
        outputs=np.array([row for _, _, row in results], dtype=np.int8),
        profile_ticks=int(values["profile"][0]),
        op_ticks=op_ticks,
        frames=frames,
    )


# ---------------------------------------------------------------- what the firmware holds

FLASH_SECTIONS = (".isr_vector", ".text", ".ARM.extab", ".ARM.exidx", ".preinit_array", ".init_array", ".fini_array")
RAM_SECTIONS = (".data", ".bss")


def section_sizes(elf: Path, toolchain: Toolchain) -> dict[str, int]:
    """`arm-none-eabi-size -A`: every allocated section and its size."""
    output = subprocess.run(
        [f"{toolchain.prefix}size", "-A", str(elf)], capture_output=True, text=True, check=True
    ).stdout
    sizes = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes


def flash_bytes(sizes: dict[str, int]) -> int:
    """What a real board keeps in flash: code, constants (the model) and the initial values of .data."""
    return sum(sizes.get(name, 0) for name in FLASH_SECTIONS) + sizes.get(".data", 0)


_INPUT_SECTION = re.compile(r"^ (?:\S+)?\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s+(\S.*)$")


def flash_by_component(map_file: Path) -> dict[str, int]:
    """Bytes of flash per component, from the linker map: the model, TFLite Micro, CMSIS-NN, the C/C++
    runtime (newlib, libstdc++, libgcc) and edgekd's runner."""
    parts: dict[str, int] = {}
    section = None
    in_map = False
    for line in map_file.read_text(errors="replace").splitlines():
        if line.startswith("Linker script and memory map"):
            in_map = True
            continue
        if not in_map:
            continue
        top = re.match(r"^(\.\S+|/DISCARD/)(\s|$)", line)
        if top:
            section = top.group(1)
            continue
        if section not in (*FLASH_SECTIONS, ".data"):
            continue
        match = _INPUT_SECTION.match(line)
        if not match or line.startswith(" *"):
            continue
        size, source = int(match.group(1), 16), match.group(2).strip()
        if size:
            parts[_component(source)] = parts.get(_component(source), 0) + size
    return parts


def _component(source: str) -> str:
    member = re.search(r"libtflm\.a\((.+)\)", source)
    if member:
        return "CMSIS-NN" if member.group(1).startswith("arm_") else "TensorFlow Lite Micro"
    if "model_data.o" in source:
        return "model"
    if "*fill*" in source or source.startswith("*fill"):
        return "alignment"
    if re.search(r"lib(c|g|m|gcc|stdc\+\+|supc\+\+|rdimon|nosys)[\w+]*\.a|crt\w*\.o", source):
        return "C/C++ runtime"
    return "runner"
