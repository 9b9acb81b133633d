"""The benchmark harness: memory analysis, latency method, verdict, budgets, report schema, fit."""

import json
import sys

import flatbuffers
import jsonschema
import numpy as np
import pytest

from edgekd import cli
from edgekd.benchmarks import latency
from edgekd.benchmarks.bench import verdict
from edgekd.benchmarks.memory import analyse
from edgekd.benchmarks.profiles import DeviceError, bundled_devices, load_device, parse_budget, parse_size
from edgekd.benchmarks.report import markdown
from edgekd.benchmarks.report_schema import Artefact, McuLatency, PeakLayer, Report, Sram, Verdict
from edgekd.benchmarks.report_schema import Device as DeviceRecord
from edgekd.checks import check, holds
from edgekd.exporters.tflite import flatbuffer_schema as tflite_schema


def write_graph(path, tensors, ops, inputs, outputs):
    """A hand-built .tflite: tensors as (shape, type, constant bytes or None); ops as (opcode, inputs, outputs)."""
    schema = tflite_schema()
    model = schema.ModelT()
    model.version = 3
    model.buffers = [schema.BufferT()]
    graph = schema.SubGraphT()
    graph.tensors = []
    for index, (shape, tensor_type, constant) in enumerate(tensors):
        tensor = schema.TensorT()
        tensor.shape, tensor.type, tensor.name = np.array(shape, dtype=np.int32), tensor_type, f"t{index}".encode()
        tensor.buffer = 0
        if constant is not None:
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(constant, dtype=np.uint8)
            model.buffers.append(buffer)
            tensor.buffer = len(model.buffers) - 1
        graph.tensors.append(tensor)
    codes = sorted({code for code, _, _ in ops})
    model.operatorCodes = []
    for code in codes:
        op_code = schema.OperatorCodeT()
        op_code.builtinCode = code
        op_code.deprecatedBuiltinCode = min(code, 127)
        model.operatorCodes.append(op_code)
    graph.operators = []
    for code, op_inputs, op_outputs in ops:
        op = schema.OperatorT()
        op.opcodeIndex = codes.index(code)
        op.inputs, op.outputs = np.array(op_inputs, dtype=np.int32), np.array(op_outputs, dtype=np.int32)
        graph.operators.append(op)
    graph.inputs, graph.outputs = np.array(inputs, dtype=np.int32), np.array(outputs, dtype=np.int32)
    model.subgraphs = [graph]
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


INT8, FLOAT32 = 9, 0


def test_lifetimes_of_a_residual_block(tmp_path):
    op = tflite_schema().BuiltinOperator
    # x(40 B) ─conv→ a(24 B) ─conv→ b(40 B) ─add(x, b)→ y(40 B): x stays live until the ADD.
    path = write_graph(
        tmp_path / "residual.tflite",
        tensors=[
            ([1, 2, 4, 5], INT8, None),  # 0 x
            ([3, 1, 1, 5], INT8, b"\x01" * 15),  # 1 weights
            ([1, 2, 4, 3], INT8, None),  # 2 a
            ([5, 1, 1, 3], INT8, b"\x01" * 15),  # 3 weights
            ([1, 2, 4, 5], INT8, None),  # 4 b
            ([1, 2, 4, 5], INT8, None),  # 5 y
        ],
        ops=[(op.CONV_2D, [0, 1, -1], [2]), (op.CONV_2D, [2, 3, -1], [4]), (op.ADD, [0, 4], [5])],
        inputs=[0],
        outputs=[5],
    )
    profile = analyse(path)
    # 16-byte aligned: x 48, a 32, b 48, y 48.
    assert [layer.live_bytes for layer in profile.layers] == [48 + 32, 48 + 32 + 48, 48 + 48 + 48]
    assert profile.peak_bytes == 144 and profile.peak.op == "ADD" and profile.peak_layer == 2
    assert profile.constant_bytes == 30 and profile.input_bytes == 40 and profile.output_bytes == 40


def test_lifetimes_of_a_chain_free_tensors_early(tmp_path):
    op = tflite_schema().BuiltinOperator
    path = write_graph(
        tmp_path / "chain.tflite",
        tensors=[
            ([1, 64], FLOAT32, None),
            ([1, 32], FLOAT32, None),
            ([1, 16], FLOAT32, None),
            ([1, 8], FLOAT32, None),
        ],
        ops=[(op.RELU, [0], [1]), (op.RELU, [1], [2]), (op.RELU, [2], [3])],
        inputs=[0],
        outputs=[3],
    )
    assert [layer.live_bytes for layer in analyse(path).layers] == [256 + 128, 128 + 64, 64 + 32]


