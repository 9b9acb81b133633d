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


def export(width, resolution, classes, path):
    torch.manual_seed(0)
    model = create_model("mobilenetv2_tiny", num_classes=classes, in_chans=3, kwargs={"width": width}).eval()
    with torch.no_grad():  # no all-zero branch the converter could prune
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
    tflite.convert(model, torch.randn(4, 3, resolution, resolution), path, int8=True)
    return model


def test_simulated_peak_of_the_reference_model():
    """MobileNetV2-Tiny int8 at 144×144 (MCUNet's reference): ~304 kB of activations, so not 256 kB."""
    candidate = fit.estimate(0.35, 144, 1000, 3)
    assert candidate.activation_peak == 311_040  # = TFLite-Micro's head for the exported model
    assert candidate.parameters == pytest.approx(0.75e6, rel=0.02)
    assert not candidate.fits(parse_budget(None, load_device("256k-1m")))


@pytest.mark.slow
def test_fit_never_proposes_what_does_not_fit(tmp_path):
    budget = parse_budget(None, load_device("256k-1m"))
    proposals = fit.search(budget, num_classes=10, in_chans=3)
    assert proposals and all(c.fits(budget) for c in proposals)
    best = proposals[0]
    model = export(best.width, best.resolution, 10, tmp_path / "best.tflite")
    arena = measure_arena(tmp_path / "best.tflite")
    assert arena["total"] <= budget.sram_bytes
    assert (tmp_path / "best.tflite").stat().st_size <= budget.flash_bytes
    # The estimates bound what the export needs, and the activation model is exact.
    peak, _, _ = fit.simulate(model, 3, best.resolution)
    assert peak == analyse(tmp_path / "best.tflite").peak_bytes
    assert best.arena_estimate >= arena["total"]
    assert best.flash_estimate == pytest.approx((tmp_path / "best.tflite").stat().st_size, rel=0.03)


def test_fit_cli_prints_a_recipe_block(capsys, monkeypatch):
    monkeypatch.setattr(
        sys, "argv", ["edgekd", "fit", "--device", "stm32h743", "--classes", "10", "--min-resolution", "128"]
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "model: mobilenetv2_tiny" in out and "kwargs: {width:" in out and "image_size:" in out
