"""Exporters: every artefact verified against the PyTorch student; planted failures are caught."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgekd import cli
from edgekd.exporters import c_array, tflite
from edgekd.exporters.c_array import compiled_model_length
from edgekd.exporters.formats import ExportJob
from edgekd.exporters.runtimes import LiteRTRunner
from edgekd.models import create_model

EXPORT_RECIPE = {  # for run directories made by hand (fake_run); the trained one is conftest's digits_run
    "name": "export-test",
    "data": {"dataset": "digits", "image_size": 32, "channels": 1, "batch_size": 64},
    "teacher": {"model": "resnet10t", "train": {"epochs": 3, "lr": 0.003}},
    "distill": {"method": "kd", "epochs": 15, "lr": 0.05},
    "baseline": {"enabled": False},
    "export": {"calibration_images": 300},
}


@pytest.fixture(scope="module")
def exported_run(digits_run):
    """The shared digits run (trained, exported with every format, benchmarked): read only."""
    return digits_run.path, json.loads((digits_run.path / "artefacts" / "export.json").read_text())


@pytest.fixture
def trained_run(digits_run, tmp_path):
    """A copy of the shared run, for a test that changes it."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(digits_run.path, copy, ignore=shutil.ignore_patterns(".edgekd-lock", "build"))
    return copy


@pytest.mark.slow
def test_every_format_is_written_and_verified(exported_run):
    run_dir, report = exported_run
    artefacts = run_dir / "artefacts"
    for name in (
        "student.onnx",
        "student.int8.onnx",
        "student.tflite",
        "student.int8.tflite",
        "model_data.cc",
        "model_data.h",
        "export.json",
    ):
        assert (artefacts / name).is_file(), name
    assert report["passed"] and json.loads((artefacts / "export.json").read_text())["passed"]
    int8 = report["artefacts"]["tflite-int8"]
    assert set(int8["results"]) == {"litert-reference", "tflite-micro"}
    # TFLite's reference kernels and TFLite-Micro compute the same int8 numbers.
    assert int8["results"]["litert-reference"]["agreement"] == int8["results"]["tflite-micro"]["agreement"]
    # Within a few test images (one is 0.28 points; another CPU's student moves by that much): the export's
    # own accuracy-drop check, which `passed` above includes, judges the drop against its limit.
    assert abs(int8["results"]["tflite-micro"]["accuracy"] - report["student"]["accuracy"]) <= 0.03
    assert int8["info"]["same_padding_folded"] and int8["info"]["pad_ops_removed"] == 5
    assert "PAD" not in int8["info"]["ops"] and "TRANSPOSE" not in int8["info"]["ops"]
    assert report["artefacts"]["onnx"]["info"]["opset"] >= 18
    assert not (artefacts / "student.onnx.data").exists()


@pytest.mark.slow
def test_float_graph_is_not_int8(exported_run):
    run_dir, _ = exported_run
    problems = tflite.int8_violations(run_dir / "artefacts" / "student.tflite")
    assert problems and any("FLOAT32" in p for p in problems)
    assert tflite.int8_violations(run_dir / "artefacts" / "student.int8.tflite") == []


def corrupt_largest_weight(path):
    """Overwrite the largest constant buffer of a .tflite with noise, keeping the file valid."""
    import flatbuffers

    schema = tflite.flatbuffer_schema()
    model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    largest = max((b for b in model.buffers if b.data is not None), key=lambda b: len(b.data))
    largest.data = np.random.default_rng(0).integers(0, 255, len(largest.data), dtype=np.uint8)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))


