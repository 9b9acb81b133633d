"""`edgekd run`: distil → export → bench → report, in one command."""

import json
import os

import jsonschema
import numpy as np
import pytest
from conftest import run_cli

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
        # the same test images as 8-bit frames through the firmware's SetImage() and Predict()
        assert on_device.frames == 100 and on_device.frames_input_identical == 100
        assert on_device.frames_class_agreement == 1.0 and on_device.frames_accuracy > 0.5
        assert "tflite-int8: device preprocessing (qemu-m4)" in [c.name for c in parsed.verdict.checks]
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


def write_messy_folder(root, majority: int = 110, minority: int = 11) -> int:
    """A folder of photos as users have them, made from scikit-learn's digits 0-3: every file format and PIL
    mode edgekd decodes, odd aspect ratios, EXIF-rotated shots, names with spaces, parentheses and upper-case
    extensions, a 10:1 class imbalance, and what a Mac, Windows or Jupyter leaves beside them. Returns the
    number of images written."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    classes = {0: "zero", 1: "one", 2: "two (rare)", 3: "three rare"}
    written = 0
    for digit, name in classes.items():
        folder = root / name
        folder.mkdir(parents=True)
        count = majority if digit < 2 else minority
        for i, image in enumerate(digits.images[digits.target == digit][:count]):
            pixels = np.kron(image * 255 / 16, np.ones((4, 4))).round().astype(np.uint8)  # 32×32
            canvas = np.zeros((32 + 8 * (i % 3), 32 + 12 * (i % 2)), np.uint8)  # 32×32 to 48×44: odd aspects
            top, left = (canvas.shape[0] - 32) // 2, (canvas.shape[1] - 32) // 2
            canvas[top : top + 32, left : left + 32] = pixels
            grey = Image.fromarray(canvas)
            kind = i % 8
            if kind == 0:
                grey.save(folder / f"img_{i}.png")
            elif kind == 1:
                grey.convert("RGB").save(folder / f"IMG ({i}).JPG", quality=95)
            elif kind == 2:
                grey.convert("RGB").save(folder / f"scan {i}.bmp")
            elif kind == 3:
                grey.convert("P").save(folder / f"{i}.gif")
            elif kind == 4:
                Image.fromarray(canvas.astype(np.uint16) * 257).save(folder / f"{i}-16bit.PNG")
            elif kind == 5:
                Image.merge("RGBA", [grey, grey, grey, grey.point(lambda v: 255)]).save(folder / f"{i} rgba.png")
            elif kind == 6:
                grey.convert("CMYK").save(folder / f"{i}_cmyk.jpeg", quality=95)
            else:  # stored turned a quarter counter-clockwise; the EXIF orientation (6) turns it back
                exif = Image.Exif()
                exif[0x0112] = 6
                Image.fromarray(np.rot90(canvas)).convert("RGB").save(folder / f"phone {i}.jpg", exif=exif, quality=95)
            written += 1
        (folder / f"._IMG ({digit}).JPG").write_bytes(b"\0\5\26\7AppleDouble")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "zero" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "one" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (root / ".ipynb_checkpoints").mkdir()
    Image.new("L", (32, 32)).save(root / ".ipynb_checkpoints" / "untitled-checkpoint.png")
    (root / "__MACOSX" / "zero").mkdir(parents=True)
    (root / "__MACOSX" / "zero" / "._img_0.png").write_bytes(b"\0\5\26\7")
    return written


@pytest.mark.slow
def test_a_messy_photo_folder_runs_through_and_reports_every_class(capsys, tmp_path, write_recipe):
    """A user's folder, 10:1 imbalanced, through `edgekd run` with `balance: sampler`: no error, the junk skipped
    and counted, and the report's per-class recall, balanced accuracy and confusion matrix for the PyTorch
    student, the int8 model and the int8 firmware, whose test images also went through SetImage() as frames."""
    written = write_messy_folder(tmp_path / "photos")
    recipe = write_recipe({
        "name": "messy",
        "data": {"dataset": "imagefolder", "root": str(tmp_path / "photos"), "image_size": 32, "channels": 1,
                 "batch_size": 16, "balance": "sampler"},
        "teacher": {"model": "resnet10t", "train": {"epochs": 4, "lr": 0.003}},
        "distill": {"method": "kd", "epochs": 40, "lr": 0.02},
        "baseline": {"enabled": False},
        "export": {"formats": ["tflite-int8", "mcu-project"], "min_agreement_int8": 0.8,
                   "max_int8_accuracy_drop": 0.2},  # the pipeline is under test here, not the quantisation
        "bench": {"device": "cortex-m4", "device_images": 40, "latency_seconds": 0.02},
    })  # fmt: skip
    code, out, err = run_cli(capsys, "run", recipe, "--out", tmp_path / "run")
    assert code == 0, err + out[-2000:]
    assert "skipped 8 hidden or OS file(s) and folder(s)" in " ".join(err.split())  # the log names the junk
    run_dir = tmp_path / "run"
    parsed = Report.model_validate_json((run_dir / "report.json").read_text())
    assert parsed.class_names == ["one", "three rare", "two (rare)", "zero"]
    assert parsed.training.train_images["students"] + parsed.test_images < written  # the rest is validation
    assert sum(map(sum, parsed.student_confusion)) == parsed.test_images
    device = next(a for a in parsed.artefacts if a.format == "tflite-int8")
    assert len(device.confusion["tflite-micro"]) == 4 and device.balanced_accuracy["tflite-micro"] is not None
    firmware = device.device
    if os.environ.get("EDGEKD_REQUIRE_DEVICE") == "1":
        assert firmware.status == "measured", firmware.reason
    if firmware.status == "measured":
        assert sum(map(sum, firmware.confusion)) == firmware.images == min(40, parsed.test_images)
        assert firmware.frames == firmware.images and firmware.frames_input_identical == firmware.frames
        assert firmware.frames_class_agreement == 1.0
    report = (run_dir / "report.md").read_text()
    per_class = report.split("## Per class")[1].split("\n## ")[0]
    for name in parsed.class_names:
        assert f"| {name} | " in per_class
    assert "recall: PyTorch" in per_class and "recall: int8, TFLite Micro" in per_class
    assert "| **balanced accuracy** |" in per_class
    if firmware.status == "measured":
        assert "recall: int8 firmware, qemu-m4" in per_class and "camera path" in report
    assert (run_dir / "confusion.png").stat().st_size > 10_000
