"""`edgekd fit`: the analytic model against real exports."""

import sys

import pytest
import torch

from edgekd import cli
from edgekd.benchmarks import fit
from edgekd.benchmarks.profiles import load_device, parse_budget


def export_and_measure(corner: tuple) -> tuple:
    """(corner, fit.Measured); runs in a worker process."""
    torch.set_num_threads(1)
    return corner, fit.measure_export(*corner)


@pytest.mark.slow
def test_estimates_bound_real_exports_across_the_grid():
    """fit must err on the safe side: wherever it proposes, the export needs no more than it predicts,
    and its activation peak is the one the static analysis of the exported file finds, to the byte.

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
    for (width, resolution, in_chans, classes), export in measured:
        estimate = fit.estimate(width, resolution, classes, in_chans)
        where = f"width {width}, {resolution} px, {in_chans} channels, {classes} classes"
        assert estimate.activation_peak == export.activation_peak, f"activation peak differs at {where}"
        assert estimate.flash_estimate >= export.flash, (
            f"flash under-estimated at {where}: {estimate.flash_estimate} < {export.flash}"
        )
        assert estimate.arena_estimate >= export.arena, (
            f"arena under-estimated at {where}: {estimate.arena_estimate} < {export.arena}"
        )
        assert estimate.flash_estimate <= 1.03 * export.flash, f"flash bound loose at {where}"  # useful, not just safe


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


def test_fit_cli_prints_a_recipe_block(capsys, monkeypatch):
    monkeypatch.setattr(
        sys, "argv", ["edgekd", "fit", "--device", "stm32h743", "--classes", "10", "--min-resolution", "128"]
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "model: mobilenetv2_tiny" in out and "kwargs: {width:" in out and "image_size:" in out


def test_channel_groups_let_fit_propose_larger_inputs():
    """MobileNetV2-Tiny at 144 px needs 311,040 B of activations as converted, 165,888 B with channel groups
    (the stage-1 block that made the peak, as benchmarks/suite/memory_rewrite.py measures): the reference
    model fits 256 kB with the rewrite, and fit's largest proposal at width 0.35 grows."""
    budget = parse_budget(None, load_device("256k-1m"))
    grouped = fit.estimate(0.35, 144, 10, 3, groups=True)
    assert grouped.activation_peak == 165_888 and grouped.added_ops > 0 and grouped.fits(budget)
    assert not fit.estimate(0.35, 144, 10, 3).fits(budget)

    def largest(groups: bool) -> int:
        return max(c.resolution for c in fit.search(budget, num_classes=10, widths=(0.35,), groups=groups))

    assert largest(groups=True) > largest(groups=False)


@pytest.mark.slow
def test_grouped_estimate_is_the_rewritten_exports_peak(tmp_path):
    """The peak fit predicts with groups is the static peak of the graph the export's search ends at, to
    the byte, and its arena bound holds for what TFLite Micro allocates."""
    from edgekd.benchmarks.memory import analyse
    from edgekd.exporters import channel_groups, tflite
    from edgekd.exporters.runtimes import measure_arena

    for width, resolution in ((0.35, 160), (0.5, 112)):
        path = tmp_path / f"{width}-{resolution}.tflite"
        model = fit.student_like_trained(width, 10, 3)
        tflite.convert(model, torch.randn(2, 3, resolution, resolution), path, int8=True)
        data = path.read_bytes()
        chosen = channel_groups.plan_groups(data, groups=None, target=None)
        path.write_bytes(channel_groups.split_channel_groups(data, chosen)[0])
        estimate = fit.estimate(width, resolution, 10, 3, groups=True)
        assert estimate.activation_peak == analyse(path).peak_bytes, (width, resolution)
        assert estimate.arena_estimate >= measure_arena(path)["total"], (width, resolution)