def test_latency_is_the_median_of_window_medians():
    """Each input has a known cost on a fake clock: the figure is the median of the five windows."""
    now = [0.0]
    costs = {0: 0.010, 1: 0.020, 2: 0.030, 3: 0.040, 4: 0.500}

    def clock():
        return now[0]

    def invoke(index):
        now[0] += costs[index]

    result = latency.measure(invoke, list(costs), warmup_runs=2, min_seconds=0.05, min_runs=3, clock=clock)
    assert result.window_ms == pytest.approx([10, 20, 30, 40, 500])
    assert result.median_ms == pytest.approx(30)
    assert result.p90_ms == pytest.approx(500)
    assert result.runs == 5 + 3 + 3 + 3 + 3  # each window runs until ≥ 50 ms and ≥ 3 calls


def artefact(arena=1000, flash=5000, mcu_high=None):
    sram = Sram(
        static_peak_bytes=800,
        arena_total_bytes=arena,
        arena_head_bytes=800,
        arena_tail_bytes=arena - 800,
        io_bytes=10,
        peak_layer=PeakLayer(index=0, op="CONV_2D", output_shape=[1, 4, 4, 8]),
        layer_live_bytes=[800],
    )
    mcu = (
        []
        if mcu_high is None
        else [McuLatency(runtime="tflm-cmsis-nn", ms=mcu_high / 2, low_ms=0, high_ms=mcu_high, basis="test")]
    )
    return Artefact(format="tflite-int8", path="m.tflite", bytes=flash, flash_bytes=flash, sram=sram, mcu_latency=mcu)


@pytest.mark.parametrize(("arena", "flash", "passed"), [(1000, 5000, True), (1001, 5000, False), (1000, 5001, False)])
def test_verdict_boundaries(arena, flash, passed):
    budget = parse_budget("sram=1000,flash=5000", load_device("256k-1m"))
    result = verdict(artefact(arena, flash), budget)
    assert result.passed is passed
    sram, flash_check = result.constraints
    assert sram.margin == 1000 - arena and flash_check.margin == 5000 - flash


def test_latency_budget_uses_the_slow_end_of_the_estimate():
    budget = parse_budget("latency=50ms", load_device("cortex-m4"))
    assert verdict(artefact(mcu_high=50.0), budget).passed
    failing = verdict(artefact(mcu_high=50.1), budget)
    assert not failing.passed and failing.constraints[-1].name == "latency"


def test_a_failed_export_check_fails_the_verdict_and_leads_the_report():
    budget = parse_budget("", load_device("256k-1m"))
    checks = [
        check("onnx-int8: agreement (onnxruntime)", 0.867, 0.97, "fraction", "test images", bound="min"),
        holds("c-array: compiles", True, "c++ builds it"),
    ]
    result = verdict(artefact(), budget, checks)
    assert not result.passed and all(c.passed for c in result.constraints)
    assert [c.name for c in result.failed] == ["onnx-int8: agreement (onnxruntime)"]
    assert result.failed[0].margin == pytest.approx(-0.103)
    report = Report(
        source="runs/x",
        machine="test",
        artefacts=[artefact()],
        device=DeviceRecord(name="d", description="", clock_mhz=None, sram_bytes=1000, flash_bytes=5000),
        verdict=result,
    )
    text = markdown(report)
    assert text.index("## Verdict: FAIL") < text.index("- onnx-int8: agreement (onnxruntime): 86.70%, need ≥ 97.00%")
    assert "Verification: 1 of 2 checks hold." in text


def test_accuracy_budget():
    budget = parse_budget("accuracy=95%", load_device("256k-1m"))
    good = artefact()
    good.accuracy = {"tflite-micro": 0.96}
    assert verdict(good, budget, test_images=1000).passed
    good.accuracy = {"tflite-micro": 0.949}
    failing = verdict(good, budget, test_images=1000)
    assert not failing.passed and failing.constraints[-1].name == "accuracy" and failing.constraints[-1].bound == "min"
    assert not verdict(artefact(), budget).passed, "an accuracy budget that cannot be measured does not pass"


def test_balanced_accuracy_budget():
    """balanced_accuracy= is judged on the int8 model's mean per-class recall, beside top-1."""
    budget = parse_budget("accuracy=90%,balanced_accuracy=80%", load_device("256k-1m"))
    model = artefact()
    model.accuracy, model.balanced_accuracy = {"tflite-micro": 0.95}, {"tflite-micro": 0.79}
    found = verdict(model, budget, test_images=1000)
    assert not found.passed and [c.name for c in found.failed] == ["balanced accuracy"]
    model.balanced_accuracy = {"tflite-micro": 0.81}
    assert verdict(model, budget, test_images=1000).passed


