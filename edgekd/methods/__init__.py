"""Distillation methods, one file each. Adding a method = a file here (its recipe section, the method, and
`@register_method`) and its line in `builtin.py`, or the same in another package, registered through the
`edgekd.methods` entry point group; `edgekd list methods` shows them all."""

from edgekd.methods.base import DistillMethod, FrozenTeacherMethod
from edgekd.methods.plain import Plain
from edgekd.methods.registry import MethodContext, MethodEntry, build_method, register_method
from edgekd.registry import METHODS, default_method

__all__ = [
    "METHODS",
    "DistillMethod",
    "FrozenTeacherMethod",
    "MethodContext",
    "MethodEntry",
    "Plain",
    "build_method",
    "default_method",
    "register_method",
]
