"""Run an artefact in its own runtime: onnxruntime, LiteRT (ai-edge-litert), TensorFlow Lite Micro.

Every runner takes normalised NCHW float images (as the PyTorch student does) and returns float
logits; quantising the input and dequantising the output, and NHWC layout, happen here, exactly as
firmware would do them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.exporters.tflite import captured_output


class ArtefactError(EdgeKDError):
    """An artefact that cannot be loaded or run."""


class Runner:
    """prepare (quantise, lay out) → invoke (the inference alone: what latency measures) → finish."""

    name = "runner"
    batch_size = 1

    def predict(self, images: np.ndarray) -> np.ndarray:
        outputs = [
            self.finish(self.invoke(self.prepare(images[i : i + self.batch_size])))
            for i in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(outputs).astype(np.float32)

    def prepare(self, batch: np.ndarray):
        return batch.astype(np.float32)

    def invoke(self, prepared) -> np.ndarray:
        raise NotImplementedError

    def finish(self, output: np.ndarray) -> np.ndarray:
        return output


class OnnxRunner(Runner):
    name = "onnxruntime"
    batch_size = 64

    def __init__(self, path: Path, threads: int = 1):
        import onnxruntime as ort  # noqa: PLC0415 - heavy, loaded when the format runs

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ArtefactError(
                f"{path} is not a model onnxruntime can load ({str(exc).splitlines()[0][:160]})"
            ) from None
        self.input_name = self.session.get_inputs()[0].name

    @property
    def nchw_shape(self) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else 1 for d in self.session.get_inputs()[0].shape)

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: prepared})[0]


class QuantisedRunner(Runner):
    """The TFLite runners: NHWC layout and int8 (de)quantisation of one input and one output."""

    def _setup_io(self, input_shape, input_dtype, input_quant, output_dtype, output_quant) -> None:
        self.input_shape = tuple(int(d) for d in input_shape)
        self.input_dtype, self.output_dtype = np.dtype(input_dtype), np.dtype(output_dtype)
        self.input_scale, self.input_zero_point = input_quant
        self.output_scale, self.output_zero_point = output_quant

    @property
    def nhwc(self) -> bool:
        """An image input in NHWC layout (a 4-D input whose last dimension is a few channels)."""
        return len(self.input_shape) == 4 and self.input_shape[-1] <= 4 < self.input_shape[1]

    @property
    def nchw_shape(self) -> tuple[int, ...]:
        """The input's shape as PyTorch orders it: NCHW for an image, the model's own shape otherwise
        (a spectrogram row, a feature vector)."""
        if not self.nhwc:
            return self.input_shape
        n, a, b, c = self.input_shape
        return (n, c, a, b)

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """One input (batch of one; an image in NCHW) → the model's input tensor (NHWC when the model is;
        int8 when it is)."""
        image = batch[0]
        if self.nhwc:
            image = image.transpose(1, 2, 0)
        if self.input_dtype == np.int8:
            image = np.clip(np.round(image / self.input_scale) + self.input_zero_point, -128, 127)
        return image.astype(self.input_dtype).reshape(self.input_shape)

    def finish(self, output: np.ndarray) -> np.ndarray:
        output = output.astype(np.float32)
        if self.output_dtype == np.int8:
            output = (output - self.output_zero_point) * self.output_scale
        return output.reshape(1, -1)


class LiteRTRunner(QuantisedRunner):
    """ai-edge-litert. `reference_kernels=True` uses TFLite's reference int8 kernels, which match
    TFLite-Micro bit for bit; the default XNNPACK kernels are the fast host path."""

    def __init__(self, path: Path, reference_kernels: bool = False, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: PLC0415 - heavy, loaded when the format runs

        resolver = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
        self.name = "litert-reference" if reference_kernels else "litert-xnnpack"
        try:
            with captured_output():  # "Created TensorFlow Lite XNNPACK delegate" on C-level stderr
                self.interpreter = Interpreter(
                    model_path=str(path), num_threads=threads, experimental_op_resolver_type=resolver
                )
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ArtefactError(
                f"{path} is not a TFLite model LiteRT can load ({str(exc).splitlines()[0][:160]})"
            ) from None
        inp, out = self.interpreter.get_input_details()[0], self.interpreter.get_output_details()[0]
        self.input_index, self.output_index = inp["index"], out["index"]
        self._setup_io(inp["shape"], inp["dtype"], inp["quantization"], out["dtype"], out["quantization"])

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input_index, prepared)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index)


class MicroRunner(QuantisedRunner):
    """TensorFlow Lite Micro's own interpreter and kernels, as on a microcontroller."""

    name = "tflite-micro"

    def __init__(self, path: Path, arena_size: int | None = None):
        from tflite_micro.python.tflite_micro import runtime  # noqa: PLC0415 - heavy, loaded when the format runs

        self.arena = measure_arena(path) if arena_size is None else None
        try:
            self.interpreter = runtime.Interpreter.from_file(str(path), arena_size=arena_size or self.arena["total"])
        except (RuntimeError, ValueError) as exc:
            raise ArtefactError(f"{path}: TFLite-Micro cannot run it ({str(exc).splitlines()[0][:160]})") from None
        inp, out = self.interpreter.get_input_details(0), self.interpreter.get_output_details(0)
        self._setup_io(inp["shape"], inp["dtype"], _micro_quant(inp), out["dtype"], _micro_quant(out))

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        self.interpreter.set_input(prepared, 0)
        self.interpreter.invoke()
        return self.interpreter.get_output(0)