def test_per_class_figures():
    from edgekd.metrics import balanced_accuracy, confusion_matrix, precisions, recalls

    labels = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0])  # 2 is a minority class never predicted
    confusion = confusion_matrix(labels, predicted, 4)
    assert confusion[0] == [8, 0, 0, 0] and confusion[1] == [1, 1, 0, 0] and confusion[2] == [1, 0, 0, 0]
    assert recalls(confusion) == [1.0, 0.5, 0.0, None]  # class 3 has no test image
    assert precisions(confusion) == [0.8, 1.0, None, None]
    assert balanced_accuracy(confusion) == pytest.approx(0.5)  # top-1 says 9/11 = 82 %


def test_bundled_devices_load():
    assert {"cortex-m4", "stm32f746", "stm32h743", "256k-1m"} <= set(bundled_devices())
    h7 = load_device("stm32h743")
    assert h7.sram_bytes == 512 * 1024 and h7.clock_mhz == 480 and "x-cube-ai" in h7.runtimes
    assert load_device("256k-1m").clock_mhz is None


@pytest.mark.parametrize(
    ("text", "size"), [("256k", 262144), ("256kB", 262144), ("1M", 1048576), ("1.5MiB", 1572864), ("4096", 4096)]
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [("sram=lots", "'lots' is not a size"), ("ram=1M", "does not parse"), ("latency=fast", "latency budget 'fast'")],
)
def test_bad_budgets(text, message):
    with pytest.raises(DeviceError, match=message):
        parse_budget(text, load_device("cortex-m4"))


def test_report_json_validates_against_its_schema():
    report = Report(
        source="runs/x",
        machine="test",
        artefacts=[artefact(mcu_high=10.0)],
        device=DeviceRecord(name="d", description="", clock_mhz=64, sram_bytes=1000, flash_bytes=5000),
        verdict=Verdict(
            artefact="tflite-int8",
            passed=True,
            constraints=[check("SRAM", 1, 2, "bytes", "test")],
        ),
    )
    jsonschema.validate(json.loads(report.model_dump_json()), Report.model_json_schema())
    assert "## Verdict: PASS" in markdown(report)


def run_cli(capsys, *args):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["edgekd", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "{tmp}", "--device", "cortex-m44"], "unknown device 'cortex-m44'; did you mean 'cortex-m4'?"),
        (["bench", "{tmp}", "--budget", "sram=big"], "'big' is not a size"),
        (["bench", "{tmp}/model.tflite"], "is not a TFLite flatbuffer"),
        (["bench", "{tmp}/model.onnx"], "is not an ONNX model"),
        (["bench", "{tmp}/notes.txt"], "not an artefact edgekd benchmarks"),
        (["bench", "{tmp}"], "no artefacts/export.json"),
        (["fit", "--device", "nowhere"], "unknown device 'nowhere'"),
    ],
)
def test_bad_bench_input_is_one_line_and_exit_2(capsys, tmp_path, args, message):
    for name in ("model.tflite", "model.onnx", "notes.txt"):
        (tmp_path / name).write_bytes(b"not a model at all")
    code, err = run_cli(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1


def test_bench_leaves_the_thread_count_as_it_found_it(tmp_path):
    """bench times on one thread; a caller that trains afterwards (a notebook, the test suite) must get
    its own thread count back, or its next training silently runs on one core."""
    import torch

    import edgekd

    path = tmp_path / "model.onnx"
    torch.onnx.export(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4)), torch.randn(1, 1, 4, 4), path,
                      dynamo=False)  # fmt: skip
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        edgekd.bench(path, device="cortex-m4", target="none", latency_seconds=0.01)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_commit_stamp_says_when_the_code_is_not_the_commits(tmp_path):
    import subprocess

    from edgekd.benchmarks.machine import _commit

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)  # fmt: skip

    (tmp_path / "model.py").write_text("x = 1\n")
    (tmp_path / "RESULTS.md").write_text("# results\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    clean = _commit(tmp_path)
    assert len(clean) >= 7 and "uncommitted" not in clean
    (tmp_path / "RESULTS.md").write_text("# results\n\na section the suite wrote\n")
    assert _commit(tmp_path) == clean  # the suite's own output is not a code change
    (tmp_path / "model.py").write_text("x = 2\n")
    assert _commit(tmp_path) == f"{clean} + uncommitted changes to the code"
