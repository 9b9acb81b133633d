"""edgekd: distil timm teachers into MCU-sized students, export them, and prove they fit."""

__version__ = "0.1.0"
