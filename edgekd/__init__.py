"""edgekd: distil timm teachers into MCU-sized students, export them, and prove they fit.

    import edgekd
    result = edgekd.run("quickstart")          # distil, export, benchmark; see edgekd.api

The names below load on first use, so `import edgekd` (and the CLI) stays quick.
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "load_recipe": "edgekd.api",
    "distill": "edgekd.api",
    "export": "edgekd.api",
    "bench": "edgekd.api",
    "run": "edgekd.api",
    "fit": "edgekd.api",
    "RunResult": "edgekd.api",
    "from_datasets": "edgekd.data",
    "register_dataset": "edgekd.data",
    "register_method": "edgekd.methods.registry",
    "register_format": "edgekd.exporters.formats",
    "register_device": "edgekd.benchmarks.profiles",
    "EdgeKDError": "edgekd.errors",
    "Recipe": "edgekd.recipe",
    "Summary": "edgekd.rundir",
    "ExportReport": "edgekd.rundir",
    "RunDir": "edgekd.rundir",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'edgekd' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
