"""`edgekd fit`: the analytic model against real exports."""

import sys

import pytest
import torch
from torch import nn

from edgekd import cli
from edgekd.benchmarks import fit
from edgekd.benchmarks.memory import analyse
from edgekd.benchmarks.profiles import load_device, parse_budget
from edgekd.exporters import tflite
from edgekd.exporters.runtimes import measure_arena
from edgekd.models import create_model


def export(width, resolution, classes, path, in_chans=3):
    """An untrained student whose weights, like trained ones, share no buffers: with BatchNorm at its
    initial values every bias is zero, the converter stores one zero bias for many layers, and the file
    comes out ~20 KB smaller than a trained student's."""
    torch.manual_seed(0)
    model = create_model("mobilenetv2_tiny", num_classes=classes, in_chans=in_chans, kwargs={"width": width}).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
            elif isinstance(module, nn.Linear):
                module.bias.uniform_(-0.5, 0.5)
    tflite.convert(model, torch.randn(2, in_chans, resolution, resolution), path, int8=True)
    return model


def export_and_measure(corner: tuple) -> tuple:
    """(corner, flatbuffer bytes, TFLite-Micro arena) of an export; runs in a worker process."""
    import tempfile
    from pathlib import Path

    torch.set_num_threads(1)
    width, resolution, in_chans, classes = corner
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.tflite"
        export(width, resolution, classes, path, in_chans)
        return corner, path.stat().st_size, measure_arena(path)["total"]


@pytest.mark.slow
def test_estimates_bound_real_exports_at_every_corner_of_the_grid():
    """fit must err on the safe side: wherever it proposes, the export needs no more than it predicts."""
    import itertools
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    low, high = 64, 224  # search()'s default resolution range
    corners = list(itertools.product((min(fit.WIDTHS), max(fit.WIDTHS)), (low, high), (1, 3), (10, 1000)))
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        measured = list(pool.map(export_and_measure, corners))
    for (width, resolution, in_chans, classes), flash, arena in measured:
        estimate = fit.estimate(width, resolution, classes, in_chans)
        where = f"width {width}, {resolution} px, {in_chans} channels, {classes} classes"
        assert estimate.flash_estimate >= flash, (
            f"flash under-estimated at {where}: {estimate.flash_estimate} < {flash}"
        )
        assert estimate.arena_estimate >= arena, (
            f"arena under-estimated at {where}: {estimate.arena_estimate} < {arena}"
        )
        assert estimate.flash_estimate <= 1.03 * flash, f"flash bound loose at {where}"  # useful, not just safe


def test_simulated_peak_of_the_reference_model():
    """MobileNetV2-Tiny int8 at 144×144 (MCUNet's reference): ~304 kB of activations, so not 256 kB."""
    candidate = fit.estimate(0.35, 144, 1000, 3)
    assert candidate.activation_peak == 311_040  # = TFLite-Micro's head for the exported model
    assert candidate.parameters == pytest.approx(0.75e6, rel=0.02)
    assert not candidate.fits(parse_budget(None, load_device("256k-1m")))


def test_fit_never_proposes_what_its_own_estimates_reject():
    budget = parse_budget(None, load_device("256k-1m"))
    proposals = fit.search(budget, num_classes=10, in_chans=3)
    assert proposals and all(c.fits(budget) for c in proposals)
    assert proposals == sorted(proposals, key=lambda c: c.macs, reverse=True)


@pytest.mark.slow
def test_the_activation_model_is_exact(tmp_path):
    model = export(0.5, 96, 10, tmp_path / "model.tflite")
    peak, _, _ = fit.simulate(model, 3, 96)
    assert peak == analyse(tmp_path / "model.tflite").peak_bytes


def test_fit_cli_prints_a_recipe_block(capsys, monkeypatch):
    monkeypatch.setattr(
        sys, "argv", ["edgekd", "fit", "--device", "stm32h743", "--classes", "10", "--min-resolution", "128"]
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "model: mobilenetv2_tiny" in out and "kwargs: {width:" in out and "image_size:" in out
