"""edgekd's cache folder (TFLM libraries, unpacked TFLM trees, and the kernel choices measured on this
machine: the memory format each model trains fastest in, the depthwise layers whose weight gradients go
tap by tap): $EDGEKD_CACHE, else $XDG_CACHE_HOME/edgekd or ~/.cache/edgekd."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from edgekd.rundir import atomic_save

CACHE_ENV = "EDGEKD_CACHE"


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgekd"


def cpu_name() -> str:
    """The processor's model name (what decides which kernels are fast here)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_choices(path: Path) -> dict:
    """The measured choices kept in a cache file (keyed by machine and what was measured); {} if none."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def write_choices(path: Path, choices: dict) -> None:
    try:
        atomic_save(json.dumps(choices, indent=1, sort_keys=True) + "\n", path)
    except OSError:  # a read-only cache: the choice still holds for this run
        pass
