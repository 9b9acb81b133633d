"""The weight gradient of small depthwise convolutions on the CPU, computed tap by tap where that is
measured to be much faster than the library's.

oneDNN's depthwise kernel computes weight gradients only for some shapes (on an AMD EPYC with AVX2: 3×3
kernels whose input is at least 3×3 at stride 1 or 4×4 at stride 2; no 5×5 kernel). Elsewhere it falls
back to a GEMM per channel, whose cost is per channel, not per pixel: the 2×2 and 1×1 stages of a
MobileNetV2 at 32 px took 3–9 ms each for work of microseconds, over a third of a distillation step
(benchmarks/RESULTS.md, "depthwise weight gradients"). Summed tap by tap in channels-last order the same
gradients cost 0.4–2 ms. Which path oneDNN takes depends on its CPU kernels, so each layer shape is timed
both ways once, as `channels_last: auto` times the memory formats, and the taps are used only where they
are at least twice as fast; the answer is kept in edgekd's cache, so a machine makes the same choice
every run.

The forward pass and the input gradient stay the library's, bit for bit; the weight gradient is the same
sum in another order (it differs in the last bits). Only training steps on the CPU use it: evaluation,
export and CUDA run the library's convolution.
"""

from __future__ import annotations

import statistics
import time
import types
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from timm.layers.padding import pad_same
from torch import nn

from edgekd.cache import cache_dir, cpu_name, read_choices, write_choices

FASTER_BY = 2.0  # the taps must beat the library by this factor: a choice that timing noise cannot flip


