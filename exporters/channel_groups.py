"""Channel groups (no extra MACs): a conv whose output only a depthwise conv reads (MobileNetV2's
expand 1×1 conv and its 3×3 depthwise) is computed in G groups of channels, conv_1, depthwise_1, conv_2,
depthwise_2, …, then one CONCATENATION on channels gives the depthwise output the rest of the graph
reads. Each group's conv and depthwise use slices of the weights, the biases and the per-channel scales,
and every output channel of either op depends only on its own slice, so each value is computed by the
same int8 arithmetic: the outputs are bit-identical. Only 1/G of the wide tensor lives at a time; the
concatenation holds the depthwise output twice (its inputs and its output share one scale and zero
point, as TFLite Micro's int8 kernel requires).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from edgekd.benchmarks.memory import analyse
from edgekd.exporters.graph_edit import RewriteError, activation_like, concatenation, drop_unused_buffers, new_tensor
from edgekd.exporters.tflite import builtin_code, constant_values, drop_unused_tensors, flatbuffer_schema, pack

MAX_GROUPS = 10  # TFLite Micro's CONCATENATION takes at most 10 inputs


@dataclass(frozen=True)
class GroupSite:
    """A conv whose output only a depthwise conv (depth multiplier 1) reads: where channel groups apply."""

    conv: int  # operator index in the unrewritten graph
    depthwise: int
    channels: int
    name: str  # the depthwise output's tensor name, for the log


def group_sites(data: bytes) -> list[GroupSite]:
    schema = flatbuffer_schema()
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    graph = model.subgraphs[0]
    codes = [builtin_code(model, op) for op in graph.operators]
    readers: dict[int, list[int]] = {}
    for index, op in enumerate(graph.operators):
        for tensor in op.inputs:
            readers.setdefault(int(tensor), []).append(index)
    graph_io = {int(t) for t in list(graph.inputs) + list(graph.outputs)}
    sites = []
    for index, op in enumerate(graph.operators):
        wide = int(op.outputs[0])
        if codes[index] != schema.BuiltinOperator.CONV_2D or wide in graph_io:
            continue
        users = readers.get(wide, [])
        if len(users) != 1 or codes[users[0]] != schema.BuiltinOperator.DEPTHWISE_CONV_2D:
            continue
        depthwise = graph.operators[users[0]]
        if int(depthwise.inputs[0]) != wide or depthwise.builtinOptions.depthMultiplier != 1:
            continue
        if int(depthwise.outputs[0]) in graph_io:
            continue
        output = graph.tensors[int(depthwise.outputs[0])]
        sites.append(GroupSite(index, users[0], int(output.shape[-1]), (output.name or b"").decode(errors="replace")))
    return sites


def channel_slices(channels: int, groups: int) -> list[tuple[int, int]]:
    """[start, stop) of each group: near-equal, in multiples of 4 channels where the channels allow
    (CMSIS-NN's kernels work on 4 channels at a time)."""
    if not 2 <= groups <= min(channels, MAX_GROUPS):
        raise RewriteError(
            f"export.memory_groups: {groups} groups do not fit a layer of {channels} channels "
            f"(use 2 to {min(channels, MAX_GROUPS)})"
        )
    unit = 4 if channels % 4 == 0 and channels // 4 >= groups else 1
    units, extra = divmod(channels // unit, groups)
    bounds, start = [], 0
    for group in range(groups):
        stop = start + (units + (group < extra)) * unit
        bounds.append((start, stop))
        start = stop
    return bounds


def split_channel_groups(data: bytes, groups: dict[int, int]) -> tuple[bytes, list[int]]:
    """The graph with each site's conv (by operator index) → `groups[conv]` channel groups; and, for every
    operator of the new graph, the index of the operator it comes from in `data` (the concatenation
    counts as the depthwise's)."""
    schema = flatbuffer_schema()
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    graph = model.subgraphs[0]
    sites = {site.conv: site for site in group_sites(data)}
    unknown = sorted(set(groups) - set(sites))
    if unknown:
        raise RewriteError(f"operators {unknown} are not a conv that only a depthwise conv reads")
    replaced = {sites[conv].depthwise: conv for conv in groups}
    operators, origin = [], []
    for index, op in enumerate(graph.operators):
        if index in replaced:
            continue  # emitted with its conv
        if index not in groups:
            operators.append(op)
            origin.append(index)
            continue
        depthwise_index = sites[index].depthwise
        new_ops = _grouped(model, op, graph.operators[depthwise_index], groups[index])
        operators += new_ops
        origin += [index, depthwise_index] * groups[index] + [depthwise_index]
    graph.operators = operators
    drop_unused_tensors(model)
    drop_unused_buffers(model)
    return pack(model), origin


def _grouped(model, conv, depthwise, groups: int) -> list:
    """conv_1, depthwise_1, …, conv_G, depthwise_G, CONCATENATION (writing the depthwise's own output)."""
    graph = model.subgraphs[0]
    wide, narrow = graph.tensors[int(conv.outputs[0])], graph.tensors[int(depthwise.outputs[0])]
    operators, parts = [], []
    for start, stop in channel_slices(int(narrow.shape[-1]), groups):
        conv_part, depthwise_part = copy.deepcopy(conv), copy.deepcopy(depthwise)
        suffix = f"/c{stop - start}"
        wide_part = activation_like(graph, int(conv.outputs[0]), [*wide.shape[:-1], stop - start], suffix)
        narrow_part = activation_like(graph, int(depthwise.outputs[0]), [*narrow.shape[:-1], stop - start], suffix)
        conv_part.inputs = np.array(
            [int(conv.inputs[0]), _constant_slice(model, int(conv.inputs[1]), 0, start, stop)]
            + [_constant_slice(model, int(t), 0, start, stop) if t >= 0 else -1 for t in conv.inputs[2:]],
            dtype=np.int32,
        )
        conv_part.outputs = np.array([wide_part], dtype=np.int32)
        depthwise_part.inputs = np.array(
            [wide_part, _constant_slice(model, int(depthwise.inputs[1]), 3, start, stop)]
            + [_constant_slice(model, int(t), 0, start, stop) if t >= 0 else -1 for t in depthwise.inputs[2:]],
            dtype=np.int32,
        )
        depthwise_part.outputs = np.array([narrow_part], dtype=np.int32)
        operators += [conv_part, depthwise_part]
        parts.append(narrow_part)
    operators.append(concatenation(model, parts, int(depthwise.outputs[0]), axis=3))
    return operators


def _constant_slice(model, tensor_index: int, axis: int, start: int, stop: int) -> int:
    """A new constant tensor: channels [start, stop) along `axis` of a weight or bias, with their per-channel
    quantisation (per-tensor quantisation is kept as it is)."""
    schema = flatbuffer_schema()
    graph = model.subgraphs[0]
    tensor = graph.tensors[tensor_index]
    values = np.take(constant_values(model, tensor), range(start, stop), axis=axis)
    part = copy.deepcopy(tensor)
    part.shape = np.array(values.shape, dtype=np.int32)
    part.name = (tensor.name or b"") + f"/{start}:{stop}".encode()
    quantisation = part.quantization
    if quantisation is not None and quantisation.scale is not None and len(quantisation.scale) > 1:
        if quantisation.quantizedDimension != axis:
            raise RewriteError(f"tensor {tensor.name!r} is quantised per channel along another axis")
        quantisation.scale = quantisation.scale[start:stop]
        if quantisation.zeroPoint is not None and len(quantisation.zeroPoint) > 1:
            quantisation.zeroPoint = quantisation.zeroPoint[start:stop]
    buffer = schema.BufferT()
    buffer.data = np.ascontiguousarray(values).view(np.uint8).reshape(-1)
    model.buffers.append(buffer)
    part.buffer = len(model.buffers) - 1
    return new_tensor(graph, part)


def plan_groups(data: bytes, *, groups: int | None, target: int | None) -> dict[int, int]:
    """Channel groups, one block at a time, at the block that makes the activation peak, until the peak is
    at most `target` bytes (None: as low as groups bring it). At each block the fewest groups that reach
    the target (else the fewest that bring the lowest peak) are taken, or `groups` when it is given."""
    sites = {site.conv: site for site in group_sites(data)}
    by_op = {op: site for site in sites.values() for op in (site.conv, site.depthwise)}
    chosen: dict[int, int] = {}
    peak = analyse(data)
    origin = list(range(len(peak.layers)))  # operator of the current graph → operator of `data`
    while target is None or peak.peak_bytes > target:
        site = by_op.get(origin[peak.peak_layer])
        if site is None or site.conv in chosen:
            break  # the peak is not where groups apply
        counts = [groups] if groups is not None else range(2, min(site.channels, MAX_GROUPS) + 1)
        trials = []
        for count in counts:
            rewritten, new_origin = split_channel_groups(data, {**chosen, site.conv: count})
            trials.append((analyse(rewritten), count, rewritten, new_origin))
        reaching = [t for t in trials if target is not None and t[0].peak_bytes <= target]
        best = reaching[0] if reaching else min(trials, key=lambda t: (t[0].peak_bytes, t[1]))
        if best[0].peak_bytes >= peak.peak_bytes:
            break
        peak, chosen[site.conv], _, origin = best
    return chosen


def describe(data: bytes, site: GroupSite) -> str:
    """A block as the log names it: operators and shapes (the converter's tensor names repeat)."""
    model = flatbuffer_schema().ModelT.InitFromPackedBuf(data, 0)
    graph = model.subgraphs[0]

    def shape(op: int) -> str:
        return "×".join(str(int(d)) for d in graph.tensors[int(graph.operators[op].outputs[0])].shape[1:])

    return f"ops {site.conv}-{site.depthwise} ({shape(site.conv)} → {shape(site.depthwise)})"
