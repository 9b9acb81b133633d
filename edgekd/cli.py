"""`edgekd` command line. Exit codes: 0 ok, 1 a budget or check failed, 2 bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from edgekd.errors import EdgeKDError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Distil timm teachers into MCU-sized students, export them, and prove they fit.",
)
# Pipes and CI logs get a fixed width wide enough for the result tables (rich defaults to 80).
stdout = Console(width=None if sys.stdout.isatty() else 110)
stderr = Console(stderr=True, width=None if sys.stderr.isatty() else 110)

EXIT_INTERRUPTED = 130


@app.command()
def distill(
    recipe: str = typer.Argument(..., help="recipe YAML file, or the name of a bundled recipe (see `edgekd recipes`)"),
    out: Path | None = typer.Option(None, "--out", help="run directory (default: <output_dir>/<name> from the recipe)"),
    resume: bool = typer.Option(False, "--resume", help="continue a killed or finished run from its checkpoints"),
    overwrite: bool = typer.Option(False, "--overwrite", help="delete an earlier run in the run directory first"),
    set_: list[str] = typer.Option([], "--set", help="override a recipe key, e.g. --set distill.epochs=3 (repeatable)"),
) -> None:
    """Train the teacher (if needed), the baseline student and the distilled student; print the gain."""
    from edgekd.pipeline import default_run_dir, summary_table
    from edgekd.pipeline import distill as run_distill
    from edgekd.recipe import load_recipe

    if resume and overwrite:
        raise EdgeKDError("--resume and --overwrite contradict each other; pass one")
    loaded = load_recipe(recipe, set_)
    run_dir = out if out is not None else default_run_dir(loaded)
    summary = run_distill(loaded, run_dir, resume=resume, overwrite=overwrite, console=stderr)
    stdout.print(summary_table(summary))
    stdout.print(f"run directory: {run_dir}")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="a run directory written by `edgekd distill`"),
    formats: str | None = typer.Option(
        None,
        "--formats",
        help="comma-separated: onnx,onnx-int8,tflite,tflite-int8,c-array (default: the recipe's export.formats)",
    ),
) -> None:
    """Export the distilled student to device artefacts and verify each one against PyTorch."""
    from edgekd.exporters.export import export_run, parse_formats

    chosen = parse_formats(formats) if formats is not None else None
    report = export_run(run_dir, chosen, console=stderr)
    stdout.print(f"all {len(report['artefacts'])} artefacts verified: {run_dir / 'artefacts' / 'export.json'}")


@app.command()
def recipes() -> None:
    """List the bundled recipes, one line each."""
    import yaml

    from edgekd.recipe import bundled_recipes

    for name, path in sorted(bundled_recipes().items()):
        description = (yaml.safe_load(path.read_text()) or {}).get("description", "")
        stdout.print(
            f"[bold]{name:<34}[/bold] {escape(description.strip().splitlines()[0] if description else '')}",
            highlight=False,
            soft_wrap=True,
        )


def main() -> None:
    import click

    try:
        code = app(standalone_mode=False)
    except EdgeKDError as exc:
        label = "failed" if exc.exit_code == 1 else "error"
        stderr.print(f"[red]{label}:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # usage errors: unknown option, missing argument
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C into this code
        stderr.print("interrupted; `--resume` continues from the last finished epoch")
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
