import os

# An offline hub lookup otherwise retries for ~46 s before it fails.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

TINY_RECIPE = {
    "name": "tiny",
    "description": "a few seconds: synthetic data, small teacher, MobileNetV2-Tiny student",
    "seed": 0,
    "data": {
        "dataset": "synthetic",
        "image_size": 32,
        "channels": 1,
        "batch_size": 32,
        "synthetic": {"num_classes": 4, "samples_per_class": 40},
    },
    "teacher": {"model": "resnet10t", "train": {"epochs": 2, "lr": 0.003}},
    "student": {"model": "mobilenetv2_tiny"},
    "distill": {"method": "kd", "epochs": 2, "lr": 0.01},
}


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `edgekd ARGS` run in this process."""
    import sys

    from edgekd import cli

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["edgekd", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture
def tiny_recipe() -> dict:
    return copy.deepcopy(TINY_RECIPE)


@pytest.fixture
def write_recipe(tmp_path):
    import yaml

    def write(raw: dict, name: str = "recipe.yaml"):
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return write


# One real `edgekd run` (distil → export → bench → report) on scikit-learn's digits, shared by every
# test that reads what it writes (test_run, test_export): training it once saves minutes per test run.
# A student good enough to quantise within the checks (~95 %): a weak one (85 % after 6 epochs at lr
# 0.02) loses points of int8 agreement, and the checks rightly fail it.
DIGITS_RUN_RECIPE = {
    "name": "digits-run",
    "data": {"dataset": "digits", "image_size": 32, "channels": 1, "batch_size": 64},
    "teacher": {"model": "resnet10t", "train": {"epochs": 3, "lr": 0.003}},
    "distill": {"method": "kd", "epochs": 15, "lr": 0.05},
    "baseline": {"enabled": True, "lr": 0.05},
    "export": {"calibration_images": 300},
    "bench": {"device": "cortex-m4", "budget": "latency=1s", "latency_seconds": 0.05},
}


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """(run directory, exit code, stdout, stderr) of `edgekd run DIGITS_RUN_RECIPE --strict`."""
    import io
    import sys
    from contextlib import redirect_stderr, redirect_stdout
    from types import SimpleNamespace

    import yaml

    from edgekd import cli

    folder = tmp_path_factory.mktemp("digits")
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(DIGITS_RUN_RECIPE, sort_keys=False))
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["edgekd", "run", str(recipe), "--out", str(folder / "run"), "--strict"])
        try:
            cli.main()
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code
    return SimpleNamespace(path=folder / "run", code=code, out=out.getvalue(), err=err.getvalue())


@pytest.fixture(scope="session")
def device_setup():
    """(toolchain, TFLM tree), or a skip naming what is missing; a failure when EDGEKD_REQUIRE_DEVICE=1
    (.ci/run sets it: CI must run the device tests, not skip them)."""
    from edgekd import firmware

    try:
        return firmware.find_toolchain(), firmware.resolve_tflm_tree()
    except firmware.DeviceSetupError as exc:
        if os.environ.get("EDGEKD_REQUIRE_DEVICE") == "1":
            pytest.fail(f"EDGEKD_REQUIRE_DEVICE=1 but {exc}")
        pytest.skip(str(exc))
