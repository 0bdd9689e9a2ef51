"""Python side of the compiled ops (fastmsfd._C): fake implementations for torch.compile, the autograd formula
of the distance, and the backend functions (run, layer_distance) the dispatcher calls for "cpp" and "cuda"."""
from __future__ import annotations

import torch

from .. import _C  # loads the library that registers torch.ops.fastmsfd.*
from . import reference
from .autograd import register_distance_autograd

_ops = torch.ops.fastmsfd
# Read once, at import: the dispatcher (dispatch.py) runs inside torch.compile'd code, where Dynamo cannot call pybind
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
    return _ops.distance_map(t, s, float(alpha), float(beta))


def run(teacher_feats, student_feats, p: reference.Plan, alpha: float, beta: float):
    """Backends "cpp" (CPU tensors) and "cuda" (CUDA tensors): the whole fused op in one call of the compiled op,
    which dispatches on the tensors' device."""
    return _ops.anomaly_map(list(teacher_feats), list(student_feats), list(p.g_rows), list(p.g_cols),
                            list(p.weights), float(alpha), float(beta), p.mode_index, p.blur_rows, p.blur_cols,
                            p.topk_count)


def layer_distance(t: torch.Tensor, s: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """d_l for the loss: one pass over the features forward, one backward (the registered autograd formula)."""
    return _ops.distance_forward(t, s, float(alpha), float(beta))[0]
