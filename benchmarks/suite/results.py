"""benchmarks/RESULTS.md (in the repository, beside this folder): each suite script owns one section,
replaced in place on every run. The suite lives in the repository only; it is not installed."""

from __future__ import annotations

import re
from pathlib import Path

from edgekd.benchmarks.machine import machine_line

RESULTS = Path(__file__).resolve().parents[1] / "RESULTS.md"
HEADER = "# edgekd benchmark results\n\nEvery section is written by the script it names; re-run it to refresh.\n"


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
