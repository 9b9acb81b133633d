"""Where and how models run: the device, memory format and autocast of a run (`Runtime`), and the
evaluation passes every stage and some methods need (top-1 on a split, precise BatchNorm statistics).
Below the methods and the training loop, which both use it."""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

from edgekd.cache import cache_dir, cpu_name, read_choices, write_choices
from edgekd.errors import EdgeKDError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    channels_last: bool | None  # None: each training stage measures which is faster (`channels_last: auto`)
    amp: bool
    torch_compile: bool = False

    @classmethod
    def from_recipe(
        cls, device: str, channels_last: bool | Literal["auto"], amp: bool, torch_compile: bool = False
    ) -> Runtime:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise EdgeKDError("device: cuda was asked for but torch sees no CUDA device; use device: auto or cpu")
        return cls(torch.device(device), None if channels_last == "auto" else channels_last, amp, torch_compile)

    @classmethod
    def of(cls, recipe) -> Runtime:
        """The runtime a recipe asks for (its device, channels_last, amp and torch_compile)."""
        return cls.from_recipe(recipe.device, recipe.channels_last, recipe.amp, recipe.torch_compile)

    def place(self, module: nn.Module) -> nn.Module:
        module = module.to(self.device)
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(self.device, non_blocking=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.float16 if self.device.type == "cuda" else torch.bfloat16)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, runtime: Runtime) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy) in eval mode."""
    model.eval()
    loss_sum, correct, seen = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
    for images, labels, *_ in loader:  # Batches also yield the samples' indices
        images, labels = runtime.batch(images, labels)
        with runtime.autocast():
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").cpu()
        correct += (logits.argmax(1) == labels).sum().cpu()
        seen += len(labels)
    return loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1)


def recalibrate_batchnorm(model: nn.Module, loader: Iterable, runtime: Runtime) -> None:
    """Replace BatchNorm running statistics by their exact average over `loader` ("precise BN"), with
    torch's own `update_bn`; the images go in as training batches would (device, memory format), so
    `loader` should be shuffled as training batches are."""
    with runtime.autocast():
        update_bn((runtime.batch(images, labels)[0] for images, labels, *_ in loader), model)
    model.eval()


# ---------------------------------------------------------------- the memory format


@dataclass(frozen=True)
class MemoryFormatChoice:
    channels_last: bool
    contiguous_ms: float  # milliseconds per step, the median round
    channels_last_ms: float
    cached: bool  # measured by an earlier run on this machine

    def describe(self) -> str:
        chosen, other = ("channels_last", "contiguous") if self.channels_last else ("contiguous", "channels_last")
        times = {"channels_last": self.channels_last_ms, "contiguous": self.contiguous_ms}
        when = "measured earlier on this machine" if self.cached else "measured now"
        return (f"memory format {chosen}: {times[chosen]:.1f} ms per step against {times[other]:.1f} ms for {other} "
                f"({when}; channels_last: auto)")  # fmt: skip


def choose_memory_format(
    modules: list[tuple[nn.Module, bool]],
    images: torch.Tensor,
    labels: torch.Tensor,
    runtime: Runtime,
    *,
    rounds: int = 7,
    steps: int = 3,
    cache: Path | None = None,
    variant: str = "",
) -> MemoryFormatChoice:
    """Contiguous (NCHW) or channels_last (NHWC), whichever runs a training step of `modules` faster here
    (channels_last only by a clear margin, `_channels_last_wins`).
    Which one wins depends on the CPU and its kernels (channels_last trained MobileNetV2 students 1.8×
    faster on one x86 machine and 1.5× slower on another), so it is measured, as cudnn.benchmark does:
    on copies of the modules (`(module, trains)`: forward and backward, or forward only for a frozen
    teacher) and one batch, a warm-up round in each format, then `rounds` rounds of `steps` steps
    alternating the two, the median round of each (a shared machine's step times vary by a third from
    one step to the next). The answer is kept in edgekd's cache, keyed by CPU, torch, threads, models and
    batch shape (and `variant`, what else differs in the step, e.g. depthwise weight gradients taken tap by
    tap), so a run on the same machine makes the same choice (and trains the same weights)."""
    cache = cache if cache is not None else cache_dir() / "memory_format.json"
    key = _machine_key(modules, images, runtime) + (f"|{variant}" if variant else "")
    known = read_choices(cache)
    cached = key in known
    if not cached:
        medians = _time_formats(modules, images, labels, runtime, rounds, steps)
        known[key] = {"contiguous_ms": round(medians[False], 3), "channels_last_ms": round(medians[True], 3)}
        write_choices(cache, known)
    contiguous_ms, channels_last_ms = known[key]["contiguous_ms"], known[key]["channels_last_ms"]
    return MemoryFormatChoice(_channels_last_wins(contiguous_ms, channels_last_ms), contiguous_ms, channels_last_ms,
                              cached)  # fmt: skip


def _time_formats(modules: list[tuple[nn.Module, bool]], images: torch.Tensor, labels: torch.Tensor,
                  runtime: Runtime, rounds: int, steps: int) -> dict[bool, float]:  # fmt: skip
    """{channels_last: median ms per step}, the two formats alternating round by round after a warm-up."""
    setups = {}  # per format: its runtime, copies of the modules placed in it, and the batch laid out in it
    for fmt in (False, True):
        placed = replace(runtime, channels_last=fmt)
        copies = [(placed.place(copy.deepcopy(m)), trains) for m, trains in modules]
        setups[fmt] = (placed, copies, *placed.batch(images, labels))
    times: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(rounds + 1):
        for fmt in (False, True) if round_ % 2 else (True, False):
            seconds = sum(_step_seconds(*setups[fmt]) for _ in range(steps)) / steps
            if round_:  # round 0 warms up
                times[fmt].append(seconds)
    return {fmt: 1000 * statistics.median(values) for fmt, values in times.items()}


CHANNELS_LAST_MARGIN = 1.1


def _channels_last_wins(contiguous_ms: float, channels_last_ms: float) -> bool:
    """channels_last only when it is at least 10 % faster: a near tie (resnet18 at 32 px: 434 against 449 ms
    on one machine) would otherwise go either way from one clean clone to the next, and the two formats
    round differently, so the same seed would train different weights."""
    return channels_last_ms * CHANNELS_LAST_MARGIN <= contiguous_ms


def _step_seconds(runtime: Runtime, modules: list[tuple[nn.Module, bool]], images: torch.Tensor,
                  labels: torch.Tensor) -> float:  # fmt: skip
    started = time.perf_counter()
    for module, trains in modules:
        if trains:
            module.train()
            with runtime.autocast():
                output = module(images)
            F.cross_entropy(output.float(), labels).backward()
            module.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), runtime.autocast():
                module.eval()(images)
    return time.perf_counter() - started


def _machine_key(modules: list[tuple[nn.Module, bool]], images: torch.Tensor, runtime: Runtime) -> str:
    models = ",".join(
        f"{type(m).__name__}/{sum(p.numel() for p in m.parameters())}/{'train' if trains else 'eval'}"
        for m, trains in modules
    )
    return (f"{cpu_name()}|torch {torch.__version__}|{torch.get_num_threads()} threads|{runtime.device.type}|"
            f"amp {runtime.amp}|{models}|{tuple(images.shape)}")  # fmt: skip
