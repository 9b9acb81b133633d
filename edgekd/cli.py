"""`edgekd` command line. Exit codes: 0 ok, 1 a budget or check failed, 2 bad input."""

from __future__ import annotations

import errno
import os
import signal
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import click
import typer
import yaml
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgekd import firmware
from edgekd.benchmarks.profiles import DEVICES, load_device, parse_budget
from edgekd.checks import format_value
from edgekd.errors import CheckFailed, EdgeKDError
from edgekd.recipe import bundled_recipes
from edgekd.registry import DATASETS, FORMATS, METHODS, did_you_mean
from edgekd.rundir import RunDir, Summary

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Distil timm teachers into MCU-sized students, export them, and prove they fit.",
)
# Pipes and CI logs get a fixed width wide enough for the result tables (rich defaults to 80).
stdout = Console(width=None if sys.stdout.isatty() else 110)
stderr = Console(stderr=True, width=None if sys.stderr.isatty() else 110)

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_TERMINATED = 143  # SIGTERM


def _api():
    """edgekd.api, imported when a command first needs it: it brings torch, timm and the exporters (~10 s
    on these machines), which `--help`, `list`, `recipes` and `doctor` do without."""
    from edgekd import api  # noqa: PLC0415 - deferred heavy import (torch, timm, onnx, litert)

    return api


@app.command()
def distill(
    recipe: str = typer.Argument(..., help="recipe YAML file, or the name of a bundled recipe (see `edgekd recipes`)"),
    out: Path | None = typer.Option(None, "--out", help="run directory (default: <output_dir>/<name> from the recipe)"),
    resume: bool = typer.Option(False, "--resume", help="continue a killed or finished run from its checkpoints"),
    overwrite: bool = typer.Option(False, "--overwrite", help="delete an earlier run in the run directory first"),
    set_: list[str] = typer.Option([], "--set", help="override a recipe key, e.g. --set distill.epochs=3 (repeatable)"),
) -> None:
    """Train the teacher (if needed), the baseline student and the distilled student; print the gain."""
    if resume and overwrite:
        raise EdgeKDError("--resume and --overwrite contradict each other; pass one")
    api = _api()
    loaded = api.load_recipe(recipe, set_)
    run_dir = out if out is not None else api.default_run_dir(loaded)
    summary = api.distill(loaded, run_dir, resume=resume, overwrite=overwrite, console=stderr)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one process reports
        stdout.print(summary_table(summary))
        stdout.print(f"run directory: {run_dir}")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="a run directory written by `edgekd distill`"),
    formats: str | None = typer.Option(
        None,
        "--formats",
        help="comma-separated export formats (`edgekd list formats`; default: the recipe's export.formats)",
    ),
) -> None:
    """Export the distilled student to device artefacts and verify each one against PyTorch."""
    chosen = parse_formats(formats) if formats is not None else None
    report = _api().export(run_dir, chosen, console=stderr)
    _raise_if_failed(report, run_dir)
    stdout.print(f"all {len(report.artefacts)} artefacts verified: {RunDir(run_dir).export_json}")


def parse_formats(text: str) -> list[str]:
    formats = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        names = FORMATS.names()
        hint = did_you_mean(unknown[0], names) if unknown else ""
        raise EdgeKDError(
            f"unknown export format {', '.join(unknown) or repr(text)}{hint}; choose from {', '.join(names)}"
        )
    return formats


def _raise_if_failed(export_report, run_dir: Path) -> None:
    if not export_report.passed:
        raise CheckFailed(
            f"export checks failed ({'; '.join(export_report.failed_checks())}); artefacts kept, "
            f"see {RunDir(run_dir).export_json}"
        )


def _raise_if_verdict_fails(report, source: Path) -> None:
    verdict = report.verdict
    if verdict is not None and not verdict.passed:
        failed = "; ".join(c.name for c in verdict.failed)
        raise CheckFailed(f"{verdict.artefact} on {report.device.name} fails: {failed} (see {report_path(source)})")