def is_depthwise(module: nn.Module) -> bool:
    """A depthwise convolution whose forward is torch's own or timm's TF-"same"-padded one (which pads,
    then convolves without padding): others may do more in their forward, so they keep it."""
    return (
        (type(module).forward is nn.Conv2d.forward or isinstance(module, Conv2dSame))
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


class _TapsWeightGradient(torch.autograd.Function):
    """A depthwise convolution whose backward takes the input (and bias) gradient from the library and
    sums the weight gradient tap by tap."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation, bias is not None)
        return F.conv2d(x, weight, bias, stride, padding, dilation, weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, has_bias = ctx.geometry
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0] or (has_bias and ctx.needs_input_grad[2]):
            grad_x, _, grad_bias = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if has_bias else None, stride, padding, dilation, False, [0, 0],
                weight.shape[0], [ctx.needs_input_grad[0], False, has_bias and ctx.needs_input_grad[2]],
            )  # fmt: skip
        grad_weight = taps_weight_gradient(x, grad, weight.shape, stride, padding, dilation)
        return grad_x, grad_weight, grad_bias, None, None, None


def taps_weight_gradient(
    x: torch.Tensor, grad: torch.Tensor, weight_shape: torch.Size, stride, padding, dilation
) -> torch.Tensor:
    """∂loss/∂weight of a depthwise convolution: for each kernel tap, the sum over images and output
    positions of the output gradient times the input pixel that tap saw. In channels-last order each tap is
    one product and one sum over contiguous channel vectors; taps that see only padding are zero."""
    channels, _, kernel_h, kernel_w = weight_shape
    out_h, out_w = grad.shape[2:]
    (stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w) = stride, padding, dilation
    padded = F.pad(x, (pad_w, pad_w, pad_h, pad_h)).permute(0, 2, 3, 1).contiguous()
    grad = grad.permute(0, 2, 3, 1).contiguous()
    weight_grad = x.new_zeros(channels, kernel_h, kernel_w)

    def sees_pixels(first: int, step: int, count: int, pad: int, size: int) -> bool:
        return any(pad <= first + step * k < pad + size for k in range(count))

    for i in range(kernel_h):
        if not sees_pixels(i * dilation_h, stride_h, out_h, pad_h, x.shape[2]):
            continue
        rows = slice(i * dilation_h, i * dilation_h + stride_h * (out_h - 1) + 1, stride_h)
        for j in range(kernel_w):
            if not sees_pixels(j * dilation_w, stride_w, out_w, pad_w, x.shape[3]):
                continue
            columns = slice(j * dilation_w, j * dilation_w + stride_w * (out_w - 1) + 1, stride_w)
            weight_grad[:, i, j] = (padded[:, rows, columns, :] * grad).reshape(-1, channels).sum(0)
    return weight_grad.view(weight_shape)


def _convolved(module: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """(what the convolution itself sees, its padding): timm's Conv2dSame pads first, then pads no more."""
    if isinstance(module, Conv2dSame):
        return pad_same(x, module.kernel_size, module.stride, module.dilation), (0, 0)
    return x, module.padding


def _forward_with_taps(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and self.weight.requires_grad and not torch.compiler.is_compiling():
        x, padding = _convolved(self, x)
        return _TapsWeightGradient.apply(x, self.weight, self.bias, self.stride, padding, self.dilation)
    return type(self).forward(self, x)


# ---------------------------------------------------------------- the choice


@dataclass(frozen=True)
class LayerShape:
    """What decides a depthwise layer's backward cost: its input and its geometry."""

    batch: int
    channels: int
    height: int
    width: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]


@dataclass
class DepthwiseTaps:
    """A model's depthwise layers, the timings of their shapes, and so the layers whose weight gradient is
    summed tap by tap. `with choice:` puts the taps in place (for training steps) and takes them out."""

    layers: dict[nn.Conv2d, LayerShape]
    timings: dict[LayerShape, tuple[float, float]]  # ms per weight gradient: (library, taps)
    cached: bool = False  # measured by an earlier run on this machine

    @property
    def modules(self) -> list[nn.Conv2d]:
        chosen = self.chosen()
        return [module for module, shape in self.layers.items() if shape in chosen]

    def chosen(self) -> set[LayerShape]:
        return {shape for shape, (library, taps) in self.timings.items() if taps * FASTER_BY <= library}

    def __enter__(self) -> DepthwiseTaps:
        for module in self.modules:
            module.forward = types.MethodType(_forward_with_taps, module)
        return self

    def __exit__(self, *exc) -> None:
        for module in self.layers:
            module.__dict__.pop("forward", None)

    def variant(self) -> str:
        """What the taps change in a timed step (for the memory format's cache key)."""
        return f"depthwise taps {len(self.modules)}" if self.modules else ""

    def describe(self) -> str:
        chosen = [shape for shape in self.layers.values() if shape in self.chosen()]
        if not chosen:
            return f"depthwise weight gradients: the library's for all {len(self.layers)} depthwise layers"
        library, taps = (sum(self.timings[shape][k] for shape in chosen) for k in (0, 1))
        when = "measured earlier on this machine" if self.cached else "measured now"
        inputs = ", ".join(dict.fromkeys(f"{shape.height}×{shape.width}" for shape in chosen))
        return (
            f"depthwise weight gradients tap by tap in {len(chosen)} of {len(self.layers)} depthwise layers "
            f"(inputs {inputs}): {taps:.1f} ms per step against {library:.1f} ms in the library ({when})"
        )


def depthwise_layers(model: nn.Module, images: torch.Tensor) -> dict[nn.Conv2d, LayerShape]:
    """`model`'s depthwise convolutions and the shapes of their inputs, from one forward pass of `images`."""
    shapes: dict[nn.Conv2d, LayerShape] = {}

    def record(module, inputs, _output):
        x, padding = _convolved(module, inputs[0])
        n, c, h, w = x.shape
        shapes[module] = LayerShape(n, c, h, w, module.kernel_size, module.stride, padding, module.dilation)

    hooks = [m.register_forward_hook(record) for m in model.modules() if is_depthwise(m)]
    if hooks:
        was_training = model.training
        try:
            with torch.no_grad():
                model.eval()(images)
        finally:
            model.train(was_training)
            for hook in hooks:
                hook.remove()
    return shapes


def time_weight_gradients(
    shapes: Iterable[LayerShape], *, rounds: int = 5, cache: Path | None = None
) -> tuple[dict[LayerShape, tuple[float, float]], bool]:
    """({shape: (library ms, taps ms)}, whether all came from the cache): each shape's weight gradient
    timed both ways, once per machine (the cache is keyed by CPU, torch, threads and shape)."""
    cache = cache if cache is not None else cache_dir() / "depthwise.json"
    known = read_choices(cache)
    prefix = f"{cpu_name()}|torch {torch.__version__}|{torch.get_num_threads()} threads|"
    timings, measured = {}, False
    for shape in dict.fromkeys(shapes):
        key = prefix + repr(shape)
        if key not in known:
            known[key] = [round(ms, 4) for ms in _time_both(shape, rounds)]
            measured = True
        timings[shape] = tuple(known[key])
    if measured:
        write_choices(cache, known)
    return timings, not measured


def choose_depthwise_taps(model: nn.Module, images: torch.Tensor, *, cache: Path | None = None) -> DepthwiseTaps:
    """The layers of `model` (on the CPU, float32) whose weight gradients are at least FASTER_BY faster
    tap by tap; on other devices, none."""
    if images.device.type != "cpu":
        return DepthwiseTaps({}, {})
    layers = depthwise_layers(model, images)
    return DepthwiseTaps(layers, *time_weight_gradients(layers.values(), cache=cache))


def _time_both(shape: LayerShape, rounds: int) -> tuple[float, float]:
    """(library, taps): median milliseconds of one weight gradient, alternating the two, after a warm-up."""
    x = torch.randn(shape.batch, shape.channels, shape.height, shape.width)
    weight = torch.randn(shape.channels, 1, *shape.kernel)
    grad = torch.randn_like(F.conv2d(x, weight, None, shape.stride, shape.padding, shape.dilation, shape.channels))

    def library():
        torch.ops.aten.convolution_backward(grad, x, weight, None, shape.stride, shape.padding, shape.dilation,
                                            False, [0, 0], shape.channels, [False, True, False])  # fmt: skip

    def taps():
        taps_weight_gradient(x, grad, weight.shape, shape.stride, shape.padding, shape.dilation)

    times: dict[str, list[float]] = {"library": [], "taps": []}
    for round_ in range(rounds + 1):
        for name, run in (("library", library), ("taps", taps)):
            started = time.perf_counter()
            run()
            if round_:  # round 0 warms up
                times[name].append(1000 * (time.perf_counter() - started))
    return statistics.median(times["library"]), statistics.median(times["taps"])