def _micro_quant(details: dict) -> tuple[float, int]:
    params = details.get("quantization_parameters") or {}
    scales, zero_points = params.get("scales"), params.get("zero_points")
    if scales is None or len(scales) == 0:
        return 0.0, 0
    return float(scales[0]), int(zero_points[0])


_ARENA_LINE = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")


def measure_arena(path: Path, upper_bound: int = 16 * 1024 * 1024) -> dict[str, int]:
    """The exact TFLite-Micro arena: allocate generously, then read what the allocator used.
    `print_allocations()` writes "Arena allocation total/head/tail N bytes" to C-level stdout/stderr."""
    from tflite_micro.python.tflite_micro import runtime  # noqa: PLC0415 - heavy, loaded when the format runs

    with captured_output() as output:
        try:
            interpreter = runtime.Interpreter.from_file(str(path), arena_size=upper_bound)
            interpreter.print_allocations()
        except (RuntimeError, ValueError) as exc:
            error = str(exc).splitlines()[0][:160]
        else:
            error = None
    if error is not None:
        raise ArtefactError(f"{path}: TFLite-Micro cannot load it ({error})")
    found = {kind: int(value) for kind, value in _ARENA_LINE.findall(output["text"])}
    if set(found) != {"total", "head", "tail"}:
        raise ArtefactError(f"{path}: TFLite-Micro printed no arena sizes")
    # What the allocator used afterwards is not always enough to allocate: the memory planner's scratch
    # lives in the head while it plans, and for models of small tensors (MLPerf Tiny's anomaly-detection
    # autoencoder: 3,984 bytes printed, 4,688 needed) it outgrows the activations. Then the smallest arena
    # that allocates is searched for (TFLM aligns to 16 bytes), and the head takes the difference.
    needed = _smallest_arena(path, found["total"], upper_bound)
    return {**found, "head": found["head"] + needed - found["total"], "total": needed}


def _smallest_arena(path: Path, at_least: int, upper_bound: int) -> int:
    if _allocates(path, at_least):
        return at_least
    low, high = at_least, at_least
    while not _allocates(path, high):
        low, high = high, min(2 * high, upper_bound)
        if low == upper_bound:
            raise ArtefactError(f"{path}: TFLite-Micro cannot allocate it in {upper_bound:,} bytes of arena")
    while high - low > 16:  # low fails, high allocates
        middle = (low + high) // 32 * 16
        low, high = (low, middle) if _allocates(path, middle) else (middle, high)
    return high


def _allocates(path: Path, arena_size: int) -> bool:
    from tflite_micro.python.tflite_micro import runtime  # noqa: PLC0415 - heavy, loaded when the format runs

    with captured_output():  # TFLM says why it failed on C-level stdout
        try:
            runtime.Interpreter.from_file(str(path), arena_size=arena_size)
        except (RuntimeError, ValueError):
            return False
    return True


def runner_for(path: Path, runtime: str) -> Runner:
    if not Path(path).is_file():
        raise ArtefactError(f"artefact {path} does not exist")
    if runtime == "onnxruntime":
        return OnnxRunner(path)
    if runtime in ("litert-xnnpack", "litert-reference"):
        return LiteRTRunner(path, reference_kernels=runtime == "litert-reference")
    if runtime == "tflite-micro":
        return MicroRunner(path)
    raise ValueError(f"unknown runtime {runtime}")


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # LiteRT's C++ INFO lines are noise in our output
