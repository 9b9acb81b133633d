"""Memory rewrites of the int8 TFLite graph: the same arithmetic, in an operator order whose large
tensors never all live at once, so stock TensorFlow Lite Micro needs a smaller arena.

TFLite Micro runs operators in file order and keeps a tensor from the op that writes it to the last op
that reads it. In MobileNetV2 the peak is a block whose expand conv writes a wide tensor that only the
depthwise conv reads (at 144 px, stage 1's first block: 72×72×48 expanded, 36×36×48 after the stride-2
depthwise, both live at once). Two rewrites take it apart: channel groups (`channel_groups.py`, no extra
MACs) and spatial patches (`spatial_patches.py`, MCUNetV2's patch-based inference in builtin operators,
a few percent more MACs for the halos). This module picks between them for `export.memory`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.benchmarks.compute import layer_macs
from edgekd.benchmarks.memory import MemoryProfile, analyse
from edgekd.exporters.channel_groups import describe, group_sites, plan_groups, split_channel_groups
from edgekd.exporters.graph_edit import RewriteError
from edgekd.exporters.runtimes import measure_arena
from edgekd.exporters.spatial_patches import cut_points, split_spatial_patches

PATCH_GRIDS = ((2, 2), (3, 3), (4, 4))
MAX_PATCHED_MACS = 0.25  # the prefix a patch search cuts: at most this share of the model's MACs


@dataclass
class Candidate:
    """One rewritten graph and what it costs."""

    data: bytes
    what: str  # for the log and export.json
    rewrite: str  # groups, patches or patches+groups
    arena: dict[str, int]
    macs: int
    options: dict


def _macs(data: bytes) -> int:
    """Multiply-accumulates of the convolutions and fully connected layers (a rewrite's extra work)."""
    return sum(layer.macs for layer in layer_macs(data) if layer.op_class != "other")


def _arena(data: bytes, scratch: Path) -> dict[str, int]:
    scratch.write_bytes(data)
    return measure_arena(scratch)


def _grouped(data: bytes, groups: int | None, target: int | None, scratch: Path) -> Candidate | None:
    """Channel groups at the blocks that make the peak (see channel_groups.plan_groups), or None."""
    chosen = plan_groups(data, groups=groups, target=target)
    if not chosen:
        return None
    rewritten, _ = split_channel_groups(data, chosen)
    sites = {site.conv: site for site in group_sites(data)}
    blocks = "; ".join(f"{describe(data, sites[conv])} in {count} groups" for conv, count in sorted(chosen.items()))
    options = {"groups": {str(conv): count for conv, count in sorted(chosen.items())}}
    return Candidate(rewritten, f"channel groups at {blocks}", "groups", _arena(rewritten, scratch),
                     _macs(rewritten), options)  # fmt: skip


def _patch_cuts(data: bytes) -> list[int]:
    """Where a patch search cuts: block outputs (a cut point whose output no depthwise conv reads) within
    the first MAX_PATCHED_MACS of the MACs, where the maps are large and the halos cheap."""
    layers = layer_macs(data)
    total = sum(layer.macs for layer in layers if layer.op_class != "other")
    prefix = np.cumsum([layer.macs if layer.op_class != "other" else 0 for layer in layers])
    depthwise_inputs = {site.conv for site in group_sites(data)}
    return [cut for cut in cut_points(data) if prefix[cut] <= MAX_PATCHED_MACS * total and cut not in depthwise_inputs]


def _patched(data: bytes, cut: int, grid: tuple[int, int], groups: int | None, scratch: Path) -> Candidate:
    """Spatial patches up to `cut`, then channel groups wherever they still lower the peak."""
    rewritten, _ = split_spatial_patches(data, cut, grid)
    what = f"spatial patches {grid[0]}x{grid[1]} up to op {cut}"
    options = {"patches": {"cut": cut, "grid": list(grid)}}
    grouped = _grouped(rewritten, groups, None, scratch)
    if grouped is not None:
        return Candidate(grouped.data, f"{what}, then {grouped.what} (of the patched graph)", "patches+groups",
                         grouped.arena, grouped.macs, {**options, **grouped.options})  # fmt: skip
    return Candidate(rewritten, what, "patches", _arena(rewritten, scratch), _macs(rewritten), options)


def _patch_candidates(data: bytes, settings, scratch: Path) -> list[Candidate]:
    cuts = [settings.memory_cut] if settings.memory_cut is not None else _patch_cuts(data)
    grids = [tuple(settings.memory_grid)] if settings.memory_grid is not None else PATCH_GRIDS
    found = []
    for cut in cuts:
        for grid in grids:
            try:
                found.append(_patched(data, cut, grid, settings.memory_groups, scratch))
            except RewriteError:
                if settings.memory_cut is not None or settings.memory_grid is not None:
                    raise  # the user's option does not fit the graph
    return found


def _choose(
    data: bytes, settings, sram_budget: int, before: dict[str, int], profile: MemoryProfile, scratch: Path
) -> tuple[Candidate | None, str]:
    """The rewrite export.memory asks for, and why (None: keep the graph). `before`, `profile`: the converted
    graph's arena and memory profile."""
    mode = settings.memory
    if mode == "groups":
        return _grouped(data, settings.memory_groups, None, scratch), "export.memory: groups"
    if mode == "patches":
        found = _patch_candidates(data, settings, scratch)
        return min(found, key=lambda c: (c.arena["total"], c.macs), default=None), "export.memory: patches"
    # auto: the least extra work that fits; the arena moves with the activations' peak, the rest stays.
    target = sram_budget - (before["total"] - profile.peak_bytes)
    grouped = _grouped(data, settings.memory_groups, target, scratch)
    if grouped is not None and grouped.arena["total"] <= sram_budget:
        return grouped, "the fewest channel groups that fit, no extra MACs"
    found = [c for c in [grouped, *_patch_candidates(data, settings, scratch)] if c is not None]
    fitting = [c for c in found if c.arena["total"] <= sram_budget]
    if fitting:
        return min(fitting, key=lambda c: c.macs), "channel groups alone do not fit; the fewest extra MACs that do"
    return min(found, key=lambda c: (c.arena["total"], c.macs), default=None), "no rewrite fits; the smallest arena"


def rewrite_for_memory(path: Path, settings, sram_budget: int) -> dict:
    """Apply export.memory (`settings`: the recipe's export section) to the int8 model at `path`, rewritten
    in place (the unrewritten graph is kept beside it as `<name>.unrewritten.tflite`, for the bit-identity
    check and the report), and say what was done and why. `auto`: nothing when the arena fits
    `sram_budget`; else channel groups with the fewest groups that fit; else spatial patches (+ groups),
    the fit with the fewest extra MACs; else the smallest arena any of them reaches."""
    data = path.read_bytes()
    before = measure_arena(path)
    profile = analyse(data)
    found = {"mode": settings.memory, "rewrite": "none", "arena_before": before, "flash_before": len(data),
             "static_peak_before": profile.peak_bytes, "macs_before": _macs(data)}  # fmt: skip
    if settings.memory == "none":
        return {**found, "reason": "export.memory: none"}
    if settings.memory == "auto" and before["total"] <= sram_budget:
        fits = f"the arena ({before['total']:,} B) fits the SRAM budget ({sram_budget:,} B) as exported"
        return {**found, "reason": fits}
    with tempfile.TemporaryDirectory() as folder:
        chosen, why = _choose(data, settings, sram_budget, before, profile, Path(folder) / "candidate.tflite")
    if chosen is None or chosen.arena["total"] >= before["total"]:
        where = f"op {profile.peak_layer} ({profile.peak.op})"
        return {**found, "reason": f"no rewrite lowers the arena (its peak is at {where}); the graph is kept"}
    original = path.with_suffix(".unrewritten.tflite")
    original.write_bytes(data)
    path.write_bytes(chosen.data)
    after = chosen.arena  # measured on these very bytes while choosing
    verdict = "under" if after["total"] <= sram_budget else "still above"
    extra = chosen.macs / found["macs_before"] - 1
    reason = (f"{chosen.what}: arena {before['total']:,} → {after['total']:,} B, {verdict} the SRAM budget of "
              f"{sram_budget:,} B, {extra:+.2%} MACs ({why})")  # fmt: skip
    return {
        **found,
        **chosen.options,
        "rewrite": chosen.rewrite,
        "unrewritten": original.name,
        "arena_after": after,
        "static_peak_after": analyse(chosen.data).peak_bytes,
        "flash_after": len(chosen.data),
        "macs_after": chosen.macs,
        "layer_live_bytes_before": [layer.live_bytes for layer in profile.layers],
        "reason": reason,
    }
