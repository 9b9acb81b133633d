"""Put the "Which method helps" table into README.md, between `<!-- methods:start -->` and
`<!-- methods:end -->`, from the two methods sections of benchmarks/RESULTS.md (written by methods.py), and
the first screen's table of KD with unlabelled images (`<!-- unlabelled:start -->`) from its section,
so the README never shows typed-in numbers. A section for a subset of methods on the same base
(`distillation methods: quickstart (kd, prokt)`, written when methods.py runs a subset, e.g. after a method
changed) replaces those rows; their gain is measured against that section's own baseline, run beside them,
and the row is marked so a reader knows it comes from a later run.

    python benchmarks/suite/readme_methods.py      (`make readme` runs it too)

A gain is in bold when it is larger than the two rows' standard deviations over seeds added together:
beyond what the seeds alone move.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from results import RESULTS

README = Path(__file__).resolve().parents[2] / "README.md"
SETTINGS = {  # RESULTS.md section → README column heading
    "distillation methods: quickstart": "`quickstart`: students see all 3,500 training images",
    "distillation methods: mnist5k_low_data": "`mnist5k_low_data`: students see 350 (the teacher all 3,500)",
}
BASELINE = "baseline"


# The README's first screen: what distillation is for, from the run of these rows beside their baseline.
UNLABELLED_SECTION = "distillation methods: mnist5k_low_data (kd, kd + unlabelled)"
UNLABELLED_LABELS = (  # its rows in the order methods.py wrote them: the baseline, KD, KD with unlabelled images
    "the student alone, from the 350 labelled images",
    "distilled from the teacher, on the same 350",
    "distilled, on the 350 and 3,150 unlabelled images (`mnist5k_unlabelled`)",
)


@dataclass(frozen=True)
class Row:
    mean: float  # percent
    std: float
    int8: Row | None = None  # the int8 TFLite export (mean, std)


def read_section(results: str, name: str) -> tuple[dict[str, Row], str]:
    """The rows of one methods table (method → mean, std in percent) and its command line."""
    match = re.search(rf"<!-- section:{re.escape(name)} -->(.*?)<!-- end:{re.escape(name)} -->", results, re.S)
    if match is None:
        sys.exit(f"{RESULTS} has no section '{name}': run benchmarks/suite/methods.py first")
    body = match.group(1)
    command = re.search(r"^`(python [^`]*)`$", body, re.M)
    rows = {}
    for line in body.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        accuracy = re.fullmatch(r"([\d.]+)% ± ([\d.]+)%", cells[2]) if len(cells) == 6 else None
        if accuracy:
            int8 = re.fullmatch(r"([\d.]+)% ± ([\d.]+)%", cells[5])
            exported = Row(float(int8.group(1)), float(int8.group(2))) if int8 else None
            rows[cells[0]] = Row(float(accuracy.group(1)), float(accuracy.group(2)), exported)
    if BASELINE not in rows:
        sys.exit(f"{RESULTS}: section '{name}' has no baseline row")
    return rows, command.group(1) if command else "methods.py"


def cell(row: Row | None, baseline: Row, name: str) -> str:
    if row is None:
        return "–"
    text = f"{row.mean:.1f} % ± {row.std:.1f}"
    if name == BASELINE:
        return text
    gain = row.mean - baseline.mean
    shown = f"{gain:+.1f}".replace("-", "−")
    return f"{text} (**{shown}**)" if abs(gain) > row.std + baseline.std else f"{text} ({shown})"


def subsets(results: str, name: str) -> list[str]:
    """The subset sections of the base `name` (methods.py names them `<name> (<methods>)`), in file order."""
    return re.findall(rf"<!-- section:({re.escape(name)} \([^)]*\)) -->", results)


def table(results: str) -> str:
    settings = {name: read_section(results, name) for name in SETTINGS}
    methods: list[str] = []  # the rows of the fullest table first, in its order
    for rows, _ in sorted(settings.values(), key=lambda setting: -len(setting[0])):
        methods += [name for name in rows if name not in methods]
    later: dict[str, dict[str, tuple[Row, Row]]] = {name: {} for name in SETTINGS}  # method → (row, its baseline)
    commands = [command for _, command in settings.values()]
    for name in SETTINGS:
        for subset in subsets(results, name):
            rows, command = read_section(results, subset)
            later[name] |= {method: (row, rows[BASELINE]) for method, row in rows.items() if method != BASELINE}
            commands.append(command)
    lines = [
        "| method | " + " | ".join(SETTINGS.values()) + " |",
        "| --- |" + " ---: |" * len(SETTINGS),
    ]
    for method in methods:
        cells = []
        for name, (rows, _) in settings.items():
            if method in later[name]:
                row, baseline = later[name][method]
                cells.append(cell(row, baseline, method) + " †")
            else:
                cells.append(cell(rows.get(method), rows[BASELINE], method))
        label = "baseline (student alone)" if method == BASELINE else method
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    marked = any(later.values())
    note = (" † a later run of that method beside its own baseline (the subset sections of RESULTS.md); its "
            "gain is against that baseline.") if marked else ""  # fmt: skip
    listed = "; ".join(f"`{command}`" for command in commands)
    return "\n".join(lines) + f"\n\nFrom `benchmarks/RESULTS.md`, written by {listed}.{note}"


def unlabelled_table(results: str) -> str:
    """Baseline, KD and KD with unlabelled images, 350 labels each: test accuracy, gain and int8 accuracy."""
    rows, command = read_section(results, UNLABELLED_SECTION)
    lines = ["| MobileNetV2-Tiny, 3 seeds | test accuracy (± std) | int8 TFLite |", "| --- | ---: | ---: |"]
    if len(rows) != len(UNLABELLED_LABELS):
        sys.exit(f"{RESULTS}: section '{UNLABELLED_SECTION}' has {len(rows)} rows, not {len(UNLABELLED_LABELS)}")
    for (name, row), label in zip(rows.items(), UNLABELLED_LABELS, strict=True):
        baseline = rows[BASELINE]
        int8 = cell(row.int8, baseline.int8, name) if row.int8 and baseline.int8 else "–"
        lines.append(f"| {label} | {cell(row, baseline, name)} | {int8} |")
    return "\n".join(lines) + f"\n\nFrom `benchmarks/RESULTS.md`, written by `{command}`."


def replace_block(text: str, marker: str, content: str) -> str:
    block = (
        f"<!-- {marker}:start -->\n<!-- generated by benchmarks/suite/readme_methods.py from benchmarks/RESULTS.md; "
        f"do not edit -->\n\n{content}\n\n<!-- {marker}:end -->"
    )
    new, count = re.subn(rf"<!-- {marker}:start -->.*?<!-- {marker}:end -->", lambda _: block, text, flags=re.S)
    if count != 1:
        sys.exit(f"README.md has no <!-- {marker}:start --> ... <!-- {marker}:end --> block")
    return new


def main() -> None:
    results = RESULTS.read_text()
    text = replace_block(README.read_text(), "methods", table(results))
    README.write_text(replace_block(text, "unlabelled", unlabelled_table(results)))
    print("README.md: the methods table and the unlabelled-images table from benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
