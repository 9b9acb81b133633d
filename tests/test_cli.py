"""The command line: bad input gives one line and exit 2; a tiny recipe runs end to end."""

import json
import subprocess
import sys

import pytest
import yaml

from edgekd import cli


def run_cli(capsys, *args):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["edgekd", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def assert_one_line_error(code, err, expected):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and expected in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r["distill"].update(temprature=2), "did you mean 'temperature'"),
        (lambda r: r["teacher"].update(model="resnet1888"), "unknown timm model 'resnet1888'; did you mean"),
        (lambda r: r["student"].update(model="mobilenetv2_tni"), "'mobilenetv2_tiny'"),
        (lambda r: r["data"].update(dataset="mnist"), "did you mean 'mnist5k'"),
        (
            lambda r: r["data"].update(dataset="imagefolder", root="/nonexistent/images"),
            "/nonexistent/images is not a folder",
        ),
        (lambda r: r["data"].update(dataset="cifar10", root="/nonexistent"), "lacks data_batch_1"),
        (lambda r: r["data"].update(exclude_classes=[7]), "data.exclude_classes [7]: the dataset has classes 0..3"),
        (lambda r: r["data"].update(transfer_fraction=0.01), "leaves fewer than one of the 112 training images"),
    ],
)
def test_bad_recipe_is_one_line_and_exit_2(capsys, tmp_path, tiny_recipe, write_recipe, mutate, expected):
    mutate(tiny_recipe)
    code, _, err = run_cli(capsys, "distill", write_recipe(tiny_recipe), "--out", tmp_path / "run")
    assert_one_line_error(code, err, expected)
    assert not (tmp_path / "run").exists(), "rejected before the run directory is touched"


def test_malformed_yaml(capsys, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    code, _, err = run_cli(capsys, "distill", path)
    assert_one_line_error(code, err, "malformed YAML at line")


def test_unwritable_output_dir(capsys, tmp_path, tiny_recipe, write_recipe):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, "distill", write_recipe(tiny_recipe), "--out", blocker / "run")
    assert_one_line_error(code, err, "cannot write to run directory")


def test_existing_run_is_not_overwritten(capsys, tmp_path, tiny_recipe, write_recipe):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "recipe.yaml").write_text("name: earlier\n")
    (run_dir / "student.pt").write_text("precious")
    code, _, err = run_cli(capsys, "distill", write_recipe(tiny_recipe), "--out", run_dir)
    assert_one_line_error(code, err, "already holds a run; pass --resume")
    assert (run_dir / "student.pt").read_text() == "precious"
    code, _, err = run_cli(capsys, "distill", write_recipe(tiny_recipe), "--out", run_dir, "--resume")
    assert_one_line_error(code, err, "was run with a different recipe")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_text("")
    code, _, err = run_cli(capsys, "distill", write_recipe(tiny_recipe), "--out", foreign, "--overwrite")
    assert_one_line_error(code, err, "not an edgekd run")
    assert (foreign / "holiday.jpg").exists()


def test_bad_set_override(capsys, tiny_recipe, write_recipe):
    code, _, err = run_cli(capsys, "distill", write_recipe(tiny_recipe), "--set", "distill.epochs")
    assert_one_line_error(code, err, "expected KEY=VALUE")


def test_recipes_lists_bundled_recipes(capsys):
    code, out, _ = run_cli(capsys, "recipes")
    assert code == 0
    assert "quickstart" in out and "mnist5k_resnet50_to_mbv2tiny" in out


