"""Extension points, as timm's model registry is one: methods, datasets, export formats and device
profiles each have one registry, filled by decorators in the files that define them, listed by
`edgekd list KIND`, and open to other packages through Python entry points (groups `edgekd.methods`,
`edgekd.datasets`, `edgekd.formats`, `edgekd.devices`: each entry point names a module that
registers its entries when imported) or, in one process, by calling `register` directly.

The method, dataset and format registries live here, at the bottom of the package, so that the recipe can check a name
against them without importing the modules that fill them: a registry imports its built-in modules
by name the first time it is asked.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import import_module, resources
from importlib.metadata import entry_points
from pathlib import Path
from typing import Generic, TypeVar

from edgekd.errors import EdgeKDError

T = TypeVar("T")


def did_you_mean(word: str, candidates: list[str], n: int = 1, cutoff: float = 0.5) -> str:
    """The suffix "; did you mean 'x'?" for the nearest candidate(s), or nothing."""
    close = difflib.get_close_matches(word, candidates, n=n, cutoff=cutoff)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def bundled_files(package: str) -> dict[str, Path]:
    """The YAML files shipped in one of edgekd's data packages (recipes, device profiles), by name."""
    folder = resources.files(package)
    return {Path(entry.name).stem: Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".yaml")}


class UnknownEntry(EdgeKDError):
    """A name no registry entry has."""


@dataclass
class Registry(Generic[T]):
    kind: str  # "method", "dataset", …: for messages
    group: str  # entry-point group
    builtin_modules: tuple[str, ...] = ()  # edgekd's own modules that register entries of this kind
    entries: dict[str, T] = field(default_factory=dict)
    _loaded: bool = False

    def register(self, name: str, entry: T) -> T:
        self.entries[name] = entry
        return entry

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self.builtin_modules:
            import_module(module)
        for point in entry_points(group=self.group):
            point.load()

    def names(self) -> list[str]:
        self._load()
        return sorted(self.entries)

    def get(self, name: str) -> T:
        self._load()
        if name not in self.entries:
            raise UnknownEntry(
                f"unknown {self.kind} '{name}'{did_you_mean(name, list(self.entries))} "
                f"(known: {', '.join(sorted(self.entries))})"
            )
        return self.entries[name]

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self.entries

    def __iter__(self) -> Iterator[tuple[str, T]]:
        self._load()
        return iter(sorted(self.entries.items()))


# Each names the module that registers edgekd's own entries of its kind when imported.
METHODS: Registry = Registry("method", "edgekd.methods", ("edgekd.methods.builtin",))
DATASETS: Registry = Registry("dataset", "edgekd.datasets", ("edgekd.datasets.builtin",))
FORMATS: Registry = Registry("export format", "edgekd.formats", ("edgekd.exporters.formats",))


def default_method() -> str:
    """The method a recipe without `distill.method` uses (the entry registered with default=True)."""
    return next(name for name, entry in METHODS if entry.default)
