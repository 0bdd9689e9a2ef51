"""Python side of the compiled ops (fastmsfd._C): fake implementations for torch.compile and the wrappers
that ops.py dispatches to as backend "cpp"."""
from __future__ import annotations

import torch

from . import _C  # noqa: F401  (loads the library that registers torch.ops.fastmsfd.*)
from . import anomaly_map as ref


@torch.library.register_fake("fastmsfd::distance_map")
def _distance_map_fake(t, s, alpha, beta):
    return t.new_empty((t.shape[0], t.shape[2], t.shape[3]), dtype=torch.float32)


def distance_map(t: torch.Tensor, s: torch.Tensor, alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """Per-cell combined distance (B, h, w) float32, computed in one pass over the channels."""
    if t.dtype == torch.float64:  # the kernels accumulate in float32; float64 stays on the reference path
        return ref.combined_distance(t, s, alpha, beta)
    return torch.ops.fastmsfd.distance_map(t, s, float(alpha), float(beta))


def anomaly_map(*args, **kwargs):
    """Compiled per-layer distances; up-sampling and aggregation as in the reference."""
    return ref.anomaly_map(*args, distance=distance_map, **kwargs)
