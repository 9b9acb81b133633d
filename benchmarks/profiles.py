"""Device profiles (benchmarks/devices/*.yaml, or a user's YAML file) and budgets like `sram=256k,flash=1M`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgekd.errors import EdgeKDError
from edgekd.registry import Registry, bundled_files, did_you_mean

OP_CLASSES = ("conv", "depthwise", "fully_connected", "other")


class DeviceError(EdgeKDError):
    """Unknown device, malformed profile or budget."""


class RuntimeCost(BaseModel):
    """Cycles per MAC ([low, high]) by operator class for one MCU runtime; `other` is per output element."""

    model_config = ConfigDict(extra="forbid")
    source: str
    conv: tuple[float, float]
    depthwise: tuple[float, float]
    fully_connected: tuple[float, float]
    other: tuple[float, float]


class InstructionCost(BaseModel):
    """Cycles per instruction ([low, high]) of TFLM + CMSIS-NN code on this core: turns the instructions
    QEMU counts into time. QEMU models no pipeline, wait states or caches, so this comes from published
    measurements of models edgekd also runs (`benchmarks/suite/device_table.py` calibrates it; RESULTS.md
    shows the rows)."""

    model_config = ConfigDict(extra="forbid")
    source: str
    cpi: tuple[float, float]


class FlashMemory(BaseModel):
    """Where the model's weights are read from on the board: flash behind a buffer of lines (the flash
    accelerator) or a data cache (`ways` lines per set; none: fully associative). A read outside the
    buffered lines costs `wait_states` cycles more (the datasheet's wait states at the profile's clock)."""

    model_config = ConfigDict(extra="forbid")
    source: str
    wait_states: int = Field(ge=0, le=15)
    line_bytes: int = Field(16, gt=0)
    buffer_lines: int = Field(1, ge=1, le=1024)
    ways: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _whole_sets(self) -> FlashMemory:
        if self.ways is not None and self.buffer_lines % self.ways:
            raise ValueError(f"buffer_lines ({self.buffer_lines}) must be a multiple of ways ({self.ways})")
        return self


class CycleModel(BaseModel):
    """Cycles on this board from the QEMU cycle-model plugin: the core's instruction timings (`timing`:
    the Cortex-M4 TRM's single-issue table, or LLVM's dual-issue Cortex-M7 model), the branch cost
    (`branch_refill`: on the M4 what a taken branch adds, on the M7 what a mispredicted one adds), and the
    flash's wait states. `error` is the relative error the validation
    (`benchmarks/suite/cycles_validation.py`, benchmarks/RESULTS.md) measured for this model against real
    boards: the report shows latency ± that."""

    model_config = ConfigDict(extra="forbid")
    timing: Literal["cortex-m4", "cortex-m7"] = "cortex-m4"
    branch_refill: int = Field(2, ge=1, le=8)
    flash: FlashMemory | None = None
    error: float = Field(gt=0, lt=1)
    error_source: str


class Device(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    core: str | None = None
    clock_mhz: float | None = Field(None, gt=0)
    sram_kb: float = Field(gt=0)
    flash_kb: float = Field(gt=0)
    runtimes: dict[str, RuntimeCost] = Field(default_factory=dict)
    instruction_cost: InstructionCost | None = None  # for cores without a cycle model
    cycle_model: CycleModel | None = None

    @property
    def sram_bytes(self) -> int:
        return int(self.sram_kb * 1024)

    @property
    def flash_bytes(self) -> int:
        return int(self.flash_kb * 1024)


class Budget(BaseModel):
    sram_bytes: int
    flash_bytes: int
    latency_ms: float | None = None
    accuracy: float | None = Field(None, description="the lowest test accuracy the device model may have")
    balanced_accuracy: float | None = Field(None, description="the lowest mean per-class recall it may have")


DEVICES: Registry[Path] = Registry("device", "edgekd.devices")
"""Device profiles by name: the YAML files in edgekd/benchmarks/devices, and any a package registers
(`register_device("my-board", path)` in a module named by an `edgekd.devices` entry point)."""
for _name, _path in bundled_files("edgekd.benchmarks.devices").items():
    DEVICES.register(_name, _path)


def register_device(name: str, path: Path) -> None:
    DEVICES.register(name, Path(path))


def bundled_devices() -> dict[str, Path]:
    return dict(DEVICES)


def load_device(name_or_path: str) -> Device:
    path = Path(name_or_path)
    if not path.is_file():
        if name_or_path not in DEVICES:
            names = DEVICES.names()
            raise DeviceError(
                f"unknown device '{name_or_path}'{did_you_mean(name_or_path, names)} (known: {', '.join(names)}; "
                "or give a profile YAML path)"
            )
        path = DEVICES.get(name_or_path)
    try:
        return Device.model_validate(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as exc:
        raise DeviceError(f"device profile {path}: malformed YAML ({str(exc).splitlines()[0]})") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        raise DeviceError(f"device profile {path}: '{'.'.join(map(str, error['loc']))}': {error['msg']}") from None
    except UnicodeDecodeError:
        raise DeviceError(f"device profile {path} is not a text file; a profile is YAML (UTF-8)") from None
    except OSError as exc:
        raise DeviceError(f"device profile {path}: cannot read it ({exc.strerror})") from None


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]i?[bB]?|[bB])?\s*$")
_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$")
_FRACTION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%)?\s*$")


def parse_size(text: str) -> int:
    """'256k', '256kB', '1M', '1.5MiB', '4096' → bytes (k = 1024, as MCU memories are counted)."""
    match = _SIZE.match(text)
    if not match:
        raise DeviceError(f"'{text}' is not a size; write e.g. 256k, 1M or 4096")
    value, unit = float(match.group(1)), (match.group(2) or "b").lower()
    return int(value * {"k": 1024, "m": 1024**2}.get(unit[0], 1))


def parse_budget(text: str | None, device: Device) -> Budget:
    """`sram=256k,flash=1M,latency=50ms,accuracy=95%,balanced_accuracy=90%`; what is not given comes from
    the device (SRAM, flash) or is not checked (latency, accuracies)."""
    budget = {"sram_bytes": device.sram_bytes, "flash_bytes": device.flash_bytes, "latency_ms": None}
    for part in [p for p in (text or "").split(",") if p.strip()]:
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in ("sram", "flash", "latency", "accuracy", "balanced_accuracy"):
            raise DeviceError(
                f"budget '{part}' does not parse; write e.g. sram=256k,flash=1M,latency=100ms,accuracy=95% "
                "(or balanced_accuracy=90%)"
            )
        if key in ("accuracy", "balanced_accuracy"):
            match = _FRACTION.match(value)
            number = float(match.group(1)) if match else -1.0
            fraction = number / 100 if match and (match.group(2) or number > 1) else number  # 95% or 95 or 0.95
            if not 0 < fraction <= 1:
                raise DeviceError(f"{key} budget '{value}' does not parse; write e.g. 95% or 0.95")
            budget[key] = fraction
        elif key == "latency":
            match = _TIME.match(value)
            if not match:
                raise DeviceError(f"latency budget '{value}' does not parse; write e.g. 100ms or 0.5s")
            budget["latency_ms"] = float(match.group(1)) * (1000 if match.group(2) == "s" else 1)
        else:
            budget[f"{key}_bytes"] = parse_size(value)
    return Budget(**budget)
