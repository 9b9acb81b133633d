"""edgekd's cache folder (TFLM libraries, unpacked TFLM trees, the memory format each model trains
fastest in on this machine): $EDGEKD_CACHE, else $XDG_CACHE_HOME/edgekd or ~/.cache/edgekd."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "EDGEKD_CACHE"


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgekd"
