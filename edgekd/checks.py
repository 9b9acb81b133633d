"""A check: a measured value against a limit, with its margin and what it is based on. Export
verification and the benchmark verdict both speak in checks, so a failed export check is a failed
verdict, shown with its numbers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Unit = Literal["bytes", "ms", "fraction", "points", "count", "number", "check"]


class Check(BaseModel):
    name: str
    value: float
    limit: float
    unit: Unit
    bound: Literal["max", "min"] = Field("max", description="max: value must not exceed limit; min: not fall below")
    margin: float = Field(description="how far inside the limit the value is: negative when it fails")
    passed: bool
    basis: str = Field(description="what the value is and how it was obtained")


def check(name: str, value: float, limit: float, unit: Unit, basis: str, *, bound: str = "max") -> Check:
    """A value equal to its limit passes."""
    margin = limit - value if bound == "max" else value - limit
    return Check(
        name=name, value=value, limit=limit, unit=unit, bound=bound, margin=margin, passed=margin >= -1e-12, basis=basis
    )


def holds(name: str, ok: bool, basis: str) -> Check:
    """A yes/no check (1 = holds), e.g. "the C array compiles"."""
    return check(name, 1.0 if ok else 0.0, 1.0, "check", basis, bound="min")


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.passed]
