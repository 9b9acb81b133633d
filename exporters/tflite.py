"""TFLite via litert-torch: fp32 for reference, full-integer int8 (PT2E) for devices.

No standalone PAD ops. A student trained with TF-"SAME" padding (timm `pad_type="same"`, the default of
`mobilenetv2_tiny`) pads its stride-2 convs bottom/right only, as TFLite's SAME convs do; but PyTorch
can only express symmetric conv padding, so litert-torch would lower each one to PAD + VALID conv, and
the PAD's output sets the TFLite-Micro arena's peak. We therefore convert a proxy whose convs pad
symmetrically and whose k>1 kernels are rotated by 180°: on 180°-rotated images it computes exactly the
SAME student, rotated (so PT2E calibration sees the student's own activation ranges). The converted
graph is then rewritten: each PAD goes, its conv becomes SAME, and the int8 kernels are rotated back.
The result runs the trained student on upright images, with no PAD and no TRANSPOSE.
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import flatbuffers
import numpy as np
import torch
from timm.layers import Conv2dSame
from torch import nn

from edgekd.errors import EdgeKDError


class ConversionError(EdgeKDError):
    """The converter failed on this model."""


@contextmanager
def captured_output(log_path: Path | None = None) -> Iterator[dict]:
    """Send C-level and Python stdout/stderr to a file (the converter and TFLite-Micro print there)."""
    result: dict = {}
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(1), os.dup(2)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield result
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            result["text"] = sink.read().decode(errors="replace")
            if log_path is not None:
                with open(log_path, "a") as log:
                    log.write(result["text"])


# ---------------------------------------------------------------- the SAME-padding proxy


def _same_padding_convs(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, Conv2dSame)]


def can_fold_padding(model: nn.Module) -> bool:
    """True when every strided or spatial op pads SAME-style, so the rotation trick is exact."""
    if not _same_padding_convs(model):
        return False
    for module in model.modules():
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            return False
        if isinstance(module, nn.Conv2d) and not isinstance(module, Conv2dSame):
            k, stride, padding = module.kernel_size, module.stride, module.padding
            if max(k) > 1 and (max(stride) > 1 or padding != tuple(x // 2 for x in k)):
                return False
    return all(k % 2 == 1 for m in _same_padding_convs(model) for k in m.kernel_size)


def rotated_symmetric_proxy(model: nn.Module) -> nn.Module:
    """Same weights, symmetric padding, k>1 kernels rotated 180°: proxy(rot(x)) == rot-equivariant model(x)."""
    proxy = copy.deepcopy(model).eval()
    for parent in list(proxy.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv2dSame):
                conv = nn.Conv2d(
                    child.in_channels,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    padding=tuple(k // 2 for k in child.kernel_size),
                    dilation=child.dilation,
                    groups=child.groups,
                    bias=child.bias is not None,
                )
                conv.load_state_dict(child.state_dict())
                setattr(parent, name, conv)
    with torch.no_grad():
        for module in proxy.modules():
            if isinstance(module, nn.Conv2d) and max(module.kernel_size) > 1:
                module.weight.copy_(module.weight.flip(2, 3))
    return proxy


# ---------------------------------------------------------------- conversion


def convert(model: nn.Module, images: torch.Tensor, path: Path, *, int8: bool, log_path: Path | None = None) -> dict:
    """Write `model` (NCHW float in) as a TFLite file with NHWC input. With `int8`, `images` calibrate a
    full-integer model (int8 input and output, per-channel weights); otherwise the first one traces."""
    if len(images) == 0:
        raise ConversionError("conversion needs at least one image")
    model = model.eval()
    fold = can_fold_padding(model)
    source = rotated_symmetric_proxy(model) if fold else copy.deepcopy(model)
    sample = (_to_device_layout(images[:1], rotate=fold),)
    with tempfile.TemporaryDirectory() as scratch, captured_output(log_path):
        import litert_torch  # noqa: PLC0415 - its import logs to C-level stderr: keep that in the log

        nhwc = litert_torch.to_channel_last_io(source, args=[0]).eval()
        raw = Path(scratch) / "raw.tflite"
        try:
            if int8:
                edge = _convert_int8(nhwc, sample, images, rotate=fold)
            else:
                edge = litert_torch.convert(nhwc, sample, strict_export=True)
            edge.export(str(raw))
        except (RuntimeError, ValueError, TypeError, AssertionError) as exc:
            first_line = (str(exc).splitlines() or [""])[0][:200]
            raise ConversionError(
                f"litert-torch could not convert the student ({type(exc).__name__}: {first_line})"
            ) from None
        data = raw.read_bytes()
    removed = 0
    if fold:
        data, removed = fold_same_padding(data)
    data = shorten_tensor_names(data)
    path.write_bytes(data)
    return {"same_padding_folded": fold, "pad_ops_removed": removed}


def _convert_int8(nhwc: nn.Module, sample: tuple, calibration: torch.Tensor, rotate: bool):
    import litert_torch  # noqa: PLC0415 - heavy (jax), loaded when the format runs
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config  # noqa: PLC0415 - heavy (jax), loaded when the format runs
    from litert_torch.quantize.quant_config import QuantConfig  # noqa: PLC0415 - heavy (jax), loaded when the format runs
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # noqa: PLC0415 - heavy, loaded when the format runs

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    # strict=True: with the default non-strict export most residual ADDs stay float.
    exported = torch.export.export(nhwc, sample, strict=True).module()
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for image in calibration:  # the exported graph is fixed to batch 1
            prepared(_to_device_layout(image[None], rotate=rotate))
    converted = convert_pt2e(prepared, fold_quantize=False)
    return litert_torch.convert(converted, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer))


def _to_device_layout(images: torch.Tensor, rotate: bool) -> torch.Tensor:
    if rotate:
        images = images.flip(2, 3)
    return images.permute(0, 2, 3, 1).contiguous()


# ---------------------------------------------------------------- flatbuffer rewrite


def flatbuffer_schema():
    from ai_edge_litert import schema_py_generated  # noqa: PLC0415 - heavy, loaded when the format runs

    return schema_py_generated


def pack(model) -> bytes:
    """A flatbuffers object-API model as .tflite bytes."""
    builder = flatbuffers.Builder(1 << 16)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def constant_values(model, tensor) -> np.ndarray:
    """A constant tensor's values, shaped."""
    raw = bytes(np.asarray(model.buffers[tensor.buffer].data, dtype=np.uint8))
    return np.frombuffer(raw, dtype=NUMPY_TYPE[tensor.type]).reshape(tensor.shape)


