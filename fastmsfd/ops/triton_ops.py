"""Backend "triton": the Triton kernels of fastmsfd.kernels (which import nothing of fastmsfd), adapted to the
plan every backend shares (reference.Plan), with their autograd registered here, as compiled.py does for the
C++/CUDA ops. CUDA tensors, or the CPU under TRITON_INTERPRET=1 for testing."""
from __future__ import annotations

from ..kernels import anomaly_map, distance
from .autograd import register_distance_autograd

register_distance_autograd("fastmsfd::triton_distance_forward", distance.distance_backward)

# the loss's per-layer term: one fused pass forward, one backward (kernels/distance.py)
layer_distance = distance.layer_distance


def run(teacher_feats, student_feats, p, alpha: float, beta: float):
    """The fused op for a reference.Plan: heatmap (B, H, W) float32 and image score (B,)."""
    return anomaly_map.fused_anomaly_map(list(teacher_feats), list(student_feats), list(p.g_rows), list(p.g_cols),
                                         list(p.weights), float(alpha), float(beta), p.mode_index, p.blur_rows,
                                         p.blur_cols, p.topk_count)
