"""Spatial patches (MCUNetV2, Lin et al. 2021: patch-based inference) in builtin operators that stock
TFLite Micro runs.

The first operators of the graph, up to a cut whose output is small, run once per patch of a grid laid
over the cut tensor. A patch computes exactly the rows and columns of each tensor that its part of the
cut needs (the receptive field's halo included): it reads a STRIDED_SLICE of the image; each conv runs
VALID on a slice of its producer's patch, behind a PAD with the input's zero point where the patch meets
the tensor's border (the zeros SAME padding adds there); a residual ADD adds slices of both inputs. The
patches of the cut tensor are joined by CONCATENATION on width, then on height. Every value is computed
by the same int8 arithmetic from the same inputs, so the outputs are bit-identical; the halos are
computed by more than one patch: those are the extra MACs. Only one patch's tensors live at a time.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from edgekd.exporters.graph_edit import (
    RewriteError,
    activation_like,
    concatenation,
    constant_tensor,
    drop_unused_buffers,
    operator,
)
from edgekd.exporters.tflite import builtin_code, drop_unused_tensors, flatbuffer_schema, pack

MAX_PATCHES_PER_AXIS = 10  # each CONCATENATION joins at most 10 tensors in TFLite Micro


@dataclass(frozen=True)
class Region:
    """Rows [top, bottom) and columns [left, right) of an NHWC tensor."""

    top: int
    bottom: int
    left: int
    right: int

    def union(self, other: Region | None) -> Region:
        if other is None:
            return self
        return Region(min(self.top, other.top), max(self.bottom, other.bottom),
                      min(self.left, other.left), max(self.right, other.right))  # fmt: skip


@dataclass(frozen=True)
class Window:
    """What a conv reads to write a region: the part of its input inside the tensor, and the rows and
    columns of padding beyond each border (top, bottom, left, right)."""

    region: Region
    pads: tuple[int, int, int, int]


def _spatial_codes() -> dict[int, str]:
    ops = flatbuffer_schema().BuiltinOperator
    return {ops.CONV_2D: "conv", ops.DEPTHWISE_CONV_2D: "conv", ops.ADD: "add"}


def cut_points(data: bytes) -> list[int]:
    """Operators the graph can be cut after: every operator up to it is a conv, a depthwise conv (dilation 1)
    or an ADD of two tensors of one shape, and nothing after it reads any tensor of that prefix but its output."""
    model = flatbuffer_schema().ModelT.InitFromPackedBuf(data, 0)
    graph = model.subgraphs[0]
    kinds = _spatial_codes()
    last_reader: dict[int, int] = {}
    for index, op in enumerate(graph.operators):
        for tensor in op.inputs:
            last_reader[int(tensor)] = index
    graph_outputs = {int(t) for t in graph.outputs}
    points, produced = [], {int(t) for t in graph.inputs}
    for index, op in enumerate(graph.operators):
        if not _patchable(model, op, kinds.get(builtin_code(model, op))):
            break
        produced.add(int(op.outputs[0]))
        output = int(op.outputs[0])
        if output not in graph_outputs and all(last_reader.get(t, -1) <= index for t in produced - {output}):
            points.append(index)
    return points


def _patchable(model, op, kind: str | None) -> bool:
    graph = model.subgraphs[0]
    if kind == "conv":
        options = op.builtinOptions
        return options.dilationHFactor == 1 and options.dilationWFactor == 1
    if kind == "add":  # of two activations of the output's shape (no broadcast, no constant)
        tensors = [graph.tensors[int(t)] for t in list(op.inputs) + list(op.outputs)]
        constant = any(model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data) for t in tensors)
        return len(op.inputs) == 2 and len({tuple(t.shape) for t in tensors}) == 1 and not constant
    return False


def grid_regions(height: int, width: int, grid: tuple[int, int]) -> list[list[Region]]:
    """The cut tensor in rows × columns patches of near-equal size."""
    rows, columns = grid
    if not (1 <= rows <= min(height, MAX_PATCHES_PER_AXIS) and 1 <= columns <= min(width, MAX_PATCHES_PER_AXIS)) or (
        rows * columns == 1
    ):
        raise RewriteError(
            f"export.memory_grid: {rows}x{columns} patches do not fit a {height}×{width} cut "
            f"(at most {min(height, MAX_PATCHES_PER_AXIS)}x{min(width, MAX_PATCHES_PER_AXIS)}, more than one patch)"
        )

    def bounds(size: int, parts: int) -> list[tuple[int, int]]:
        edges = [round(i * size / parts) for i in range(parts + 1)]
        return list(zip(edges[:-1], edges[1:], strict=True))

    return [[Region(top, bottom, left, right) for left, right in bounds(width, columns)]
            for top, bottom in bounds(height, rows)]  # fmt: skip


def _input_window(graph, op, out: Region) -> Window:
    """The input a conv reads for output `out`: TFLite's SAME pads (total = (out−1)·stride + kernel − in)
    with the smaller half before."""
    options = op.builtinOptions
    source, weights = graph.tensors[int(op.inputs[0])], graph.tensors[int(op.inputs[1])]
    result = graph.tensors[int(op.outputs[0])]
    same = options.padding == flatbuffer_schema().Padding.SAME
    spans = []
    for axis, (start, stop), stride in ((1, (out.top, out.bottom), options.strideH),
                                        (2, (out.left, out.right), options.strideW)):  # fmt: skip
        size_in, size_out, kernel = int(source.shape[axis]), int(result.shape[axis]), int(weights.shape[axis])
        before = max((size_out - 1) * stride + kernel - size_in, 0) // 2 if same else 0
        first, last = start * stride - before, (stop - 1) * stride - before + kernel
        spans.append((max(first, 0), min(last, size_in), max(-first, 0), max(last - size_in, 0)))
    (top, bottom, pad_top, pad_bottom), (left, right, pad_left, pad_right) = spans
    return Window(Region(top, bottom, left, right), (pad_top, pad_bottom, pad_left, pad_right))


def _needs(graph, kinds: list[str], cut: int, out: Region) -> tuple[dict[int, Region], dict[int, Window]]:
    """Backwards from the cut: the region of each tensor this patch computes (the union of what its readers
    need), and each conv's window."""
    needed: dict[int, Region] = {int(graph.operators[cut].outputs[0]): out}
    windows: dict[int, Window] = {}
    for index in range(cut, -1, -1):
        op = graph.operators[index]
        region = needed.get(int(op.outputs[0]))
        if region is None:
            continue  # nothing this patch needs
        if kinds[index] == "conv":
            windows[index] = _input_window(graph, op, region)
            reads = {int(op.inputs[0]): windows[index].region}
        else:
            reads = {int(t): region for t in op.inputs}
        for tensor, part in reads.items():
            needed[tensor] = part.union(needed.get(tensor))
    return needed, windows


