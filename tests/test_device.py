"""The device run: the mcu-project firmware built for Cortex-M and run in QEMU, against the host TFLM."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd import cli, firmware
from edgekd.benchmarks import device
from edgekd.benchmarks.profiles import load_device
from edgekd.exporters import mcu_project, tflite
from edgekd.exporters.export import ExportSample
from edgekd.exporters.mcu_project import check_operators
from edgekd.exporters.runtimes import MicroRunner


class SmallNet(torch.nn.Module):
    """Conv, depthwise conv, residual ADD, pooling and a classifier: the ops a MobileNetV2 uses, in seconds."""

    def __init__(self):
        super().__init__()
        from timm.layers import create_conv2d

        self.stem = create_conv2d(1, 8, 3, stride=2, padding="same")
        self.depthwise = create_conv2d(8, 8, 3, stride=1, padding="same", groups=8)
        self.pointwise = torch.nn.Conv2d(8, 8, 1)
        self.classifier = torch.nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.pointwise(torch.relu(self.depthwise(x)))
        return self.classifier(x.mean((2, 3)))


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("device") / "small.int8.tflite"
    tflite.convert(SmallNet().eval(), torch.randn(32, 1, 16, 16), path, int8=True)
    return path


@pytest.fixture(scope="module")
def built(small_model, device_setup, tmp_path_factory):
    toolchain, tree = device_setup
    micro = MicroRunner(small_model)
    project = device.project_for(small_model, micro, micro.arena["total"], tmp_path_factory.mktemp("project"))
    return project, firmware.build_firmware(project, firmware.TARGETS["qemu-m4"], tree, toolchain, log=lambda _: None)


# ---------------------------------------------------------------- without a toolchain


def test_resolver_method_names():
    assert mcu_project.resolver_method("CONV_2D") == "AddConv2D"
    assert mcu_project.resolver_method("DEPTHWISE_CONV_2D") == "AddDepthwiseConv2D"
    assert mcu_project.resolver_method("FULLY_CONNECTED") == "AddFullyConnected"
    assert mcu_project.resolver_method("L2_NORMALIZATION") == "AddL2Normalization"
    assert mcu_project.resolver_method("PADV2") == "AddPadV2"


def test_parse_output_reads_results_and_the_profile():
    text = "\n".join(
        [
            "EDGEKD platform qemu-mps2 ticks_per_second 25000000",
            "EDGEKD arena_used 1000 arena_size 2048 input_bytes 4 output_bytes 2",
            "EDGEKD warmup 12",
            "EDGEKD result 0 10 1 -2",
            "EDGEKD result 1 11 -128 127",
            "EDGEKD profile 11",
            '"Event","Tag","Ticks"',
            "0,CONV_2D,7",
            "1,FULLY_CONNECTED,3",
            "EDGEKD done 2",
        ]
    )
    run = firmware.parse_output(text, expected=2)
    assert run.ticks == [10, 11] and run.arena_used == 1000 and run.arena_size == 2048
    assert run.outputs.tolist() == [[1, -2], [-128, 127]] and run.outputs.dtype == np.int8
    assert run.op_ticks == [(0, "CONV_2D", 7), (1, "FULLY_CONNECTED", 3)]
    assert run.instructions_per_tick == 40


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("EDGEKD error setup: AllocateTensors failed\n", "AllocateTensors failed"),
        (  # TFLM's own words name the cause: quoted, not guessed
            "EDGEKD platform qemu-mps2 ticks_per_second 25000000\nDidn't find op for builtin opcode 'ADD'\n"
            "Failed to get registration from op code ADD\nEDGEKD error setup: AllocateTensors failed\n",
            r"AllocateTensors failed; TFLite Micro said: Didn't find op for builtin opcode 'ADD' / Failed to get",
        ),
        ("EDGEKD platform qemu-mps2 ticks_per_second 25000000\n", "stopped early"),
    ],
)
def test_parse_output_reports_failures(text, message):
    with pytest.raises(firmware.CheckFailed, match=message):
        firmware.parse_output(text, expected=1)


def test_flash_by_component_reads_the_linker_map(tmp_path):
    map_file = tmp_path / "firmware.map"
    map_file.write_text(
        "Archive member included\n\nLinker script and memory map\n\n"
        ".text           0x00000040    0x1000\n"
        " *(.text*)\n"
        " .text          0x00000040       0x10 build/mps2/startup.o\n"
        " .text._ZN6tflite16MicroInterpreter6InvokeEv\n"
        "                0x00000050      0x100 /cache/libtflm.a(micro_interpreter.cc.o)\n"
        " .text.arm_convolve_s8\n"
        "                0x00000150       0x80 /cache/libtflm.a(arm_convolve_s8.c.o)\n"
        " .rodata.g_model_data\n"
        "                0x000001d0      0x200 build/model_data.o\n"
        " .text.memcpy   0x000003d0       0x20 /usr/lib/arm-none-eabi/lib/thumb/v7e-m+fp/hard/libc_nano.a(memcpy.o)\n"
        " *fill*         0x000003f0        0x4 \n"
        ".bss            0x20000000    0x9000\n"
        " .bss.g_arena   0x20000000    0x8000 build/edgekd_model.o\n"
    )
    assert firmware.flash_by_component(map_file) == {
        "runner": 0x10,
        "TensorFlow Lite Micro": 0x100,
        "CMSIS-NN": 0x80,
        "model": 0x200,
        "C/C++ runtime": 0x20,
    }


def test_board_memory_is_checked_before_building():
    target = firmware.TARGETS["qemu-m4"]
    with pytest.raises(firmware.DeviceSetupError, match=r"model \(4,096 KiB\).*4 MiB of code memory"):
        firmware.check_board_memory(4 * 1024 * 1024, 100_000, target)
    with pytest.raises(firmware.DeviceSetupError, match=r"tensor arena \(4,000 KiB\).*4 MiB of RAM"):
        firmware.check_board_memory(100_000, 4_000 * 1024, target)
    firmware.check_board_memory(500_000, 400_000, target)


def test_latency_on_the_profile_clock():
    m4 = load_device("cortex-m4")
    latency = device.latency_on_clock(64e6, m4)  # 64 M instructions on a 64 MHz core
    low, high = m4.instruction_cost.cpi
    assert latency.low_ms == pytest.approx(1000 * low) and latency.high_ms == pytest.approx(1000 * high)
    assert "64.00 M instructions" in latency.basis and m4.instruction_cost.source in latency.basis
    assert device.latency_on_clock(1e6, load_device("256k-1m")) is None  # no clock, no latency


def test_latency_from_cycles_carries_the_validated_band():
    m4 = load_device("cortex-m4")
    latency = device.latency_from_cycles(64e6, m4)  # 64 M cycles at 64 MHz
    assert latency.ms == pytest.approx(1000)
    assert latency.low_ms == pytest.approx(1000 * (1 - m4.cycle_model.error))
    assert latency.high_ms == pytest.approx(1000 * (1 + m4.cycle_model.error))
    assert "64.000 M cycles" in latency.basis and "cycles_validation.py" in latency.basis


def test_parse_cycles_pairs_the_stamps_with_the_timer_reads():
    text = "\n".join([
        "EDGEKD platform qemu-mps2 ticks_per_second 25000000",
        "EDGEKD arena_used 1 arena_size 2 input_bytes 1 output_bytes 1",
        "EDGEKD warmup 100", "EDGEKD result 0 100 1", "EDGEKD profile 101", "0,CONV_2D,100", "EDGEKD done 1",
    ])  # fmt: skip
    run = firmware.parse_output(text, expected=1)
    # warm-up, the inference, the profiled inference around its one operator (4000 instructions = 100 ticks)
    stamps = [(0, 0), (4000, 5000), (5000, 6000), (9000, 12000), (10000, 13000), (10010, 13010), (14010, 19010),
              (14050, 19050)]  # fmt: skip
    log = "".join(f"cycles_mark {i} {c}\n" for i, c in stamps) + "cycles_flash_misses 7 21\n"
    cycles = firmware.parse_cycles(log, run, firmware.CycleModel())
    assert cycles.warmup == (4000, 5000) and cycles.inferences == [(4000, 6000)]
    assert cycles.profile == (4050, 6050) and cycles.ops == [(4000, 6000)] and cycles.flash_misses == 7
    with pytest.raises(firmware.CheckFailed, match="stamped 7 timer reads, the firmware made 8"):
        firmware.parse_cycles(log.replace("cycles_mark 0 0\n", ""), run, firmware.CycleModel())
    shifted = log.replace("cycles_mark 9000 12000", "cycles_mark 8000 12000")
    with pytest.raises(firmware.CheckFailed, match="does not match the firmware's timer"):
        firmware.parse_cycles(shifted, run, firmware.CycleModel())


def run_cli(capsys, *args, env=None):
    with pytest.MonkeyPatch.context() as patch:
        for key, value in (env or {}).items():
            patch.setenv(key, value)
        patch.setattr(sys, "argv", ["edgekd", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
    return exit_info.value.code, capsys.readouterr()


def test_no_toolchain_names_the_packages(capsys, tmp_path):
    (tmp_path / "model.tflite").write_bytes(b"irrelevant: the target is checked first")
    code, captured = run_cli(
        capsys, "bench", tmp_path / "model.tflite", "--target", "qemu-m4", env={"PATH": "/nowhere"}
    )
    assert code == 2, captured.err
    assert "gcc-arm-none-eabi" in captured.err and "qemu-system-arm" in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err


def test_target_must_match_the_device_core(capsys, tmp_path, device_setup):
    (tmp_path / "model.tflite").write_bytes(b"x")
    code, captured = run_cli(capsys, "bench", tmp_path / "model.tflite", "--target", "qemu-m7", "--device", "cortex-m4")
    assert code == 2 and "emulates a cortex-m7 but device cortex-m4 is a cortex-m4" in captured.err


def test_unknown_tree_is_one_line(capsys, tmp_path):
    (tmp_path / "model.tflite").write_bytes(b"x")
    code, captured = run_cli(
        capsys, "bench", tmp_path / "model.tflite", "--target", "qemu-m4", "--tflm", tmp_path / "no-such-tree"
    )
    if "needs" in captured.err:  # no toolchain on this machine: that is reported first
        pytest.skip("no toolchain")
    assert code == 2 and "does not exist" in captured.err and len(captured.err.strip().splitlines()) == 1


# ---------------------------------------------------------------- with the toolchain and a TFLM tree


@pytest.mark.slow
def test_resolver_rule_matches_the_tree(device_setup):
    _, tree = device_setup
    methods = firmware.resolver_methods(tree)
    assert len(methods) > 80
    assert {op: mcu_project.resolver_method(op) for op in methods} == methods


@pytest.mark.slow
def test_operator_tflm_lacks_is_named(device_setup, small_model, monkeypatch):
    _, tree = device_setup
    known = firmware.resolver_methods(tree)
    monkeypatch.setattr(firmware, "resolver_methods", lambda _: {k: v for k, v in known.items() if k != "CONV_2D"})
    with pytest.raises(firmware.DeviceSetupError, match="no kernel for operator CONV_2D"):
        check_operators(small_model, tree)


@pytest.mark.slow
def test_firmware_matches_the_host_bit_for_bit_and_counts_repeat(built, small_model, device_setup):
    project, fw = built
    toolchain, _ = device_setup
    micro = MicroRunner(small_model)
    rng = np.random.default_rng(1)
    inputs = rng.integers(-128, 128, size=(6, *micro.input_shape), dtype=np.int8)
    host = np.stack([micro.invoke(x).reshape(-1) for x in inputs])
    first = firmware.run_firmware(fw, inputs.reshape(6, -1), toolchain)
    second = firmware.run_firmware(fw, inputs.reshape(6, -1), toolchain)
    assert np.array_equal(first.outputs, host), "firmware outputs differ from the host TFLite-Micro"
    assert first.ticks == second.ticks and first.profile_ticks == second.profile_ticks  # deterministic
    layers = sum(ticks for _, _, ticks in first.op_ticks)
    assert abs(layers - first.profile_ticks) <= 0.01 * first.profile_ticks  # the layers sum to the whole
    assert [tag for _, tag, _ in first.op_ticks] == tflite.read_graph(small_model)[2]
    assert 0 < first.arena_used <= micro.arena["total"]  # 32-bit pointers: no more than x86-64 needs


@pytest.mark.slow
def test_second_build_compiles_only_the_model(built, small_model, device_setup):
    project, _ = built
    toolchain, tree = device_setup
    (project / "model_data.cc").write_text((project / "model_data.cc").read_text())  # re-exported: newer
    rebuilt = firmware.build_firmware(project, firmware.TARGETS["qemu-m4"], tree, toolchain, log=lambda _: None)
    assert [source.rsplit("/", 1)[-1] for source in rebuilt.compiled] == ["model_data.cc"]
    assert not rebuilt.library_built


@pytest.mark.slow
def test_the_library_compiles_only_the_models_kernels(built, device_setup):
    """The model's operators (model_ops.mk) pick TFLM's kernel files; the core and CMSIS-NN stay whole.
    benchmarks/suite/tflm_kernels.py shows the firmware image is the same byte for byte as with every kernel."""
    project, _ = built
    _, tree = device_setup

    def sources(*options: str) -> set[str]:
        result = subprocess.run(["make", "-s", "-C", str(project), "lib-sources", f"TFLM_TREE={tree}", *options],
                                capture_output=True, text=True, check=True)  # fmt: skip
        return set(result.stdout.split())

    chosen, every = sources(), sources("KERNELS=all")
    kernels = "tensorflow/lite/micro/kernels/"
    assert chosen < every and {s for s in every if not s.startswith(kernels)} <= chosen
    picked = {s.removeprefix(kernels) for s in chosen if s.startswith(kernels)}
    wanted = {"cmsis_nn/conv.cc", "cmsis_nn/depthwise_conv.cc", "cmsis_nn/add.cc", "reduce.cc", "conv_common.cc",
              "cmsis_nn/fully_connected.cc", "reduce_common.cc", "kernel_util.cc"}  # fmt: skip
    assert wanted <= picked, wanted - picked
    assert not picked & {"cmsis_nn/softmax.cc", "cmsis_nn/svdf.cc", "softmax_common.cc", "strided_slice.cc"}


def test_a_kernel_the_rule_misses_falls_back_to_every_kernel(tmp_path, monkeypatch):
    """A tree whose kernels need a file the per-operator rule does not pick fails to link; the build
    then runs again against every kernel, and says so."""
    calls, said = [], []

    def fake_make(command, **_):
        calls.append(command)
        if "lib-config" in command:
            return subprocess.CompletedProcess(command, 0, "flags", "")
        if "KERNELS=all" in command:
            return subprocess.CompletedProcess(command, 0, "", "")
        return subprocess.CompletedProcess(command, 2, "", "firmware.elf: undefined reference to `Register_X()'")

    monkeypatch.setattr(firmware.subprocess, "run", fake_make)
    monkeypatch.setattr(firmware, "tree_digest", lambda _: "tree")
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path))
    toolchain = firmware.Toolchain("arm-none-eabi-", "qemu-system-arm", "make", "gcc 12", "qemu 7")
    firmware.build_firmware(tmp_path, firmware.TARGETS["qemu-m4"], tmp_path, toolchain, log=said.append)
    builds = [c for c in calls if "lib-config" not in c]
    assert len(builds) == 2 and "KERNELS=all" not in builds[0] and builds[1][-1] == "KERNELS=all"
    assert any("every TFLM kernel" in line for line in said)


@pytest.mark.slow
def test_the_project_builds_with_make_alone(built, device_setup):
    """What a user does with the exported folder: make, then make run, without edgekd."""
    project, fw = built
    toolchain, tree = device_setup
    lib = firmware.library_dir(project, tree, firmware.TARGETS["qemu-m4"], toolchain)
    result = subprocess.run(
        ["make", "-s", "-C", str(project), f"TFLM_TREE={tree}", f"LIB_DIR={lib}", "BUILD=build/by-hand", "run"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-500:]
    assert "EDGEKD done 2" in result.stdout  # no input file: the two built-in inputs


@pytest.mark.slow
def test_measure_reports_the_device_figures(small_model, device_setup, tmp_path):
    run = device.measure(
        small_model,
        "qemu-m4",
        load_device("cortex-m4"),
        project=None,
        build_root=tmp_path,
        sample=ExportSample(np.random.default_rng(0).standard_normal((8, 1, 16, 16), np.float32), np.zeros(8, int)),
        count=8,
        tree_spec=None,
        log=lambda _: None,
    )
    assert run.status == "measured" and run.images == 8 and run.bit_exact and run.agreement_with_host == 1.0
    assert run.instructions_min <= run.instructions_mean <= run.instructions_max
    assert run.instructions_max - run.instructions_min <= 0.01 * run.instructions_mean
    assert [layer.op for layer in run.layers] == tflite.read_graph(small_model)[2]
    assert sum(part.bytes for part in run.flash_parts) == run.flash_bytes
    parts = {part.name: part.bytes for part in run.flash_parts}
    assert parts["model"] >= small_model.stat().st_size and parts["TensorFlow Lite Micro"] > 10_000
    assert run.latency is not None and run.latency.low_ms < run.latency.high_ms
    # the cycle model ran: exact instructions, cycles per layer that sum to the profiled inference
    assert run.instruction_resolution == 1 and run.cycles_min <= run.cycles_mean <= run.cycles_max
    assert run.cycles_mean > run.instructions_mean  # loads, branches and MACs' neighbours cost more than one
    assert abs(sum(layer.cycles for layer in run.layers) - run.profiled_cycles) <= 0.01 * run.profiled_cycles
    assert "M cycles" in run.latency.basis and "refill 3" in run.cycle_model


@pytest.mark.slow
def test_a_qemu_without_plugins_falls_back_to_instructions(small_model, device_setup, tmp_path, monkeypatch):
    def unsupported(core="m4"):
        raise firmware.PluginUnsupported("qemu-system-arm cannot load the cycle-model plugin: no plugin support")

    monkeypatch.setattr(firmware, "cycle_plugin", unsupported)
    said = []
    run = device.measure(small_model, "qemu-m4", load_device("cortex-m4"), project=None, build_root=tmp_path,
                         sample=None, count=2, tree_spec=None, log=said.append)  # fmt: skip
    assert run.status == "measured" and run.bit_exact and run.cycles_mean is None
    assert "cannot load the cycle-model plugin" in run.cycle_model
    assert run.latency.basis.startswith("no cycle model:") and run.instruction_resolution == 40
    assert sum("falls back to instructions" in line for line in said) == 1


@pytest.mark.slow
def test_the_cortex_m33_boots_secure_on_its_own_board(small_model, device_setup, tmp_path):
    """A new core is one entry in firmware.TARGETS: M33 code (ARMv8-M) on QEMU's mps2-an505, bit-exact, timed
    with its profile's flash in the board's code memory at the secure alias."""
    run = device.measure(small_model, "qemu-m33", load_device("ek-ra6m4"), project=None, build_root=tmp_path,
                         sample=None, count=2, tree_spec=None, log=lambda _: None)  # fmt: skip
    assert run.status == "measured" and run.bit_exact and run.machine == "mps2-an505" and run.core == "cortex-m33"
    assert run.instruction_resolution == 1 and run.cycles_mean > run.instructions_mean
    toolchain, tree = device_setup
    m33 = firmware.TARGETS["qemu-m33"]
    built = firmware.build_firmware(Path(run.project), m33, tree, toolchain, log=lambda _: None)
    inputs = np.zeros((1, 16 * 16), dtype=np.int8)
    zero_wait = firmware.run_firmware(built, inputs, toolchain, cycles=firmware.CycleModel(refill=3))
    board = firmware.run_firmware(built, inputs, toolchain, cycles=device.cycle_model(load_device("ek-ra6m4")))
    assert board.cycles.flash_misses > 0  # the weights are read from the code memory at 0x10000000
    assert board.cycles.inferences[0][1] > zero_wait.cycles.inferences[0][1]


MLPERF_TINY = Path(__file__).resolve().parents[2] / "shared" / "models" / "mlperf-tiny"


@pytest.mark.skipif(not MLPERF_TINY.is_dir(), reason="the MLPerf Tiny reference models are not beside the checkout")
def test_files_of_an_older_converter_name_their_operators():
    """Older converters leave builtin_code at 0 (ADD) and keep the code in deprecated_builtin_code."""
    from edgekd.exporters.tflite import op_counts

    assert op_counts(MLPERF_TINY / "kws_ref_model.tflite") == {
        "AVERAGE_POOL_2D": 1, "CONV_2D": 5, "DEPTHWISE_CONV_2D": 4, "FULLY_CONNECTED": 1, "RESHAPE": 1, "SOFTMAX": 1,
    }  # fmt: skip
    assert op_counts(MLPERF_TINY / "ad01_int8.tflite") == {"FULLY_CONNECTED": 10}


@pytest.mark.slow
@pytest.mark.skipif(not MLPERF_TINY.is_dir(), reason="the MLPerf Tiny reference models are not beside the checkout")
def test_a_lone_file_that_is_not_an_image_runs_on_the_device(tmp_path, device_setup):
    """MLPerf Tiny's anomaly detector takes a 1×640 vector, and TFLM's planner needs more arena than its
    allocations print: random inputs of its own shape, the arena that really allocates, bit-exact output."""
    import shutil

    from edgekd.benchmarks.bench import BenchPlan, bench
    from edgekd.config import BenchConfig
    from edgekd.exporters.runtimes import measure_arena

    model = tmp_path / "ad01_int8.tflite"
    shutil.copy(MLPERF_TINY / "ad01_int8.tflite", model)
    arena = measure_arena(model)
    assert arena["total"] == arena["head"] + arena["tail"] and arena["total"] > 3984  # 3,984 printed
    plan = BenchPlan.of(BenchConfig(target="qemu-m4", latency_seconds=0.01, device_images=5), str(device_setup[1]))
    report = bench(model, plan)
    run = report.artefacts[0].device
    assert run.status == "measured" and run.bit_exact and run.images == 5
    assert [layer.op for layer in run.layers] == ["FULLY_CONNECTED"] * 10


def test_doctor_names_the_cycle_model_plugin(capsys, monkeypatch):
    def unsupported(core="m4"):
        if core == "m7":
            raise firmware.PluginUnsupported("the M7 cycle model needs Capstone: apt-get install libcapstone-dev")
        raise firmware.PluginUnsupported("no host C compiler (cc) to build the cycle-model QEMU plugin: install gcc")

    monkeypatch.setattr(firmware, "cycle_plugin", unsupported)
    code, out = run_cli(capsys, "doctor")
    assert code in (0, None) and "cycle-model QEMU plugin" in out.out  # a row, marked missing, not an error
    assert "libcapstone-dev" in out.out  # the M7 model's own row says what to install


@pytest.mark.slow
def test_set_image_writes_what_python_preprocesses_byte_for_byte(built, small_model, device_setup):
    """Camera frames of odd sizes in each pixel format, through the firmware's SetImage(): the int8 input it
    writes is edgekd.preprocess.frame_to_input's to the byte, and Predict() names the class the host does."""
    from edgekd.preprocess import frame_to_input, input_lut, to_channels

    _, fw = built
    toolchain, _ = device_setup
    micro = MicroRunner(small_model)
    lut = input_lut([0.0], [1.0], micro.input_scale, micro.input_zero_point)  # project_for's identity normalisation
    rng = np.random.default_rng(2)
    cases = []
    for height, width in ((23, 37), (41, 18), (9, 12)):  # wide, tall (both shrink), and smaller than 16×16
        rgb = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        red, green, blue = (rgb[..., c].astype(np.uint16) for c in range(3))
        frames = {
            "GRAY8": to_channels(rgb, 1).tobytes(),
            "RGB888": rgb.tobytes(),
            "RGB565": (((red >> 3) << 11) | ((green >> 2) << 5) | (blue >> 3)).astype("<u2").tobytes(),
        }
        for pixel_format, pixels in frames.items():
            for rule in ("crop", "pad", "squash"):
                cases.append((pixels, width, height, pixel_format, rule))
    records = b"".join(firmware.frame_record(*case) for case in cases)
    run = firmware.run_firmware(fw, np.zeros((1, micro.input_shape[1] ** 2), np.int8), toolchain, frames=records)
    assert len(run.frames) == len(cases)
    for (pixels, width, height, pixel_format, rule), result in zip(cases, run.frames, strict=True):
        expected = frame_to_input(pixels, width, height, pixel_format, size=16, channels=1, rule=rule, lut=lut)
        where = f"{pixel_format} {width}x{height} {rule}"
        assert result.input_digest == firmware.fnv1a(expected.tobytes()), f"SetImage differs from Python: {where}"
        logits = micro.invoke(expected.reshape(micro.input_shape)).reshape(-1)
        assert result.class_index == int(np.argmax(logits)), where
        assert 0.25 <= result.probability <= 1.0, where  # 4 classes: the top one has at least a quarter
