"""fastmsfd.ops: the fused MSFD op and the distillation loss, validated once and dispatched to a backend.

`backend="auto"` picks the fastest available backend for the device and dtype; `backend_status()` tells which
backends exist here and, for each missing one, why. `last_backend()` names the one the last call used.

    reference.py  the spec in code, plan() (the set-up every backend shares) and the reference backend
    dispatch.py   Backend records (reference / cpp / cuda / triton) and the choice between them
    compiled.py   the C++/CUDA ops of fastmsfd._C: wrappers and fake implementations
    autograd.py   the distance's autograd formula, shared by the compiled and Triton ops
"""
from __future__ import annotations

import math
import threading
from typing import Sequence

import torch

from . import reference
from .dispatch import BACKENDS, backend_status, select

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_state = threading.local()


def select_backend(backend: str, device: torch.device, op: str = "anomaly_map",
                   dtype: torch.dtype = torch.float32) -> tuple[str, list[str]]:
    """The backend `backend` resolves to for tensors on `device` and, for "auto", why faster ones were skipped."""
    chosen, skipped = select(backend, device, dtype)
    return chosen.name, skipped


def last_backend() -> tuple[str, list[str]] | None:
    """(backend used, reasons faster ones were skipped) for this thread's last ops call."""
    return getattr(_state, "last", None)


# ---- validation -----------------------------------------------------------------------------------------

def _check_feats(teacher_feats, student_feats) -> None:
    if isinstance(teacher_feats, torch.Tensor) or isinstance(student_feats, torch.Tensor):
        raise ValueError("teacher_feats and student_feats must be lists of (B, C, h, w) tensors, one per layer")
    if len(teacher_feats) == 0 or len(teacher_feats) != len(student_feats):
        raise ValueError(f"need the same number (>= 1) of teacher and student layers, "
                         f"got {len(teacher_feats)} and {len(student_feats)}")
    if len(teacher_feats) > reference.MAX_LAYERS:
        raise ValueError(f"at most {reference.MAX_LAYERS} layers (every backend's cap), got {len(teacher_feats)}")
    batch, device = None, teacher_feats[0].device
    for i, (t, s) in enumerate(zip(teacher_feats, student_feats)):
        if t.dim() != 4 or t.shape != s.shape:
            raise ValueError(f"layer {i}: teacher {tuple(t.shape)} and student {tuple(s.shape)} must be the "
                             "same (B, C, h, w) shape")
        if t.dtype not in FLOAT_DTYPES or s.dtype != t.dtype:
            raise ValueError(f"layer {i}: features must share one float dtype, got {t.dtype} and {s.dtype}")
        if t.device != device or s.device != device:
            raise ValueError(f"layer {i}: all features must be on one device ({device}), got {t.device}, {s.device}")
        if min(t.shape) == 0:
            raise ValueError(f"layer {i}: empty feature tensor {tuple(t.shape)}")
        if batch is not None and t.shape[0] != batch:
            raise ValueError(f"layer {i}: batch {t.shape[0]} differs from layer 0's {batch}")
        batch = t.shape[0]


def _per_layer(value, n: int, name: str, default) -> list:
    if value is None:
        return list(default)
    if isinstance(value, (int, float)):
        value = [value] * n
    value = [None if v is None else float(v) for v in value]
    if len(value) != n:
        raise ValueError(f"{name} needs one value per layer ({n}), got {len(value)}")
    return value