def split_spatial_patches(data: bytes, cut: int, grid: tuple[int, int]) -> tuple[bytes, list[int]]:
    """The graph with operators 0…`cut` run per patch of a rows × columns grid over `cut`'s output; and for
    every operator of the new graph, the index of the operator it comes from in `data`."""
    points = cut_points(data)
    if cut not in points:
        raise RewriteError(
            f"export.memory_cut: the graph cannot be cut after operator {cut} "
            f"(cut points: {', '.join(map(str, points)) or 'none'})"
        )
    model = flatbuffer_schema().ModelT.InitFromPackedBuf(data, 0)
    graph = model.subgraphs[0]
    codes = _spatial_codes()
    kinds = [codes.get(builtin_code(model, op), "") for op in graph.operators]
    cut_tensor = int(graph.operators[cut].outputs[0])
    height, width = (int(d) for d in graph.tensors[cut_tensor].shape[1:3])
    emitted: list[tuple[object, int]] = []
    row_outputs = []
    for row in grid_regions(height, width, grid):
        patch_outputs = [_emit_patch(model, kinds, cut, region, emitted) for region in row]
        if len(patch_outputs) == 1:
            row_outputs.append(patch_outputs[0])
            continue
        joined = cut_tensor if grid[0] == 1 else _like(graph, cut_tensor, row[0].bottom - row[0].top, width, "/row")
        emitted.append((concatenation(model, patch_outputs, joined, axis=2), cut))
        row_outputs.append(joined)
    if len(row_outputs) > 1:  # else the one row's concatenation wrote the cut tensor
        emitted.append((concatenation(model, row_outputs, cut_tensor, axis=1), cut))
    after = graph.operators[cut + 1 :]
    graph.operators = [op for op, _ in emitted] + after
    origin = [source for _, source in emitted] + list(range(cut + 1, cut + 1 + len(after)))
    drop_unused_tensors(model)
    drop_unused_buffers(model)
    return pack(model), origin


