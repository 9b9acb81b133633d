"""How long the test suite (what `make test` and CI run) takes at two commits, measured alternately on
this machine, so a change's effect on it is a ratio from one run, not two numbers from two days.

The default "before" is a01c66d, the last commit before the speed work (Batches, the lean step, the
teacher cache, one shared training run for the export and report tests). Each commit is checked out
in a temporary git worktree and run with this checkout's installed packages (a throw-away virtual
environment that sees .venv's site-packages and installs only the worktree's edgekd, editable,
without dependencies). Every run starts from empty edgekd and torch.compile caches, as CI does. Run it
with nothing else running.

    python benchmarks/suite/test_time.py [--before a01c66d] [--after HEAD] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from results import write_section

REPO = Path(__file__).resolve().parents[2]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def environment_for(commit: str, scratch: Path) -> tuple[Path, Path]:
    """(worktree, python) for `commit`: its source, importable as edgekd, with .venv's packages."""
    tree = scratch / f"tree-{commit}"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=REPO, check=True,
                   capture_output=True)  # fmt: skip
    venv = scratch / f"venv-{commit}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    own = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip())  # fmt: skip
    # .venv's packages, behind this environment's own (where the worktree's edgekd goes).
    (own / "shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # This checkout's pip, installing into the new environment, builds with .venv's setuptools.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--editable", str(tree)], check=True)  # fmt: skip
    return tree, python


def timed_suite(tree: Path, python: Path, cache: Path) -> tuple[float, str]:
    """Wall seconds of the whole suite in `tree`, and pytest's last line with the failed tests' names.

    `cache` is a new, empty folder for edgekd's and torch.compile's caches, as on CI's clean machine: the
    TensorFlow Lite Micro library the device tests need and the kernels torch.compile generates are built
    inside the timed run, not reused from an earlier one."""
    started = time.perf_counter()
    command = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    environment = {
        **os.environ,
        "EDGEKD_CACHE": str(cache / "edgekd"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
    }
    result = subprocess.run(command, cwd=tree, capture_output=True, text=True, env=environment)
    seconds = time.perf_counter() - started
    last = [line for line in result.stdout.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    failed = [line.split()[1] for line in result.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    outcome = (last[-1] if last else f"exit {result.returncode}").strip("= ")
    return seconds, outcome + (f" ({', '.join(failed)})" if failed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="a01c66d", help="the commit before the change")
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--runs", type=int, default=1, help="rounds of before, after")
    args = parser.parse_args()
    commits = {name: git("rev-parse", "--short", rev) for name, rev in (("before", args.before), ("after", args.after))}
    seconds: dict[str, list[float]] = {name: [] for name in commits}
    outcome: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        environments = {name: environment_for(commit, scratch) for name, commit in commits.items()}
        try:
            for round_ in range(args.runs):
                for name, (tree, python) in environments.items():
                    took, outcome[name] = timed_suite(tree, python, scratch / f"cache-{name}-{round_}")
                    seconds[name].append(took)
                    print(f"round {round_ + 1} {name} ({commits[name]}): {took / 60:.1f} min, {outcome[name]}",
                          flush=True)  # fmt: skip
        finally:
            for tree, _ in environments.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
    rows = ["| | commit | minutes per run | pytest |", "| --- | --- | ---: | --- |"]
    for name in commits:
        rows.append(f"| {name} | {commits[name]} | {' / '.join(f'{s / 60:.1f}' for s in seconds[name])} "
                    f"| {outcome[name]} |")  # fmt: skip
    ratio = min(seconds["after"]) / min(seconds["before"])
    body = (
        "The whole test suite (slow end-to-end tests included, as `make test` and CI run it), at two commits, "
        f"alternating, {args.runs} round(s); the after/before ratio of the fastest runs is {ratio:.2f}. The suite "
        "grows between the commits, so the ratio counts new tests too.\n\n" + "\n".join(rows)
    )
    write_section("test suite time", f"python benchmarks/suite/test_time.py --before {args.before} --after "
                  f"{args.after} --runs {args.runs}", body)  # fmt: skip


if __name__ == "__main__":
    main()