def report_path(source: Path) -> Path:
    """report.md: in the run directory, or in a folder beside a lone artefact."""
    folder = source if source.is_dir() else source.parent / f"{source.stem}-report"
    return RunDir(folder).report_md


def _print_verdict(report, source: Path) -> None:
    verdict = report.verdict
    if verdict is not None:
        mark = "[green]PASS[/green]" if verdict.passed else "[red]FAIL[/red]"
        failed_checks = [c.name for c in verdict.checks if not c.passed]
        constraints = ", ".join(
            f"{c.name} {'ok' if c.passed else 'FAILED'} ({format_value(c.unit, c.value)}"
            f" {'of' if c.bound == 'max' else 'need ≥'} {format_value(c.unit, c.limit)})"
            for c in verdict.constraints
        )
        checks = (
            f"{len(failed_checks)} of {len(verdict.checks)} checks FAILED: {', '.join(failed_checks)}"
            if failed_checks
            else f"all {len(verdict.checks)} checks hold"
        )
        stdout.print(f"{mark} {verdict.artefact} on {report.device.name}: {constraints}; {checks}", highlight=False)
    stdout.print(f"report: {report_path(source)}")


TARGET_HELP = (
    "where to run the int8 model for real: qemu-m4 / qemu-m7 / qemu-m33 (TFLite Micro + CMSIS-NN firmware in QEMU), "
    "auto (the device's core, when the Arm toolchain and a TFLM tree are present), none"
)
TFLM_HELP = "TensorFlow Lite Micro source tree (folder or tarball) for the device run (default: $EDGEKD_TFLM)"


@app.command()
def bench(
    source: Path = typer.Argument(..., help="a run directory (after `edgekd export`) or an .onnx/.tflite file"),
    device: str = typer.Option(
        "cortex-m4", "--device", help="a bundled profile (see benchmarks/devices) or a YAML path"
    ),
    budget: str | None = typer.Option(
        None, "--budget", help="e.g. sram=256k,flash=1M,latency=100ms (default: the device's)"
    ),
    latency_seconds: float = typer.Option(1.0, "--latency-seconds", help="length of each of the five latency windows"),
    strict: bool = typer.Option(False, "--strict", help="exit 1 when the int8 model does not fit the budget"),
    target: str = typer.Option("auto", "--target", help=TARGET_HELP),
    device_images: int = typer.Option(100, "--device-images", min=1, help="test images fed through the firmware"),
    tflm: str | None = typer.Option(None, "--tflm", help=TFLM_HELP),
) -> None:
    """Accuracy, host latency, measured device figures, SRAM and flash of every artefact; a verdict and a report."""
    report = _api().bench(source, device, budget, target=target, latency_seconds=latency_seconds,
                          device_images=device_images, tflm=tflm, console=stderr)  # fmt: skip
    _print_verdict(report, source)
    if strict:
        _raise_if_verdict_fails(report, source)


@app.command()
def run(
    recipe: str = typer.Argument(..., help="recipe YAML file, or the name of a bundled recipe"),
    out: Path | None = typer.Option(None, "--out", help="run directory (default: <output_dir>/<name>)"),
    resume: bool = typer.Option(False, "--resume", help="continue a killed or finished run"),
    overwrite: bool = typer.Option(False, "--overwrite", help="delete an earlier run in the run directory first"),
    set_: list[str] = typer.Option([], "--set", help="override a recipe key, e.g. --set bench.device=stm32f746"),
    strict: bool = typer.Option(False, "--strict", help="exit 1 when the int8 model does not fit the budget"),
    tflm: str | None = typer.Option(None, "--tflm", help=TFLM_HELP),
) -> None:
    """Distil, export, benchmark and report: the whole path in one command."""
    if resume and overwrite:
        raise EdgeKDError("--resume and --overwrite contradict each other; pass one")
    result = _api().run(recipe, out, overrides=set_, resume=resume, overwrite=overwrite, tflm=tflm, console=stderr)
    if result is None:  # a torchrun process other than rank 0: it helped train
        return
    stdout.print(summary_table(result.summary))
    _print_verdict(result.report, result.run_dir)
    _raise_if_failed(result.export, result.run_dir)
    if strict:
        _raise_if_verdict_fails(result.report, result.run_dir)


