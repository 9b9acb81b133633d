"""The extension points and the Python API: a third party's method and format run through the CLI with no
edit to edgekd, the README's Python example runs, `edgekd run` loads its data once, and the code keeps
method names inside methods/ and run-directory file names inside rundir.py."""

import ast
import importlib
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

import edgekd
from edgekd.data import DatasetEntry
from edgekd.errors import EdgeKDError
from edgekd.registry import DATASETS, FORMATS, METHODS
from edgekd.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = [ROOT / "edgekd", ROOT / "exporters", ROOT / "benchmarks"]


@pytest.fixture
def scoped_registries(monkeypatch):
    """Registrations made in a test vanish after it (other tests see edgekd's own entries only)."""
    for registry in (METHODS, FORMATS, DATASETS):
        registry.names()  # edgekd's own entries first
        monkeypatch.setattr(registry, "entries", dict(registry.entries))


@pytest.fixture
def toy_plugin(scoped_registries):
    import toy_plugin

    return importlib.reload(toy_plugin)  # registers (again) into this test's registries


@pytest.mark.slow
def test_a_third_party_method_and_format_run_through_the_cli(capsys, tmp_path, tiny_recipe, write_recipe, toy_plugin):
    code, out, _ = run_cli(capsys, "list", "methods")
    assert code == 0 and "toy-logit-mse" in out and "Ba & Caruana" in out
    code, out, _ = run_cli(capsys, "list", "formats")
    assert code == 0 and "toy-npz" in out and "student.npz" in out

    tiny_recipe["distill"] = {"method": "toy-logit-mse", "weight": 0.5, "epochs": 2, "lr": 0.01}
    tiny_recipe["export"] = {"formats": ["toy-npz"]}
    tiny_recipe["log"] = {"tensorboard": True}
    run_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, "distill", write_recipe(tiny_recipe), "--out", run_dir)
    assert code == 0, err
    summary = RunDir(run_dir).read_summary()
    assert summary.method == "toy-logit-mse" and 0 <= summary.student.accuracy <= 1
    rows = [line for line in RunDir(run_dir).metrics.read_text().splitlines() if line.startswith("student,")]
    header = RunDir(run_dir).metrics.read_text().splitlines()[0].split(",")
    assert "loss_mse" in header and len(rows) == 2  # the method's own loss is logged per epoch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(RunDir(run_dir).tensorboard)).Reload()
    assert [event.step for event in board.Scalars("student/loss_mse")] == [1, 2]
    assert {"teacher/train_loss", "baseline/val_accuracy"} <= set(board.Tags()["scalars"])

    code, out, err = run_cli(capsys, "export", run_dir)
    assert code == 0, err
    exported = RunDir(run_dir).read_export()
    assert list(exported.artefacts) == ["toy-npz"] and exported.passed
    assert exported.artefacts["toy-npz"].checks[0].name == "round trip"
    assert (RunDir(run_dir).artefact("student.npz")).is_file()


def test_a_misspelt_method_names_the_registered_ones(capsys, tmp_path, tiny_recipe, write_recipe):
    tiny_recipe["distill"]["method"] = "kdd"
    code, _, err = run_cli(capsys, "distill", write_recipe(tiny_recipe), "--out", tmp_path / "run")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"expected one of {', '.join(METHODS.names())}; did you mean 'kd'?" in err


def test_list_every_kind(capsys):
    for kind, names in [("methods", METHODS.names()), ("datasets", DATASETS.names()), ("formats", FORMATS.names())]:
        code, out, _ = run_cli(capsys, "list", kind)
        assert code == 0 and all(name in out for name in names)
    code, out, _ = run_cli(capsys, "list", "devices")
    assert code == 0 and "cortex-m4" in out and "stm32f746" in out
    code, _, err = run_cli(capsys, "list", "method")
    assert code == 2 and "did you mean 'methods'?" in err


