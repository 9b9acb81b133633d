"""benchmarks/RESULTS.md: each suite script owns one section, replaced in place on every run."""

from __future__ import annotations

import platform
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# edgekd benchmark results\n\nEvery section is written by the script it names; re-run it to refresh.\n"


def machine_line() -> str:
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    return (
        f"{platform.machine()}, {torch.get_num_threads()} threads, Python {platform.python_version()}, "
        f"torch {torch.__version__}, load average {' '.join(load)}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit {_commit()}"
    )


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=RESULTS.parent, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_section(name: str, command: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section `name`, stamped with the command and the machine."""
    text = path.read_text() if path.exists() else HEADER
    section = (
        f"<!-- section:{name} -->\n## {name}\n\n`{command}`\n\n{machine_line()}\n\n{body.strip()}\n"
        f"<!-- end:{name} -->\n"
    )
    pattern = re.compile(rf"<!-- section:{re.escape(name)} -->.*?<!-- end:{re.escape(name)} -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text)