@pytest.mark.slow
def test_corrupted_weight_fails_the_export_and_the_verdict(capsys, trained_run, monkeypatch, tmp_path):
    # The converter's output for this very student and calibration is the shared run's int8 file: the test
    # corrupts a copy of it instead of converting again (~20 s).
    converted = (trained_run / "artefacts" / "student.int8.tflite").read_bytes()
    converted_info = json.loads((trained_run / "artefacts" / "export.json").read_text())["artefacts"]["tflite-int8"]

    def convert_then_corrupt(model, images, path, *, int8, **_):
        assert int8, "only the int8 conversion is asked for"
        path.write_bytes(converted)
        corrupt_largest_weight(path)
        return dict(converted_info["info"])

    monkeypatch.setattr(tflite, "convert", convert_then_corrupt)
    code, err = run_export_cli(capsys, trained_run, "--formats", "tflite-int8")
    assert code == 1 and "export checks failed (tflite-int8: agreement (litert-reference)" in err
    report = json.loads((trained_run / "artefacts" / "export.json").read_text())
    assert report["passed"] is False and report["artefacts"]["tflite-int8"]["passed"] is False
    assert (trained_run / "artefacts" / "student.int8.tflite").is_file(), "a failed artefact is kept"
    failed = next(c for c in report["artefacts"]["tflite-int8"]["checks"] if c["name"] == "agreement (tflite-micro)")
    assert failed["value"] < failed["limit"] == 0.97 and failed["margin"] < 0 and failed["bound"] == "min"

    # The benchmark's verdict carries the failed check: FAIL at the top of the report, and --strict exits 1.
    monkeypatch.setattr(
        sys, "argv", ["edgekd", "bench", str(trained_run), "--target", "none", "--latency-seconds", "0.01"]
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "FAIL tflite-int8 on cortex-m4" in out and "checks FAILED" in out
    text = (trained_run / "report.md").read_text()
    verdict_part = text.split("## Training")[0]
    assert (
        "## Verdict: FAIL (tflite-int8)" in verdict_part and "- tflite-int8: agreement (tflite-micro):" in verdict_part
    )
    monkeypatch.setattr(sys, "argv", ["edgekd", "bench", str(trained_run), "--target", "none", "--strict",
                                      "--latency-seconds", "0.01"])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1 and "agreement (tflite-micro)" in capsys.readouterr().err


def test_rotated_proxy_computes_the_same_student_rotated():
    """The calibration proxy: symmetric padding, kernels rotated 180°, fed rotated images."""
    torch.manual_seed(0)
    model = create_model("mobilenetv2_tiny", num_classes=4, in_chans=1).eval()
    assert tflite.can_fold_padding(model)
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(tflite.rotated_symmetric_proxy(model)(images.flip(2, 3)), model(images), atol=1e-4)
    symmetric = create_model("mobilenetv2_tiny", num_classes=4, in_chans=1, kwargs={"pad_type": ""})
    assert not tflite.can_fold_padding(symmetric)


def test_c_array_compiles_and_has_the_model_length(tmp_path):
    model_file = tmp_path / "model.tflite"
    model_file.write_bytes(bytes(range(256)) * 3 + b"\x01")
    interface = c_array.ModelInterface(
        input_shape=(1, 8, 8, 1),
        input_quant=(0.02, -3),
        output_quant=(0.1, 5),
        mean=[0.5],
        std=[0.25],
        class_names=["zero", 'say "one"'],
        arena_bytes=12345,
        description="test",
    )
    source, header = c_array.write_c_array(model_file, tmp_path, interface)
    assert "alignas(16) const unsigned char g_model_data[]" in source.read_text()
    assert "kTensorArenaSize = 12345" in header.read_text()
    length = compiled_model_length(source)
    if length is None:
        pytest.skip("no C++ compiler")
    assert length == 256 * 3 + 1


def run_export_cli(capsys, *args):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["edgekd", "export", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
    return exit_info.value.code, capsys.readouterr().err


def fake_run(tmp_path, recipe=None):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe or EXPORT_RECIPE))
    return run_dir


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda d: None, "student.pt is missing"),
        (lambda d: (d / "student.pt").write_bytes(b"garbage"), "not an edgekd weights file"),
        (lambda d: torch.save({"conv.weight": torch.zeros(1)}, d / "student.pt"), "not an edgekd weights file"),
    ],
)
def test_bad_student_file(capsys, tmp_path, setup, expected):
    run_dir = fake_run(tmp_path)
    setup(run_dir)
    code, err = run_export_cli(capsys, run_dir)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_not_a_run_dir_and_unknown_format(capsys, tmp_path):
    code, err = run_export_cli(capsys, tmp_path)
    assert code == 2 and "not an edgekd run directory" in err
    code, err = run_export_cli(capsys, fake_run(tmp_path), "--formats", "onnx,tflite-int4")
    assert code == 2 and "unknown export format tflite-int4" in err