@app.command()
def fit(
    device: str = typer.Option(..., "--device", help="a bundled profile or a YAML path"),
    budget: str | None = typer.Option(None, "--budget", help="e.g. sram=256k,flash=1M (default: the device's)"),
    classes: int = typer.Option(10, "--classes", min=2, help="number of classes"),
    channels: int = typer.Option(3, "--channels", help="input channels: 1 (greyscale) or 3 (colour)"),
    min_resolution: int = typer.Option(64, "--min-resolution", min=32, help="smallest input size to consider"),
    top: int = typer.Option(8, "--top", min=1, help="how many configurations to list"),
    memory: str = typer.Option(
        "groups", "--memory", help="groups: count on the export's channel-groups rewrite (export.memory: auto); none"
    ),
) -> None:
    """Which MobileNetV2-Tiny width × resolution fit the device (analytic, seconds), best first."""
    if channels not in (1, 3):
        raise EdgeKDError(f"--channels {channels}: give 1 (greyscale) or 3 (colour)")
    if memory not in ("groups", "none"):
        raise EdgeKDError(f"--memory {memory}: give groups or none")
    profile = load_device(device)
    limits = parse_budget(budget, profile)
    found = _api().fit(device, budget, classes=classes, channels=channels, min_resolution=min_resolution,
                       memory=memory)  # fmt: skip
    if not found:
        raise CheckFailed(
            f"no MobileNetV2-Tiny of width ≥ 0.35 at ≥ {min_resolution} px fits "
            f"{limits.sram_bytes / 1024:,.0f} KiB SRAM / {limits.flash_bytes / 1024:,.0f} KiB flash"
        )
    table = Table(
        title=f"fits {profile.name}: SRAM {limits.sram_bytes / 1024:,.0f} KiB, "
        f"flash {limits.flash_bytes / 1024:,.0f} KiB ({classes} classes, {channels} input channels)"
    )
    for column in ("width", "input", "MACs", "params", "activations", "arena (est.)", "flash (est.)", "rewrite"):
        table.add_column(column, justify="right")
    for c in found[:top]:
        table.add_row(
            f"{c.width:g}",
            f"{c.resolution}×{c.resolution}",
            f"{c.macs / 1e6:.1f} M",
            f"{c.parameters / 1e6:.2f} M",
            f"{c.activation_peak / 1024:,.1f} KiB",
            f"{c.arena_estimate / 1024:,.1f} KiB",
            f"{c.flash_estimate / 1024:,.1f} KiB",
            "channel groups" if c.added_ops else "none",
        )
    stdout.print(table)
    stdout.print("Ranked by MACs (the proxy for accuracy). Paste into a recipe:\n")
    stdout.print(found[0].recipe_block(channels), highlight=False, markup=False)


