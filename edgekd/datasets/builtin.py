"""edgekd's own datasets: importing this module registers them (the dataset registry does, the first
time it is asked for a name). A new dataset file adds its line here."""

from edgekd.datasets import cifar, digits, imagefolder, mnist5k, python, synthetic

__all__ = ["cifar", "digits", "imagefolder", "mnist5k", "python", "synthetic"]
