"""`edgekd fit`: the analytic model against real exports."""

import sys

import pytest
import torch

from edgekd import cli
from edgekd.benchmarks import fit
from edgekd.benchmarks.memory import analyse
from edgekd.benchmarks.profiles import load_device, parse_budget
from edgekd.exporters import tflite


def export_and_measure(corner: tuple) -> tuple:
    """(corner, flatbuffer bytes, arena); runs in a worker process."""
    torch.set_num_threads(1)
    return corner, *fit.measure_export(*corner)


@pytest.mark.slow
def test_estimates_bound_real_exports_across_the_grid():
    """fit must err on the safe side: wherever it proposes, the export needs no more than it predicts.

    Every corner of the grid (extreme widths × resolutions × 1 and 3 channels × 10 and 1000 classes) in
    8 exports, not 16: the flatbuffer does not depend on the resolution and the arena depends on the
    class count only through the classifier (whose per-channel data fit's tail term counts too), so each
    width × channels pair is exported at (64 px, 1000 classes) and (224 px, 10 classes), which measures
    flash at both class counts and the arena at both resolutions. benchmarks/suite/fit_bounds.py exports
    all 16 corners and writes the table to RESULTS.md."""
    import itertools
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    low, high = 64, 224  # search()'s default resolution range
    corners = [
        (width, resolution, in_chans, classes)
        for width, in_chans in itertools.product((min(fit.WIDTHS), max(fit.WIDTHS)), (1, 3))
        for resolution, classes in ((low, 1000), (high, 10))
    ]
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
    model = fit.student_like_trained(0.5, 10, 3)
    tflite.convert(model, torch.randn(2, 3, 96, 96), tmp_path / "model.tflite", int8=True)
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
