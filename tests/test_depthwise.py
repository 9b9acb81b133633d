"""Depthwise weight gradients tap by tap (edgekd.depthwise): the same gradients as the library's, in place
only for training steps and only in the layers whose timings chose them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgekd import depthwise
from edgekd.depthwise import DepthwiseTaps, depthwise_layers, time_weight_gradients
from edgekd.models import create_model


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "size", "bias", "channels_last"),
    [
        (3, 1, 1, 1, (1, 1), False, False),  # a MobileNetV2's last stage at 32 px: only the centre tap sees a pixel
        (3, 1, 1, 1, (2, 2), False, True),
        (3, 2, 1, 1, (3, 4), True, False),
        (5, 1, 2, 1, (2, 3), False, True),
        (5, 2, 2, 1, (7, 7), True, False),
        (3, 1, 2, 2, (4, 5), True, True),
        (3, 2, 0, 1, (5, 5), False, False),
    ],
)
def test_the_taps_give_the_library_gradients(kernel, stride, padding, dilation, size, bias, channels_last):
    """Forward and input gradient are the library's own, bit for bit; the weight (and bias) gradient is the
    same sum in another order."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(4, 6, *size, dtype=torch.float64).contiguous(memory_format=memory_format).requires_grad_()
    weight = torch.randn(6, 1, kernel, kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True) if bias else None
    inputs = [x, weight] + ([b] if bias else [])
    library = F.conv2d(x, weight, b, stride, padding, dilation, 6)
    grad = torch.randn_like(library)
    expected = torch.autograd.grad(library, inputs, grad)
    geometry = ((stride,) * 2, (padding,) * 2, (dilation,) * 2)
    taps = depthwise._TapsWeightGradient.apply(x, weight, b, *geometry)
    found = torch.autograd.grad(taps, inputs, grad)
    assert torch.equal(taps, library) and torch.equal(found[0], expected[0])
    for name, want, got in zip(("weight", "bias")[: len(expected) - 1], expected[1:], found[1:], strict=True):
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12), name


def test_the_taps_are_in_place_only_inside_with_and_only_where_timed_faster():
    torch.manual_seed(0)
    model = create_model("mobilenetv2_tiny", num_classes=4, in_chans=1).train()
    images = torch.randn(8, 1, 32, 32)
    layers = depthwise_layers(model, images)
    assert len(layers) == 17 and model.training, "MobileNetV2's 17 depthwise layers, found without a mode change"
    padded = [shape for module, shape in layers.items() if type(module).__name__ == "Conv2dSame"]
    assert padded and all(s.padding == (0, 0) and s.height % 2 for s in padded), "timm's 'same' pads (odd here) first"
    # Timings as a machine might give them: the library slow below 3×3 inputs, one shape not faster by 2×.
    timings = {shape: (5.0, 1.0) if shape.height < 3 else (1.0, 5.0) for shape in layers.values()}
    undecided = next(shape for shape in layers.values() if shape.height >= 3)
    timings[undecided] = (1.5, 1.0)
    choice = DepthwiseTaps(layers, timings)
    small = [module for module, shape in layers.items() if shape.height < 3]
    assert choice.modules == small and small
    assert f"tap by tap in {len(small)} of 17 depthwise layers (inputs 2×2, 1×1)" in choice.describe()

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        F.cross_entropy(model(images), torch.arange(8) % 4).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    calls = []
    original = depthwise.taps_weight_gradient

    def counted(*args):
        calls.append(args[2])
        return original(*args)

    library = gradients()
    depthwise.taps_weight_gradient = counted
    try:
        with choice:
            assert all("forward" in module.__dict__ for module in small)
            tapped = gradients()
    finally:
        depthwise.taps_weight_gradient = original
    assert len(calls) == len(small)
    assert not any("forward" in module.__dict__ for module in model.modules()), "the library's forward is back"
    for name, value in library.items():
        assert torch.allclose(tapped[name], value, rtol=1e-4, atol=1e-6), name
    with torch.no_grad(), choice:  # evaluation inside the block still runs the library's convolution
        assert torch.equal(model.eval()(images), model(images))


def test_timings_are_measured_once_per_machine(tmp_path):
    model = create_model("mobilenetv2_tiny", num_classes=4, in_chans=1)
    shapes = list(depthwise_layers(model, torch.randn(4, 1, 32, 32)).values())
    cache = tmp_path / "depthwise.json"
    first, cached = time_weight_gradients(shapes, rounds=1, cache=cache)
    assert not cached and set(first) == set(shapes) and all(a > 0 and b > 0 for a, b in first.values())
    again, cached = time_weight_gradients(shapes, rounds=1, cache=cache)
    assert cached and again == first
    _, cached = time_weight_gradients(depthwise_layers(model, torch.randn(2, 1, 32, 32)).values(), cache=cache)
    assert not cached, "another batch is measured anew"


def test_training_takes_the_chosen_taps_and_leaves_the_model_as_it_was(tmp_path, monkeypatch):
    """train_stage puts the chosen taps in place for its steps only: the student comes back with the
    library's forward (what export traces), and the memory format was timed with the taps in place."""
    from rich.console import Console

    from edgekd import train
    from edgekd.data import load_data
    from edgekd.datasets.synthetic import SyntheticConfig
    from edgekd.methods.plain import Plain
    from edgekd.recipe import TrainConfig
    from edgekd.runtime import Runtime
    from edgekd.train import MetricsLog, StageOptions, train_stage

    def always_taps(shapes):
        return {shape: (5.0, 1.0) for shape in shapes}, False

    calls = []
    original = depthwise.taps_weight_gradient
    monkeypatch.setattr(train, "time_weight_gradients", always_taps)
    monkeypatch.setattr(depthwise, "taps_weight_gradient", lambda *args: calls.append(1) or original(*args))
    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    config = SyntheticConfig(
        dataset="synthetic", image_size=32, channels=1, synthetic={"num_classes": 4, "samples_per_class": 8}
    )
    data = load_data(config, seed=0)
    student = create_model("mobilenetv2_tiny", num_classes=4, in_chans=1)
    console = Console(record=True, width=200)
    options = StageOptions(seed=0, batch_size=16, workers=0, checkpoint=tmp_path / "student.pt",
                           metrics=MetricsLog(tmp_path / "metrics.csv"), console=console)  # fmt: skip
    runtime = Runtime.from_recipe("cpu", "auto", False)
    train_stage("student", Plain(student), TrainConfig(epochs=1, lr=0.01), data, runtime, options)
    log = console.export_text()
    assert "depthwise weight gradients tap by tap in 17 of 17 depthwise layers" in log
    assert len(calls) >= 17 * 2, "every depthwise layer, in the timed steps and in training"
    assert not any("forward" in module.__dict__ for module in student.modules())
    assert any("depthwise taps 17" in key for key in (tmp_path / "cache" / "memory_format.json").read_text().split('"'))
