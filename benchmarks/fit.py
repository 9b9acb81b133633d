"""`edgekd fit`: which MobileNetV2-Tiny width × input resolution fits a device, found analytically.

For each candidate the int8 TFLite graph edgekd would export is simulated from the timm model: op
order, tensor shapes, and which tensors are live (a residual block's input stays live until its ADD;
BatchNorm and ReLU6 fold into the convs). That gives the activation peak exactly as the static
analysis of the exported file does, in milliseconds instead of a conversion. Flash and TFLite-Micro's
persistent "tail" are bounded from the layer sizes (see the constants below, and `tests/test_fit.py`,
which checks that every estimate is at least what a real export needs).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from torch import nn

from edgekd.benchmarks.memory import aligned, analyse
from edgekd.benchmarks.profiles import Budget
from edgekd.exporters import tflite
from edgekd.exporters.channel_groups import MAX_GROUPS, channel_slices
from edgekd.exporters.runtimes import measure_arena
from edgekd.models import count_macs, create_model

WIDTHS = (0.35, 0.5, 0.75, 1.0)
# Both estimates are upper bounds of what an exported int8 MobileNetV2-Tiny needs, over the whole grid
# `search` proposes (tests/test_fit.py exports every corner of it, widths 0.35-1.0 × 64-224 px × 1 and 3
# channels × 10 and 1000 classes, with weights that share no buffers, as trained ones do):
# - TFLite-Micro's persistent "tail" (x86-64, itself above the 32-bit MCU's): 8 B per output channel of
#   every conv/FC (requantisation multiplier and shift) plus a fixed part; its greedy planner can use more
#   than the activation bound (6.7 % at width 0.5, 96 px): allow 10 %.
# - flash: the int8 weights; per output channel an int32 bias, and the float32 scale and int64 zero point
#   of both weights and bias (28 B); per conv/FC layer its tensors' and operator's structure (~510 B
#   measured); and the flatbuffer's fixed part.
TAIL_PER_CHANNEL = 8
TAIL_FIXED = 15_456
PLANNER_ALLOWANCE = 1.10
# Each operator a memory rewrite adds brings its node, its output tensor and its kernel's state to the
# tail: 230 B measured (MobileNetV2-Tiny at 144 px, one block in 3 groups: 5 ops, +1,152 B); allow 400.
TAIL_PER_ADDED_OP = 400
FLASH_PER_CHANNEL = 28
FLASH_PER_LAYER = 540
FLASH_FIXED = 8_192


@dataclass
class Candidate:
    width: float
    resolution: int
    macs: int
    parameters: int
    activation_peak: int
    arena_estimate: int
    flash_estimate: int
    added_ops: int = 0  # operators the memory rewrite (channel groups) adds to reach activation_peak

    def fits(self, budget: Budget) -> bool:
        return self.arena_estimate <= budget.sram_bytes and self.flash_estimate <= budget.flash_bytes

    def recipe_block(self, in_chans: int) -> str:
        """The recipe keys that train this configuration, to paste into a recipe."""
        return (
            f"data:\n  image_size: {self.resolution}\n  channels: {in_chans}\n"
            f"student:\n  model: mobilenetv2_tiny\n  kwargs: {{width: {self.width}}}\n"
        )


def _conv_output_shapes(model: nn.Module, in_chans: int, resolution: int) -> dict[nn.Module, tuple[int, ...]]:
    shapes: dict[nn.Module, tuple[int, ...]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, _i, out: shapes.__setitem__(mod, tuple(out.shape)))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, in_chans, resolution, resolution))
    for hook in hooks:
        hook.remove()
    return shapes


class Simulated(NamedTuple):
    peak: int  # activation bytes
    live_per_op: list[int]
    macs: int
    added_ops: int  # by the memory rewrite


def simulate(model: nn.Module, in_chans: int, resolution: int, groups: bool = False) -> Simulated:
    """The int8 graph's activation peak, live bytes per op and MACs; with `groups`, of the graph the
    export's channel-groups search ends at: the lowest peak groups reach, with each inverted residual
    block whose peak is above it in the fewest groups that bring it down (the others as they are)."""
    shapes = _conv_output_shapes(model, in_chans, resolution)

    def size(module: nn.Module) -> int:
        return aligned(int(torch.tensor(shapes[module]).prod()))

    segments: list[list[list[int]]] = []  # per op or block: the live bytes of each way to run it

    def op(*tensors: int) -> None:
        segments.append([[sum(tensors)]])

    x = aligned(in_chans * resolution * resolution)
    stem = size(model.conv_stem)
    op(x, stem)
    x = stem
    for block in (b for stage in model.blocks for b in stage):
        skip = x if block.has_skip else 0
        if isinstance(block, DepthwiseSeparableConv):
            dw, pw = size(block.conv_dw), size(block.conv_pw)
            op(x, dw)
            op(skip, dw, pw)
            y = pw
        elif isinstance(block, InvertedResidual):
            expand, dw, project = size(block.conv_pw), size(block.conv_dw), size(block.conv_pwl)
            options = [[x + expand, skip + expand + dw, skip + dw + project]]
            if groups:
                options += [_grouped_block(x, skip, shapes, block, count) + [skip + dw + project]
                            for count in range(2, min(block.conv_dw.out_channels, MAX_GROUPS) + 1)]  # fmt: skip
            segments.append(options)
            y = project
        else:
            raise ValueError(f"fit models MobileNetV2 blocks only, not {type(block).__name__}")
        if skip:
            op(skip, y, y)  # ADD writes a new tensor while both inputs are live
        x = y
    head = size(model.conv_head)
    op(x, head)
    pooled = aligned(shapes[model.conv_head][1])
    op(head, pooled)
    op(pooled, size(model.classifier))
    peak = max(min(max(option) for option in options) for options in segments)
    chosen = [next(option for option in options if max(option) <= peak) for options in segments]
    added_ops = sum(len(option) - len(options[0]) for option, options in zip(chosen, segments, strict=True))
    return Simulated(peak, [live for option in chosen for live in option], count_macs(model, in_chans, resolution),
                     added_ops)  # fmt: skip


def _grouped_block(x: int, skip: int, shapes: dict, block: InvertedResidual, groups: int) -> list[int]:
    """Live bytes of each op of an inverted residual's expand conv and depthwise in channel groups, and of
    the CONCATENATION after them (see edgekd.exporters.channel_groups)."""
    expand_shape, dw_shape = shapes[block.conv_pw], shapes[block.conv_dw]
    live, done = [], 0
    slices = channel_slices(dw_shape[1], groups)
    for index, (start, stop) in enumerate(slices):
        expand = aligned(int(torch.tensor(expand_shape[2:]).prod()) * (stop - start))
        dw = aligned(int(torch.tensor(dw_shape[2:]).prod()) * (stop - start))
        source = x if index < len(slices) - 1 else skip  # the block input: until the last group's conv
        live += [x + done + expand, source + done + expand + dw]
        done += dw
    whole = aligned(int(torch.tensor(dw_shape).prod()))
    return [*live, skip + done + whole]


def estimate(
    width: float,
    resolution: int,
    num_classes: int,
    in_chans: int,
    model: nn.Module | None = None,
    groups: bool = False,
) -> Candidate:
    model = model or create_model(
        "mobilenetv2_tiny", num_classes=num_classes, in_chans=in_chans, kwargs={"width": width}
    )
    peak, _, macs, added_ops = simulate(model, in_chans, resolution, groups)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    channels = sum(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for m in layers)
    weights = sum(m.weight.numel() for m in layers)
    tail = TAIL_FIXED + TAIL_PER_CHANNEL * channels + TAIL_PER_ADDED_OP * added_ops
    flash = FLASH_FIXED + weights + FLASH_PER_CHANNEL * channels + FLASH_PER_LAYER * (len(layers) + added_ops)
    return Candidate(
        width=width,
        resolution=resolution,
        macs=macs,
        parameters=sum(p.numel() for p in model.parameters()),
        activation_peak=peak,
        arena_estimate=int(PLANNER_ALLOWANCE * peak) + tail,
        flash_estimate=flash,
        added_ops=added_ops,
    )


def search(
    budget: Budget,
    *,
    num_classes: int,
    in_chans: int = 3,
    min_resolution: int = 64,
    max_resolution: int = 224,
    step: int = 16,
    widths: tuple[float, ...] = WIDTHS,
    groups: bool = True,
) -> list[Candidate]:
    """Every width × resolution that fits, best first (most MACs: the proxy for accuracy); with `groups`,
    counting on the export's channel-groups rewrite where the arena needs it (`export.memory: auto`)."""
    fitting = []
    for width in widths:
        model = create_model("mobilenetv2_tiny", num_classes=num_classes, in_chans=in_chans, kwargs={"width": width})
        for resolution in range(min_resolution, max_resolution + 1, step):
            candidate = estimate(width, resolution, num_classes, in_chans, model)
            if groups and not candidate.fits(budget):
                candidate = estimate(width, resolution, num_classes, in_chans, model, groups=True)
            if not candidate.fits(budget):
                break  # larger inputs only need more memory
            fitting.append(candidate)
    return sorted(fitting, key=lambda c: c.macs, reverse=True)


