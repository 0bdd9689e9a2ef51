"""Python side of the compiled ops (fastmsfd._C): fake implementations for torch.compile, the autograd formula
of the distance, and the wrappers that ops.py dispatches to as backend "cpp" (CPU) and "cuda"."""
from __future__ import annotations

import torch

from . import _C  # noqa: F401  (loads the library that registers torch.ops.fastmsfd.*)
from . import anomaly_map as ref
from .distance_autograd import register_distance_autograd

_ops = torch.ops.fastmsfd
# Read once, at import: ops.py's dispatcher runs inside torch.compile'd code, where Dynamo cannot call pybind
# functions (fullgraph=True fails on them); a module constant it can.
HAS_CUDA = bool(_C.has_cuda())


@torch.library.register_fake("fastmsfd::distance_map")
def _distance_map_fake(t, s, alpha, beta):
    return t.new_empty((t.shape[0], t.shape[2], t.shape[3]), dtype=torch.float32)


@torch.library.register_fake("fastmsfd::distance_forward")
def _distance_forward_fake(t, s, alpha, beta):
    B, _, h, w = t.shape
    return t.new_empty((B, h, w), dtype=torch.float32), t.new_empty((B, h, w, 4), dtype=torch.float32)


@torch.library.register_fake("fastmsfd::distance_backward")
def _distance_backward_fake(grad_d, t, s, stats, alpha, beta):
    return torch.empty_like(s)


@torch.library.register_fake("fastmsfd::anomaly_map")
def _anomaly_map_fake(teacher, student, g_rows, g_cols, weights, alpha, beta, mode, blur_rows, blur_cols, k):
    B = teacher[0].shape[0]
    heat = teacher[0].new_empty((B, g_rows[0].shape[0], g_cols[0].shape[0]), dtype=torch.float32)
    return heat, heat.new_empty((B,))


register_distance_autograd("fastmsfd::distance_forward", _ops.distance_backward)


def distance_map(t: torch.Tensor, s: torch.Tensor, alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """Per-cell combined distance (B, h, w) float32, computed in one pass over the channels."""
    if t.dtype == torch.float64:  # the kernels accumulate in float32; float64 stays on the reference path
        return ref.combined_distance(t, s, alpha, beta)
    return _ops.distance_map(t, s, float(alpha), float(beta))


def anomaly_map(teacher_feats, student_feats, out_size, layer_weights, alpha, beta, sigmas, radii, aggregate_mode,
                topk=None, blur_sigma=None):
    """The whole fused op in one call: distances, banded Gaussian up-sampling, aggregation and image score."""
    if teacher_feats[0].dtype == torch.float64:
        return ref.anomaly_map(teacher_feats, student_feats, out_size, layer_weights, alpha, beta, sigmas, radii,
                               aggregate_mode, topk, blur_sigma)
    H, W = out_size
    shapes = [tuple(t.shape[-2:]) for t in teacher_feats]
    fold = aggregate_mode in ("sum", "mean")
    mats = ref.upsampling_matrices(shapes, out_size, sigmas, radii, blur_sigma, fold, teacher_feats[0].device)
    blur_rows = blur_cols = None
    if blur_sigma and not fold:
        device = teacher_feats[0].device
        blur_rows = ref.gaussian_matrix(H, H, blur_sigma, None, device)
        blur_cols = ref.gaussian_matrix(W, W, blur_sigma, None, device)
    k = 0 if topk is None else ref.topk_count(topk, H * W)
    return _ops.anomaly_map(list(teacher_feats), list(student_feats), [m[0] for m in mats], [m[1] for m in mats],
                            [float(w) for w in layer_weights], float(alpha), float(beta),
                            ref.AGGREGATIONS.index(aggregate_mode), blur_rows, blur_cols, k)


def distill_loss(teacher_feats, student_feats, alpha, beta, layer_weights):
    """sum_l w_l * mean(d_l): one pass over the features forward, one backward (the reference makes several)."""
    if teacher_feats[0].dtype == torch.float64:
        return ref.distill_loss(teacher_feats, student_feats, alpha, beta, layer_weights)
    total = None
    for w, t, s in zip(layer_weights, teacher_feats, student_feats):
        d, _ = _ops.distance_forward(t, s, float(alpha), float(beta))
        term = w * d.mean()
        total = term if total is None else total + term
    return total
