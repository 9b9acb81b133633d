"""A check: a measured value against a limit, with its margin and what it is based on. Export
verification and the benchmark verdict both speak in checks, so a failed export check is a failed
verdict, shown with its numbers."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, Field

Unit = Literal["bytes", "ms", "fraction", "points", "count", "number", "check"]


class Check(BaseModel):
    name: str
    value: float
    limit: float
    unit: Unit
    bound: Literal["max", "min"] = Field("max", description="max: value must not exceed limit; min: not fall below")
    margin: float = Field(
        description="how far inside the limit the value is: negative beyond it (a statistical check, see "
        "`accuracy_drop`, may still pass there when the excess is within what chance explains)"
    )
    passed: bool
    basis: str = Field(description="what the value is and how it was obtained")


def check(name: str, value: float, limit: float, unit: Unit, basis: str, *, bound: str = "max") -> Check:
    """A value equal to its limit passes."""
    margin = limit - value if bound == "max" else value - limit
    return Check(
        name=name, value=value, limit=limit, unit=unit, bound=bound, margin=margin, passed=margin >= -1e-12, basis=basis
    )


SIGNIFICANCE = 0.05  # a statistical check fails when chance alone would give its result less often than this


def accuracy_drop(name: str, lost: int, gained: int, images: int, limit: float, context: str) -> Check:
    """The accuracy an int8 artefact gives up against its float model on the same `images` test images:
    `lost` images the float model classified right and the artefact wrong, `gained` the other way round.

    Only those discordant images carry information about the drop, and on a few hundred images one of
    them moves the drop by a few tenths of a point, so "drop ≤ limit" read literally turns on single
    images (another CPU trains a slightly different float model). The check therefore fails only when
    the drop exceeds `limit` significantly: an exact one-sided binomial test on the discordant images
    (McNemar's test shifted to the margin). If the true drop were `limit`, an image that is discordant
    is a loss with probability p0 = (1 + limit · images / discordant) / 2; the check fails when
    P(X ≥ lost), X ~ Binomial(discordant, p0), is below SIGNIFICANCE."""
    drop = (lost - gained) / images
    discordant = lost + gained
    allowed = limit * images  # images the drop may cost
    p0 = min(1.0, (1 + allowed / discordant) / 2) if discordant else 1.0
    p_value = sum(math.comb(discordant, k) * p0**k * (1 - p0) ** (discordant - k) for k in range(lost, discordant + 1))
    passed = drop <= limit + 1e-12 or p_value >= SIGNIFICANCE
    verdict = (
        "within the limit"
        if drop <= limit + 1e-12
        else f"above the limit by chance alone with p = {p_value:.2f} ≥ {SIGNIFICANCE}"
        if passed
        else f"significantly above the limit (p = {p_value:.3f} < {SIGNIFICANCE})"
    )
    basis = (
        f"{context}; {lost} test images lost, {gained} gained of {images}: {verdict} "
        "(exact one-sided binomial test on the discordant images)"
    )
    return Check(name=name, value=drop, limit=limit, unit="fraction", bound="max", margin=limit - drop, passed=passed,
                 basis=basis)  # fmt: skip


def holds(name: str, ok: bool, basis: str) -> Check:
    """A yes/no check (1 = holds), e.g. "the C array compiles"."""
    return check(name, 1.0 if ok else 0.0, 1.0, "check", basis, bound="min")


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.passed]


_SHOWN = {
    "bytes": lambda value: f"{value / 1024:,.1f} KiB",
    "ms": lambda value: f"{value:,.2f} ms",
    "fraction": lambda value: f"{value:.2%}",
    "count": lambda value: f"{value:,.0f}",
    "number": lambda value: f"{value:,.0f}",
}


def format_value(unit: str, value: float | None) -> str:
    """A check's value or limit as the report and the console show it."""
    if value is None:
        return "–"
    return _SHOWN.get(unit, lambda number: f"{number:,g}")(value)