def test_a_third_party_dataset_is_one_file_with_its_own_options(capsys, tiny_recipe, toy_plugin):
    from edgekd.data import load_data
    from edgekd.recipe import parse_recipe

    code, out, _ = run_cli(capsys, "list", "datasets")
    assert code == 0 and "toy-stripes" in out and "Horizontal or vertical stripes" in out
    tiny_recipe["data"] = {"dataset": "toy-stripes", "image_size": 16, "channels": 1, "stripes": {"period": 8}}
    recipe = parse_recipe(tiny_recipe)
    assert recipe.data.stripes.period == 8 and parse_recipe(yaml.safe_load(recipe.to_yaml())) == recipe
    data = load_data(recipe.data, recipe.seed)
    assert data.class_names == ["horizontal", "vertical"] and data.image_size == 16
    tiny_recipe["data"]["stripes"] = {"perod": 8}
    with pytest.raises(EdgeKDError, match=r"unknown key 'data.stripes.perod'; did you mean 'period'"):
        parse_recipe(tiny_recipe)


@pytest.mark.slow
def test_run_loads_the_dataset_once(capsys, tmp_path, tiny_recipe, write_recipe, scoped_registries):
    synthetic = DATASETS.get("synthetic")
    loads = []

    def counted(config, seed):
        loads.append(seed)
        return synthetic.load(config, seed)

    DATASETS.register("counted", DatasetEntry("counted", counted, config=synthetic.config))
    tiny_recipe["data"]["dataset"] = "counted"
    tiny_recipe["teacher"]["train"]["epochs"] = 1
    tiny_recipe["distill"]["epochs"] = 1
    tiny_recipe["export"] = {"formats": ["onnx"]}
    tiny_recipe["bench"] = {"target": "none", "latency_seconds": 0.05}
    code, _, err = run_cli(capsys, "run", write_recipe(tiny_recipe), "--out", tmp_path / "run")
    assert code == 0, err
    assert loads == [0], "distill, export and bench share one load"
    assert RunDir(tmp_path / "run").report_json.is_file()


def python_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(python_example(), "README.md (Python example)", "exec"), {})
    printed = capsys.readouterr().out
    assert "checks hold: True" in printed, printed
    summary = RunDir(tmp_path / "runs" / "my-digits").read_summary()
    assert summary.teacher.model == "Sequential" and summary.dataset == "python"
    assert summary.student.accuracy > 0.8
    report = json.loads(RunDir(tmp_path / "runs" / "my-digits").report_json.read_text())
    assert report["verdict"]["artefact"] == "tflite-int8"


def test_the_api_is_what_import_edgekd_gives():
    for name in ("load_recipe", "distill", "export", "bench", "run", "fit", "from_datasets", "register_method"):
        assert callable(getattr(edgekd, name)) and name in dir(edgekd)
    recipe = edgekd.load_recipe("quickstart", ["distill.epochs=2"])
    assert recipe.distill.epochs == 2
    assert edgekd.fit("cortex-m4", classes=10, channels=1)[0].flash_estimate <= 1024 * 1024
    with pytest.raises(edgekd.EdgeKDError, match="unknown device 'cortex-m44'"):
        edgekd.fit("cortex-m44")


# ---------------------------------------------------------------- what names live where


def _strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal in a module that is not a docstring."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def _modules(exclude: Path) -> list[Path]:
    return [p for folder in PACKAGE_FOLDERS for p in folder.rglob("*.py") if not p.is_relative_to(exclude)]


def test_no_module_outside_methods_names_a_method():
    names = set(METHODS.names())
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path in _modules(ROOT / "edgekd" / "methods")
        for line, text in _strings(path)
        if text in names
    ]
    assert not found, "\n".join(found)


def test_no_module_outside_rundir_spells_a_run_directory_file_name():
    run = RunDir(Path("run"))
    names = {
        p.name
        for p in [
            run.recipe,
            run.metrics,
            run.summary,
            run.export_json,
            run.test_sample,
            run.convert_log,
            run.report_md,
            run.report_json,
            run.weights("student"),
            run.weights("teacher"),
            run.weights("baseline"),
        ]  # fmt: skip
    }  # folders (checkpoints, artefacts) are also ordinary words in messages
    pattern = re.compile("|".join(re.escape(name) for name in names))
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path in _modules(ROOT / "edgekd" / "rundir.py")
        for line, text in _strings(path)
        if pattern.search(text) and not re.fullmatch(r"[\w.]+\.py", text)
    ]
    assert not found, "\n".join(found)
