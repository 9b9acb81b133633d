"""`edgekd run`: distil → export → bench → report, in one command."""

import json
import os
import sys

import jsonschema
import pytest

from edgekd import cli
from edgekd.benchmarks.report import Report


@pytest.mark.slow
def test_run_produces_a_complete_report(capsys, tmp_path, write_recipe):
    recipe = {
        "name": "run-test",
        "data": {"dataset": "digits", "image_size": 32, "channels": 1, "batch_size": 64},
        "teacher": {"model": "resnet10t", "train": {"epochs": 3, "lr": 0.003}},
        "distill": {"method": "kd", "epochs": 15, "lr": 0.05},  # a student that quantises well (see test_export)
        "baseline": {"enabled": True, "lr": 0.05},
        "export": {"calibration_images": 300},
        "bench": {"device": "stm32f746", "budget": "latency=1s", "latency_seconds": 0.05},
    }
    run_dir = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["edgekd", "run", str(write_recipe(recipe)), "--out", str(run_dir), "--strict"])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    assert "PASS tflite-int8 on stm32f746" in captured.out

    report = json.loads((run_dir / "report.json").read_text())
    jsonschema.validate(report, Report.model_json_schema())
    parsed = Report.model_validate(report)
    assert parsed.training["kd_gain"] is not None and parsed.student_accuracy > 0.5
    formats = {a.format: a for a in parsed.artefacts}
    assert set(formats) == {"onnx", "onnx-int8", "tflite", "tflite-int8"}
    for a in parsed.artefacts:  # every figure filled
        assert a.accuracy and a.host_latency and all(h.median_ms > 0 for h in a.host_latency)
    device = formats["tflite-int8"]
    assert {h.runtime for h in device.host_latency} == {"litert-xnnpack", "litert-reference", "tflite-micro"}
    assert device.sram.arena_total_bytes == device.sram.arena_head_bytes + device.sram.arena_tail_bytes
    assert device.sram.arena_head_bytes == device.sram.static_peak_bytes
    assert {m.runtime for m in device.mcu_latency} == {"tflm-cmsis-nn", "plumerai"}
    assert parsed.verdict.passed and not parsed.verdict.failed
    assert {"tflite-int8: agreement (tflite-micro)", "onnx: opset", "c-array: length"} <= {
        c.name for c in parsed.verdict.checks
    }
    on_device = device.device
    if os.environ.get("EDGEKD_REQUIRE_DEVICE") == "1":
        assert on_device.status == "measured", on_device.reason
    if on_device.status == "measured":  # stm32f746 is a Cortex-M7: the firmware ran on qemu-m7
        assert on_device.target == "qemu-m7" and on_device.images == 100 and on_device.bit_exact
        assert on_device.agreement_with_host == 1.0 and on_device.accuracy > 0.5
        assert on_device.arena_used_bytes <= device.sram.arena_total_bytes
        assert on_device.flash_bytes > device.bytes and on_device.layers and on_device.latency is not None
        assert [c.name for c in parsed.verdict.constraints] == ["SRAM", "flash", "latency"]
        assert parsed.verdict.constraints[0].value == on_device.arena_used_bytes
        assert "measured" in parsed.verdict.constraints[-1].basis
        assert "tflite-int8: device outputs (qemu-m7)" in [c.name for c in parsed.verdict.checks]
        assert (run_dir / "device_layers.png").stat().st_size > 10_000
        assert "## Measured on the device" in (run_dir / "report.md").read_text()
    else:
        assert [c.name for c in parsed.verdict.constraints] == ["SRAM", "flash", "latency"]
        assert on_device.reason
    for plot in ("training.png", "tradeoffs.png", "memory.png"):
        assert (run_dir / plot).stat().st_size > 10_000
    assert "## Verdict: PASS" in (run_dir / "report.md").read_text()