def fold_same_padding(data: bytes) -> tuple[bytes, int]:
    """Remove each PAD that feeds a conv (the conv becomes SAME) and rotate k>1 kernels back by 180°."""
    schema = flatbuffer_schema()
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    graph = model.subgraphs[0]
    op_code = [builtin_code(model, op) for op in graph.operators]
    consumers: dict[int, list[int]] = defaultdict(list)
    for index, op in enumerate(graph.operators):
        for tensor in op.inputs:
            consumers[int(tensor)].append(index)
    convs = (schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D)
    removed: set[int] = set()
    for index, op in enumerate(graph.operators):
        if op_code[index] != schema.BuiltinOperator.PAD:
            continue
        users = consumers[int(op.outputs[0])]
        if len(users) != 1 or op_code[users[0]] not in convs:
            continue
        conv = graph.operators[users[0]]
        if conv.builtinOptions.padding != schema.Padding.VALID:
            continue
        conv.inputs = np.array(conv.inputs, dtype=np.int32)
        conv.inputs[0] = op.inputs[0]
        conv.builtinOptions.padding = schema.Padding.SAME
        removed.add(index)
    for index, op in enumerate(graph.operators):
        if op_code[index] in convs:
            _rotate_kernel(model, graph.tensors[int(op.inputs[1])])
    graph.operators = [op for index, op in enumerate(graph.operators) if index not in removed]
    drop_unused_tensors(model)
    return pack(model), len(removed)


def shorten_tensor_names(data: bytes) -> bytes:
    """litert-torch names each tensor by its full module path (~400 bytes each, 12% of a small model's
    flatbuffer), which would sit in MCU flash unread. Keep the last two path parts, which still say
    which layer a tensor belongs to."""
    model = flatbuffer_schema().ModelT.InitFromPackedBuf(data, 0)
    for graph in model.subgraphs:
        for index, tensor in enumerate(graph.tensors):
            full = (tensor.name or b"").decode(errors="replace").split(";")[0]
            parts = [part.rsplit(".", 1)[-1] for part in full.split("/") if part]
            tensor.name = ("/".join(parts[-2:]) or f"t{index}").encode()
    return pack(model)