def test_empty_calibration_split(capsys, tmp_path):
    images = tmp_path / "images"
    for split in ("train/cat", "train/dog", "test/cat"):
        (images / split).mkdir(parents=True)
    recipe = {**EXPORT_RECIPE, "data": {"dataset": "imagefolder", "root": str(images), "image_size": 32}}
    run_dir = fake_run(tmp_path, recipe)
    model = create_model("mobilenetv2_tiny", num_classes=2, in_chans=3)
    torch.save(
        {"model": "mobilenetv2_tiny", "num_classes": 2, "in_chans": 3, "state_dict": model.state_dict()},
        run_dir / "student.pt",
    )
    code, err = run_export_cli(capsys, run_dir)
    assert code == 2 and "imagefolder" in err and len(err.strip().splitlines()) == 1


def test_compare_counts_agreement():
    class Fixed(LiteRTRunner):
        def __init__(self):
            pass

        def predict(self, images):
            return np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])

    job = ExportJob(
        recipe=None, model=None, metadata={}, data=None, calibration=None,
        test_images=torch.zeros(3, 1, 2, 2), test_labels=np.array([0, 1, 1]),
        reference=np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]), out=Path("."), log=Path("."), console=None,
    )  # fmt: skip
    result = job.compare(Fixed())
    assert result["agreement"] == pytest.approx(2 / 3) and result["accuracy"] == pytest.approx(2 / 3)
    assert result["max_logit_error"] == pytest.approx(1.0)
    assert result["confusion"] == [[1, 0], [1, 1]] and result["balanced_accuracy"] == pytest.approx(0.75)


def with_export_settings(run_dir, **settings):
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    recipe.setdefault("export", {}).update(settings)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))


@pytest.mark.slow
def test_memory_rewrite_through_export_and_the_device_run(capsys, trained_run, device_setup, monkeypatch):
    """export.memory: groups on a trained student: the rewritten graph matches the converted one on every
    real test image, later formats use it, and the device run measures both graphs for the report."""
    with_export_settings(trained_run, memory="groups")
    code, err = run_export_cli(capsys, trained_run, "--formats", "tflite-int8,c-array,mcu-project")
    assert code == 0, err
    found = json.loads((trained_run / "artefacts" / "export.json").read_text())["artefacts"]["tflite-int8"]
    memory = found["info"]["memory"]
    assert memory["rewrite"] == "groups" and memory["arena_after"]["total"] < memory["arena_before"]["total"]
    same = next(c for c in found["checks"] if c["name"] == "memory rewrite bit-identical")
    assert same["passed"] and same["value"] == 0
    assert "AddConcatenation()" in (trained_run / "artefacts" / "mcu-project" / "model_ops.h").read_text()
    monkeypatch.setattr(sys, "argv", ["edgekd", "bench", str(trained_run), "--target", "qemu-m4",
                                      "--device-images", "5", "--latency-seconds", "0.01"])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 0, capsys.readouterr().err
    report = json.loads((trained_run / "report.json").read_text())
    target = next(a for a in report["artefacts"] if a["format"] == "tflite-int8")
    rewrite, run = target["memory_rewrite"], target["device"]
    assert run["bit_exact"] and rewrite["target_arena_before_bytes"] > run["arena_used_bytes"]
    assert "arena on the cortex-m4 (measured)" in (trained_run / "report.md").read_text()


@pytest.mark.slow
def test_a_rewrite_option_that_does_not_fit_the_graph_is_one_line(capsys, trained_run):
    with_export_settings(trained_run, memory="patches", memory_cut=500)
    code, err = run_export_cli(capsys, trained_run, "--formats", "tflite-int8")
    message = "export.memory_cut: the graph cannot be cut after operator 500"
    assert code == 2 and err.strip().splitlines()[-1].startswith(f"error: {message}"), err  # after the progress line


@pytest.mark.slow
def test_a_patch_grid_larger_than_the_cut_is_named(exported_run):
    """The same one-line error path as the cut above (RewriteError), for the grid: on the exported graph."""
    from edgekd.exporters.graph_edit import RewriteError
    from edgekd.exporters.spatial_patches import cut_points, split_spatial_patches

    data = (exported_run[0] / "artefacts" / "student.int8.tflite").read_bytes()
    with pytest.raises(RewriteError, match=r"export.memory_grid: 40x2 patches do not fit a \d+×\d+ cut"):
        split_spatial_patches(data, cut_points(data)[0], (40, 2))