def summary_table(summary: Summary) -> Table:
    """The run's stages (model, size, accuracy, time) and the distillation gain, as `distill` and `run` print them."""
    # Fits an 80-column terminal: light borders, and only the model name may wrap.
    table = Table(
        title=f"{summary.recipe}: {summary.method} on {summary.dataset} ({summary.test_images} test images)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        show_edge=False,
    )
    for column in ("", "model", "params", "MACs", "test acc", "val acc", "epochs", "time"):
        table.add_column(
            column,
            justify="left" if column in ("", "model") else "right",
            no_wrap=column != "model",
            overflow="fold",
            min_width=16 if column == "model" else None,
        )
    for name in ("teacher", "baseline", "student"):
        row = getattr(summary, name)
        if row is None:
            continue
        table.add_row(
            name,
            row.model,
            f"{row.parameters / 1e6:.2f} M",
            f"{row.macs / 1e6:.1f} M",
            f"{row.accuracy:.2%}",
            "–" if row.val_accuracy is None else f"{row.val_accuracy:.2%}",
            str(row.epochs),
            f"{row.seconds:.0f} s",
        )
    notes = []
    if summary.kd_gain is not None:
        notes.append(f"distillation gain over the baseline: {summary.kd_gain * 100:+.2f} points")
    images = summary.train_images
    if images and images["students"] != images["teacher"]:
        notes.append(f"the students learn from {images['students']:,} of {images['teacher']:,} training images")
    if images and images.get("unlabelled"):
        notes.append(f"the distilled student also from {images['unlabelled']:,} unlabelled images")
    table.caption = "; ".join(notes) or None
    return table


@app.command()
def doctor(
    tflm: str | None = typer.Option(None, "--tflm", help=TFLM_HELP),
    require_device: bool = typer.Option(
        False, "--require-device", help="exit 1 unless the device run (toolchain, QEMU, TFLM tree) can happen"
    ),
) -> None:
    """What this machine has for each part of edgekd, what is missing, and how to get it."""
    table = Table(title="edgekd doctor", show_lines=False)
    for column in ("component", "status", "detail"):
        table.add_column(column, overflow="fold")
    ok, missing = "[green]ok[/green]", "[red]missing[/red]"
    for package in ("torch", "timm", "onnxruntime", "litert-torch", "ai-edge-litert", "tflite-micro"):
        try:
            table.add_row(package, ok, version(package))
        except PackageNotFoundError:
            table.add_row(package, missing, f"pip install {package}")
    device_ready = True
    for name, present, detail in firmware.toolchain_status():
        device_ready &= present
        table.add_row(
            name,
            ok if present else missing,
            detail or ("" if present else f"apt-get install {firmware.PACKAGES[name]}"),
        )
    for core, label in (("m4", "cycle-model QEMU plugin"), ("m7", "cycle-model QEMU plugin, Cortex-M7")):
        try:  # optional: without it the device run counts instructions and latency falls back to a CPI range
            table.add_row(label, ok, str(firmware.cycle_plugin(core)))
        except firmware.PluginUnsupported as exc:
            table.add_row(label, missing, f"{exc} (latency then falls back to a CPI range)")
    try:
        tree = firmware.resolve_tflm_tree(tflm)
    except firmware.DeviceSetupError as exc:
        device_ready = False
        table.add_row("TFLM tree", missing, str(exc))
    else:
        table.add_row("TFLM tree", ok, str(tree))
        cached = sorted(p.parent.name for p in (firmware.cache_dir() / "tflm-lib").glob("*/libtflm.a"))
        table.add_row(
            "TFLM library cache", ok, f"{firmware.cache_dir() / 'tflm-lib'}: {', '.join(cached) or 'none built yet'}"
        )
    stdout.print(table)
    if device_ready:
        stdout.print(
            "device run: ready (`edgekd bench --target qemu-m4|qemu-m7|qemu-m33`; `auto` uses the device's core)"
        )
    else:
        stdout.print(
            "device run: not possible here; `edgekd bench` reports the device figures as skipped. "
            f"Toolchain: {firmware.INSTALL_HINT}."
        )
        if require_device:
            raise CheckFailed("the device run needs what is marked missing above")


@app.command()
def recipes() -> None:
    """List the bundled recipes, one line each."""
    for name, path in sorted(bundled_recipes().items()):
        description = (yaml.safe_load(path.read_text()) or {}).get("description", "")
        stdout.print(
            f"[bold]{name:<34}[/bold] {escape(description.strip().splitlines()[0] if description else '')}",
            highlight=False,
            soft_wrap=True,
        )