def _check_finite(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


# ---- public ops -----------------------------------------------------------------------------------------

def anomaly_map(teacher_feats: Sequence[torch.Tensor], student_feats: Sequence[torch.Tensor],
                out_size: tuple[int, int], layer_weights: Sequence[float] | None = None,
                alpha: float = 1.0, beta: float = 1.0, sigmas: Sequence[float] | None = None,
                radii: Sequence[float | None] | None = None, aggregate: str = "sum", backend: str = "auto",
                topk: float | None = None, blur_sigma: float | None = None,
                upsampling: str = "gaussian") -> tuple[torch.Tensor, torch.Tensor]:
    """Fused MSFD anomaly map: heatmap (B, H, W) float32 and image score (B,) float32 (DESIGN.md contract).

    upsampling="bilinear" replaces the Gaussian receptive-field matrices by bilinear interpolation (the STPM-style
    baseline, for ablations); only the reference backend implements it ("auto" falls back to it, with the reason).

    NaN/inf in a feature propagates to that image's heatmap and score, never to a finite wrong number.
    """
    _check_feats(teacher_feats, student_feats)
    H, W = (int(out_size), int(out_size)) if isinstance(out_size, int) else (int(out_size[0]), int(out_size[1]))
    if H < 1 or W < 1:
        raise ValueError(f"out_size must be positive, got {out_size}")
    n = len(teacher_feats)
    shapes = [tuple(t.shape[-2:]) for t in teacher_feats]
    weights = [_check_finite("layer weight", w) for w in _per_layer(layer_weights, n, "layer_weights", [1.0] * n)]
    sigmas = _per_layer(sigmas, n, "sigmas", reference.default_sigmas(shapes, (H, W)))
    radii = _per_layer(radii, n, "radii", [None] * n)
    for sg in sigmas:
        if sg is None or not math.isfinite(sg) or sg <= 0:
            raise ValueError(f"sigmas must be positive finite numbers, got {sigmas}")
    if aggregate not in reference.AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {reference.AGGREGATIONS}, got {aggregate!r}")
    if topk is not None and not 0 < topk <= 1:
        raise ValueError(f"topk is a fraction of the heatmap in (0, 1], got {topk}")
    if blur_sigma is not None and (not math.isfinite(blur_sigma) or blur_sigma < 0):
        raise ValueError(f"blur_sigma must be >= 0, got {blur_sigma}")
    alpha, beta = _check_finite("alpha", alpha), _check_finite("beta", beta)
    if upsampling not in reference.UPSAMPLINGS:
        raise ValueError(f"upsampling must be one of {reference.UPSAMPLINGS}, got {upsampling!r}")
    if upsampling != "gaussian" and backend not in ("auto", "reference"):
        raise RuntimeError(f"backend {backend!r} implements Gaussian up-sampling only; "
                           f"upsampling={upsampling!r} runs on backend='reference'")
    device = teacher_feats[0].device
    chosen, skipped = select(backend if upsampling == "gaussian" else "reference", device, teacher_feats[0].dtype)
    if upsampling != "gaussian":
        skipped = [f"fused backends: Gaussian up-sampling only, not {upsampling}"]
    _state.last = (chosen.name, skipped)
    plan = reference.plan(shapes, (H, W), weights, sigmas, radii, aggregate, topk, blur_sigma or None, device,
                          upsampling)
    return chosen.load().run(teacher_feats, student_feats, plan, alpha, beta)


def distill_loss(teacher_feats: Sequence[torch.Tensor], student_feats: Sequence[torch.Tensor],
                 alpha: float = 1.0, beta: float = 1.0, layer_weights: Sequence[float] | None = None,
                 backend: str = "auto") -> torch.Tensor:
    """Mean combined distance over batch and cells, summed (optionally weighted) over layers; a scalar.

    The gradient flows to the student features only (the teacher is frozen).
    """
    _check_feats(teacher_feats, student_feats)
    n = len(teacher_feats)
    weights = [_check_finite("layer weight", w) for w in _per_layer(layer_weights, n, "layer_weights", [1.0] * n)]
    alpha, beta = _check_finite("alpha", alpha), _check_finite("beta", beta)
    chosen, skipped = select(backend, teacher_feats[0].device, teacher_feats[0].dtype)
    _state.last = (chosen.name, skipped)
    teacher_feats = [t.detach() for t in teacher_feats]
    return reference.distill_loss(teacher_feats, student_feats, alpha, beta, weights,
                                  distance=chosen.load().layer_distance)


__all__ = ["BACKENDS", "FLOAT_DTYPES", "anomaly_map", "backend_status", "distill_loss", "last_backend",
           "select_backend"]
