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


def anomaly_map(teacher_feats, student_feats, out_size, weights, alpha, beta, sigmas, radii, aggregate,
                topk=None, blur_sigma=None):
    """Compiled per-layer distances; up-sampling and aggregation as in the reference."""
    shapes = [tuple(t.shape[-2:]) for t in teacher_feats]
    fold = aggregate in ("sum", "mean")
    mats = ref.upsampling_matrices(shapes, out_size, sigmas, radii, blur_sigma, fold, teacher_feats[0].device)
    maps = [ref.upsample(distance_map(t, s, alpha, beta), gr, gc)
            for t, s, (gr, gc) in zip(teacher_feats, student_feats, mats)]
    heat = ref.aggregate(maps, weights, aggregate)
    if blur_sigma and not fold:
        H, W = out_size
        heat = ref.upsample(heat, ref.gaussian_matrix(H, H, blur_sigma, None, heat.device),
                            ref.gaussian_matrix(W, W, blur_sigma, None, heat.device))
    return heat, ref.image_score(heat, topk)