NUMPY_TYPE = {0: np.float32, 9: np.int8, 2: np.int32, 3: np.uint8, 7: np.int16, 1: np.float16}


def _rotate_kernel(model, weight) -> None:
    """Conv weights are OHWI, depthwise 1HWO: flip H and W."""
    if weight.shape[1] == 1 and weight.shape[2] == 1:
        return
    rotated = np.ascontiguousarray(constant_values(model, weight)[:, ::-1, ::-1, :])
    model.buffers[weight.buffer].data = rotated.view(np.uint8).reshape(-1)


def drop_unused_tensors(model) -> None:
    """Remove tensors no op or signature uses any more, and renumber the rest."""
    graph = model.subgraphs[0]
    used = {int(t) for op in graph.operators for t in list(op.inputs) + list(op.outputs) if t >= 0}
    used |= {int(t) for t in graph.inputs} | {int(t) for t in graph.outputs}
    new_index = {old: new for new, old in enumerate(sorted(used))}

    def remap(indices):
        return np.array([new_index[int(t)] if t >= 0 else -1 for t in indices], dtype=np.int32)

    graph.tensors = [graph.tensors[old] for old in sorted(used)]
    for op in graph.operators:
        op.inputs, op.outputs = remap(op.inputs), remap(op.outputs)
    graph.inputs, graph.outputs = remap(graph.inputs), remap(graph.outputs)
    for signature in model.signatureDefs or []:
        for item in list(signature.inputs or []) + list(signature.outputs or []):
            item.tensorIndex = new_index[int(item.tensorIndex)]


# ---------------------------------------------------------------- inspection


def read_graph(path: Path | bytes):
    """(model, first subgraph, op names) of a .tflite file (or its bytes), through the flatbuffers object API."""
    schema = flatbuffer_schema()
    data = path if isinstance(path, bytes) else Path(path).read_bytes()
    try:
        model = schema.ModelT.InitFromPackedBuf(data, 0)
        graph = model.subgraphs[0]
    except Exception as exc:  # noqa: BLE001 - a corrupt flatbuffer fails anywhere inside the parser
        raise ConversionError(f"{_named(path)} is not a TFLite flatbuffer ({type(exc).__name__})") from None
    names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    op_names = [names.get(builtin_code(model, op), "CUSTOM") for op in graph.operators]
    return model, graph, op_names


def _named(path: Path | bytes) -> str:
    return "the model" if isinstance(path, bytes) else str(path)


def builtin_code(model, op) -> int:
    """An operator's builtin code. Files from older converters leave `builtin_code` at 0 (ADD) and keep the
    code in `deprecated_builtin_code` (one byte, codes below 128); TFLite's own rule is the larger of the two."""
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def has_int8_input(path: Path) -> bool:
    """Whether a .tflite takes int8 input (a full-integer model); raises ConversionError if it is not one."""
    _, graph, _ = read_graph(path)
    return graph.tensors[int(graph.inputs[0])].type == flatbuffer_schema().TensorType.INT8


def op_counts(path: Path) -> dict[str, int]:
    _, _, op_names = read_graph(path)
    counts: dict[str, int] = {}
    for name in op_names:
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def int8_violations(path: Path) -> list[str]:
    """What keeps a graph from being int8 end to end: QUANTIZE/DEQUANTIZE ops, any non-int8 activation
    (a tensor an op produces, or the graph's input), and standalone PAD/TRANSPOSE ops (memory waste)."""
    schema = flatbuffer_schema()
    model, graph, op_names = read_graph(path)
    type_names = {value: name for name, value in vars(schema.TensorType).items() if not name.startswith("_")}
    problems = []
    for index, (op, name) in enumerate(zip(graph.operators, op_names, strict=True)):
        if name in ("QUANTIZE", "DEQUANTIZE", "PAD", "PADV2", "TRANSPOSE"):
            problems.append(f"{name} (op {index})")
            continue
        for tensor_index in op.outputs:
            tensor = graph.tensors[int(tensor_index)]
            if tensor.type != schema.TensorType.INT8:
                problems.append(f"{name} (op {index}) outputs {type_names.get(tensor.type, tensor.type)}")
    for tensor_index in list(graph.inputs) + list(graph.outputs):
        tensor = graph.tensors[int(tensor_index)]
        if tensor.type != schema.TensorType.INT8:
            problems.append(
                f"graph input/output {tensor.name.decode(errors='replace')} is "
                f"{type_names.get(tensor.type, tensor.type)}"
            )
    return problems