LIST_KINDS = ("methods", "datasets", "formats", "devices")


@app.command("list")
def list_(kind: str = typer.Argument(..., help="methods, datasets, formats or devices")) -> None:
    """What is registered: distillation methods, datasets, export formats or device profiles (edgekd's
    own and those other installed packages register)."""
    if kind not in LIST_KINDS:
        raise EdgeKDError(f"cannot list '{kind}'{did_you_mean(kind, list(LIST_KINDS))}; choose {', '.join(LIST_KINDS)}")
    table = Table(box=None, pad_edge=False, show_header=True)
    for name, detail, summary in _registered(kind):
        table.add_row(f"[bold]{escape(name)}[/bold]", escape(detail), escape(summary))
    table.columns[0].header, table.columns[1].header, table.columns[2].header = kind[:-1], "", ""
    stdout.print(table)


def _registered(kind: str) -> list[tuple[str, str, str]]:
    """(name, traits, one-line description) of every entry of a registry."""
    if kind == "methods":

        def traits(entry) -> str:
            marks = [
                "no teacher" if not entry.needs_teacher else "",
                "ensemble" if entry.accepts_ensemble else "",
                "trains its teacher" if entry.trains_teacher else "",
                "default" if entry.default else "",
            ]
            return ", ".join(m for m in marks if m)

        return [(name, traits(entry), entry.summary) for name, entry in METHODS]
    if kind == "datasets":
        return [(name, "data.root" if entry.needs_root else "", entry.summary) for name, entry in DATASETS]
    if kind == "formats":
        return [(name, entry.file, entry.summary) for name, entry in FORMATS]
    return [(name, str(path.name), load_device(str(path)).description) for name, path in DEVICES]


def _on_sigterm(signum, frame) -> None:
    """SIGTERM (kill, systemd, Slurm, container runtimes) stops a run the way Ctrl-C does."""
    global _terminated
    _terminated = True
    raise KeyboardInterrupt


_terminated = False


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(usage errors, aborts) of the click that typer runs on: typer >= 0.2x carries its own copy
    (typer.exceptions), older typers use click's, so `except click.ClickException` alone misses them."""
    usage, aborts = [click.ClickException], [click.exceptions.Abort]
    try:  # optional: only typer >= 0.2x carries its own click
        from typer import exceptions as typer_exceptions  # noqa: PLC0415
        from typer._click import exceptions as own_click  # noqa: PLC0415
    except ImportError:
        pass
    else:
        usage.append(own_click.ClickException)
        aborts.append(typer_exceptions.Abort)
    return tuple(usage), tuple(aborts)


def main() -> None:
    usage_errors, aborts = _click_exceptions()
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = app(standalone_mode=False)
    except EdgeKDError as exc:
        label = "failed" if exc.exit_code == 1 else "error"
        stderr.print(f"[red]{label}:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except usage_errors as exc:  # unknown option, missing argument, a value for a flag: click's usage line
        context = getattr(exc, "ctx", None)
        if context is not None:
            stderr.print(escape(context.get_usage()), highlight=False, soft_wrap=True)
        help_hint = f"; see `{context.command_path} --help`" if context is not None else ""
        message = exc.format_message().rstrip(".")
        stderr.print(f"[red]error:[/red] {escape(message)}{help_hint}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_BAD_INPUT)
    except (*aborts, KeyboardInterrupt):
        code = EXIT_INTERRUPTED
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        stderr.print(f"[red]error:[/red] no space left on the device{where}; free some and rerun with --resume")
        sys.exit(EXIT_BAD_INPUT)
    if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C into this code
        code = EXIT_TERMINATED if _terminated else EXIT_INTERRUPTED
        what = "terminated (SIGTERM)" if _terminated else "interrupted"
        stderr.print(f"{what}; `--resume` continues from the last finished epoch", highlight=False)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
