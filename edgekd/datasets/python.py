"""`dataset: python`: data handed in from Python rather than loaded by name."""

from __future__ import annotations

from edgekd.config import DataConfig
from edgekd.data import DataBundle, register_dataset
from edgekd.errors import DataError


@register_dataset("python")
def given_in_python(config: DataConfig, seed: int) -> DataBundle:
    """Datasets handed to edgekd.distill(..., data=...) in Python; a recipe cannot load them by name."""
    del config, seed
    raise DataError(
        "data.dataset: python means the data is handed in from Python (edgekd.distill(recipe, data=...)); "
        "the command line needs a dataset it can load, see `edgekd list datasets`"
    )
