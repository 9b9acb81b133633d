"""Datasets, one file each. Adding a dataset = a file here (a loader `(config, seed) → DataBundle`, its data
section if it has options of its own, and `@register_dataset`) and its line in `builtin.py`, or the same in
another package, registered through the `edgekd.datasets` entry point group; `edgekd list datasets` shows them
all."""