def _like(graph, tensor: int, height: int, width: int, suffix: str) -> int:
    channels = int(graph.tensors[tensor].shape[3])
    return activation_like(graph, tensor, [1, height, width, channels], suffix)


def _emit_patch(model, kinds: list[str], cut: int, out: Region, emitted: list) -> int:
    """The operators of one patch, appended to `emitted` with their origins; returns the patch's cut tensor."""
    graph = model.subgraphs[0]
    needed, windows = _needs(graph, kinds, cut, out)
    source = int(graph.inputs[0])
    shape = graph.tensors[source].shape
    have = {source: (source, Region(0, int(shape[1]), 0, int(shape[2])))}  # original tensor → (patch tensor, region)
    tag = f"/p{out.top}_{out.left}"
    for index in range(cut + 1):
        op = graph.operators[index]
        output = int(op.outputs[0])
        if output not in needed:
            continue
        patch = copy.deepcopy(op)
        inputs = [int(t) for t in op.inputs]
        if kinds[index] == "conv":
            window = windows[index]
            reads = _sliced(model, have[inputs[0]], window.region, index, emitted, tag)
            if any(window.pads):
                reads = _padded(model, reads, window.pads, index, emitted, tag)
            inputs[0] = reads
            patch.builtinOptions.padding = flatbuffer_schema().Padding.VALID
        else:
            inputs = [_sliced(model, have[t], needed[output], index, emitted, tag) for t in inputs]
        region = needed[output]
        result = _like(graph, output, region.bottom - region.top, region.right - region.left, tag)
        patch.inputs, patch.outputs = np.array(inputs, dtype=np.int32), np.array([result], dtype=np.int32)
        emitted.append((patch, index))
        have[output] = (result, region)
    return have[int(graph.operators[cut].outputs[0])][0]


def _sliced(model, held: tuple[int, Region], want: Region, origin: int, emitted: list, tag: str) -> int:
    """`want` of a tensor held as `held` (a tensor and the region it covers): itself, or a STRIDED_SLICE."""
    tensor, region = held
    if region == want:
        return tensor
    schema = flatbuffer_schema()
    graph = model.subgraphs[0]
    channels = int(graph.tensors[tensor].shape[3])
    begin = np.array([0, want.top - region.top, want.left - region.left, 0], dtype=np.int32)
    end = np.array([1, want.bottom - region.top, want.right - region.left, channels], dtype=np.int32)
    constants = [constant_tensor(model, v, f"slice{tag}".encode()) for v in (begin, end, np.ones(4, np.int32))]
    result = _like(graph, tensor, want.bottom - want.top, want.right - want.left, "/slice")
    options = schema.StridedSliceOptionsT()
    emitted.append((operator(model, schema.BuiltinOperator.STRIDED_SLICE, [tensor, *constants], [result],
                             schema.BuiltinOptions.StridedSliceOptions, options), origin))  # fmt: skip
    return result


def _padded(model, tensor: int, pads: tuple[int, int, int, int], origin: int, emitted: list, tag: str) -> int:
    """PAD with the tensor's zero point (TFLite Micro's int8 PAD pads with the output's zero point, and the
    output shares the input's quantisation): the zeros a SAME conv adds at the border."""
    schema = flatbuffer_schema()
    graph = model.subgraphs[0]
    top, bottom, left, right = pads
    paddings = np.array([[0, 0], [top, bottom], [left, right], [0, 0]], dtype=np.int32)
    shape = graph.tensors[tensor].shape
    result = _like(graph, tensor, int(shape[1]) + top + bottom, int(shape[2]) + left + right, "/pad")
    constant = constant_tensor(model, paddings, f"pad{tag}".encode())
    emitted.append((operator(model, schema.BuiltinOperator.PAD, [tensor, constant], [result],
                             schema.BuiltinOptions.PadOptions, schema.PadOptionsT()), origin))  # fmt: skip
    return result