@pytest.mark.slow
def test_distill_end_to_end_and_resume(capsys, monkeypatch, tmp_path, tiny_recipe, write_recipe):
    recipe_path = write_recipe(tiny_recipe)
    run_dir = tmp_path / "run"

    # Kill the run in the student stage, after its first epoch was checkpointed.
    from edgekd import train

    real_add = train.MetricsLog.add

    def add_then_die(self, row):
        real_add(self, row)
        if row["stage"] == "student" and row["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train.MetricsLog, "add", add_then_die)
    code, _, err = run_cli(capsys, "distill", recipe_path, "--out", run_dir, "--set", "distill.epochs=3")
    assert code == 130 and "--resume" in err
    assert (run_dir / "checkpoints" / "student.last.pt").is_file() and not (run_dir / "student.pt").exists()
    monkeypatch.setattr(train.MetricsLog, "add", real_add)

    code, out, err = run_cli(capsys, "distill", recipe_path, "--out", run_dir, "--set", "distill.epochs=3", "--resume")
    assert code == 0, err
    assert "student: resuming after epoch 1" in err and "teacher: finished earlier" in err
    assert "distillation gain" in out

    summary = json.loads((run_dir / "summary.json").read_text())
    for stage in ("teacher", "baseline", "student"):
        assert 0 <= summary[stage]["accuracy"] <= 1
        assert (run_dir / f"{stage}.pt").is_file()
    assert summary["kd_gain"] == pytest.approx(summary["student"]["accuracy"] - summary["baseline"]["accuracy"])
    assert summary["teacher"]["accuracy"] > 0.9, "the synthetic classes are easy"
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["distill"]["epochs"] == 3
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    student_epochs = [line.split(",")[1] for line in rows[1:] if line.startswith("student,")]
    assert student_epochs == ["1", "2", "3"], "the interrupted epoch is redone once, not duplicated"
    assert not list((run_dir / "checkpoints").glob("*.pt")), "finished stages drop their resume checkpoints"


@pytest.mark.slow
def test_console_script_exit_code(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "edgekd.cli", "distill", str(tmp_path / "none.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().startswith("error: recipe") and "Traceback" not in completed.stderr


@pytest.mark.slow
def test_teacher_ensemble_and_excluded_class_end_to_end(capsys, tmp_path, tiny_recipe, write_recipe):
    tiny_recipe["teacher"] = [tiny_recipe["teacher"], {"model": "resnet10t", "train": {"epochs": 2, "lr": 0.002}}]
    tiny_recipe["distill"]["ensemble"] = "geometric"
    tiny_recipe["data"]["exclude_classes"] = [1]
    run_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "distill", write_recipe(tiny_recipe), "--out", run_dir)
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["teacher"]["model"] == "geometric ensemble of resnet10t + resnet10t"
    assert [t["model"] for t in summary["teachers"]] == ["resnet10t", "resnet10t"]
    assert (run_dir / "teacher_0.pt").is_file() and (run_dir / "teacher_1.pt").is_file()
    excluded = summary["excluded_classes"]
    assert excluded["classes"] == [1] and set(excluded) == {"classes", "baseline", "student"}
    # Trained alone, the baseline never predicts a class it never saw; the distilled student may, from the
    # teacher's soft targets alone. The bias correction can only raise the unseen class's accuracy.
    assert excluded["baseline"]["excluded_accuracy_before"] == 0.0
    for stage in ("baseline", "student"):
        assert excluded[stage]["excluded_accuracy_after"] >= excluded[stage]["excluded_accuracy_before"]
        assert excluded[stage]["accuracy_after"] == pytest.approx(summary[stage]["accuracy"])


@pytest.mark.slow
def test_codistillation_end_to_end(capsys, tmp_path, tiny_recipe, write_recipe):
    del tiny_recipe["teacher"]
    tiny_recipe["distill"] = {"method": "codistill", "students": 3, "warmup_epochs": 1, "epochs": 2, "lr": 0.01}
    run_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "distill", write_recipe(tiny_recipe), "--out", run_dir)
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "teacher" not in summary and not (run_dir / "teacher.pt").exists()
    community = summary["codistillation"]
    assert len(community["students"]) == 3 and community["students"][0] == pytest.approx(summary["student"]["accuracy"])
    assert 0 <= community["ensemble"] <= 1


@pytest.mark.slow
def test_students_learn_from_the_transfer_fraction_only(capsys, tmp_path, tiny_recipe, write_recipe):
    tiny_recipe["data"]["transfer_fraction"] = 0.5
    run_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "distill", write_recipe(tiny_recipe), "--out", run_dir)
    assert code == 0, err
    images = json.loads((run_dir / "summary.json").read_text())["train_images"]
    assert images["students"] == images["teacher"] // 2
    assert f"the students learn from {images['students']:,} of {images['teacher']:,} training images" in " ".join(
        out.split()
    )
