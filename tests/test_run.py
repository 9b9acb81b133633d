"""`edgekd run`: distil → export → bench → report, in one command."""

import json
import os

import jsonschema
import pytest

from edgekd.benchmarks.report_schema import Report


@pytest.mark.slow
def test_run_produces_a_complete_report(digits_run):
    run_dir = digits_run.path
    assert digits_run.code == 0, digits_run.err
    assert "PASS tflite-int8 on cortex-m4" in " ".join(digits_run.out.split())

    report = json.loads((run_dir / "report.json").read_text())
    jsonschema.validate(report, Report.model_json_schema())
    parsed = Report.model_validate(report)
    assert parsed.training.kd_gain is not None and parsed.student_accuracy > 0.5
    formats = {a.format: a for a in parsed.artefacts}
    assert set(formats) == {"onnx", "onnx-int8", "tflite", "tflite-int8"}
    for a in parsed.artefacts:  # every figure filled
        assert a.accuracy and a.host_latency and all(h.median_ms > 0 for h in a.host_latency)
    device = formats["tflite-int8"]
    assert {h.runtime for h in device.host_latency} == {"litert-xnnpack", "litert-reference", "tflite-micro"}
    assert device.sram.arena_total_bytes == device.sram.arena_head_bytes + device.sram.arena_tail_bytes
    assert device.sram.arena_head_bytes == device.sram.static_peak_bytes
    assert {m.runtime for m in device.mcu_latency} == {"tflm-cmsis-nn"}
    assert parsed.verdict.passed and not parsed.verdict.failed
    assert {"tflite-int8: agreement (tflite-micro)", "onnx: opset", "c-array: length"} <= {
        c.name for c in parsed.verdict.checks
    }
    on_device = device.device
    if os.environ.get("EDGEKD_REQUIRE_DEVICE") == "1":
        assert on_device.status == "measured", on_device.reason
    if on_device.status == "measured":  # the cortex-m4 profile: the firmware ran on qemu-m4
        assert on_device.target == "qemu-m4" and on_device.images == 100 and on_device.bit_exact
        assert on_device.agreement_with_host == 1.0 and on_device.accuracy > 0.5
        assert on_device.arena_used_bytes <= device.sram.arena_total_bytes
        assert on_device.flash_bytes > device.bytes and on_device.layers and on_device.latency is not None
        assert [c.name for c in parsed.verdict.constraints] == ["SRAM", "flash", "latency"]
        assert parsed.verdict.constraints[0].value == on_device.arena_used_bytes
        assert "measured" in parsed.verdict.constraints[-1].basis
        assert "tflite-int8: device outputs (qemu-m4)" in [c.name for c in parsed.verdict.checks]
        assert (run_dir / "device_layers.png").stat().st_size > 10_000
        assert "## Measured on the device" in (run_dir / "report.md").read_text()
    else:
        assert [c.name for c in parsed.verdict.constraints] == ["SRAM", "flash", "latency"]
        assert on_device.reason
    for plot in ("training.png", "tradeoffs.png", "memory.png", "confusion.png"):
        assert (run_dir / plot).stat().st_size > 10_000
    assert "## Verdict: PASS" in (run_dir / "report.md").read_text()
    # Per class: the PyTorch student, the int8 model in TFLite Micro and (when it ran) the firmware.
    assert len(parsed.class_names) == 10 and sum(map(sum, parsed.student_confusion)) == parsed.test_images
    assert 0.5 < device.balanced_accuracy["tflite-micro"] <= 1 and len(device.confusion["tflite-micro"]) == 10
    if on_device.status == "measured":
        assert sum(map(sum, on_device.confusion)) == on_device.images and on_device.balanced_accuracy > 0.5
    per_class = (run_dir / "report.md").read_text().split("## Per class")[1].split("\n## ")[0]
    assert "| **balanced accuracy** |" in per_class and per_class.count("\n| ") >= 12  # header + 10 classes + it