def student_like_trained(width: float, num_classes: int, in_chans: int, seed: int = 0) -> nn.Module:
    """An untrained MobileNetV2-Tiny whose exported weights share no buffers, as a trained student's
    don't: with BatchNorm at its initial values every bias is zero, the converter stores one zero bias
    for many layers, and the file comes out ~20 KB smaller than a trained student's."""
    torch.manual_seed(seed)
    model = create_model("mobilenetv2_tiny", num_classes=num_classes, in_chans=in_chans, kwargs={"width": width})
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
            elif isinstance(module, nn.Linear):
                module.bias.uniform_(-0.5, 0.5)
    return model.eval()


class Measured(NamedTuple):
    flash: int  # flatbuffer bytes
    arena: int  # TFLite-Micro's arena on x86-64
    activation_peak: int  # the static analysis of the file (what `simulate` predicts exactly)


def measure_export(width: float, resolution: int, in_chans: int, num_classes: int) -> Measured:
    """What the int8 export of `student_like_trained` needs."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.tflite"
        model = student_like_trained(width, num_classes, in_chans)
        tflite.convert(model, torch.randn(2, in_chans, resolution, resolution), path, int8=True)
        return Measured(path.stat().st_size, measure_arena(path)["total"], analyse(path).peak_bytes)
