"""One line that says which machine and code produced a measurement (reports and RESULTS.md carry it)."""

from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

from edgekd.runtime import cpu_name


def machine_line() -> str:
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    return (
        f"{platform.machine()} ({cpu_name()}), {torch.get_num_threads()} threads, Python {platform.python_version()}, "
        f"torch {torch.__version__}, load average {' '.join(load)}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit {_commit()}"
    )


def _commit() -> str:
    """The checkout's commit when edgekd runs from one (an editable install); else unknown."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
