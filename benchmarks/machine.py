"""One line that says which machine and code produced a measurement (reports and RESULTS.md carry it)."""

from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

from edgekd.cache import cpu_name


def machine_line() -> str:
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    return (
        f"{platform.machine()} ({cpu_name()}), {torch.get_num_threads()} threads, Python {platform.python_version()}, "
        f"torch {torch.__version__}, load average {' '.join(load)}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit {_commit()}"
    )


CODE = ("*.py", "*.yaml", "*.c", "*.cc", "*.h", "*.ld", "Makefile", "pyproject.toml")  # what decides a figure


def _commit(folder: Path | None = None) -> str:
    """The checkout's commit when edgekd runs from one (an editable install), marked when the code differs
    from it (RESULTS.md and the README, which the suite itself rewrites, do not count); else unknown."""
    folder = folder or Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=folder, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        top = git("rev-parse", "--show-toplevel")  # pathspecs are relative to where git runs
        changed = git("-C", top, "status", "--porcelain", "--untracked-files=no", "--", *CODE)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} + uncommitted changes to the code" if changed else commit
