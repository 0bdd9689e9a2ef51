"""The one dispatcher: validates arguments and picks a backend (reference / cpp / cuda / triton) per device.

`backend="auto"` picks the fastest available backend for the device and dtype; `backend_status()` tells which
backends exist here and, for each missing one, why. `last_backend()` names the one the last call used.
"""
from __future__ import annotations

import math
import threading
from typing import Callable, Sequence

import torch

from . import anomaly_map as ref

BACKENDS = ("reference", "cpp", "cuda", "triton")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_state = threading.local()


# ---- backend discovery ---------------------------------------------------------------------------------

def _load_ext():
    try:
        from . import cpp_backend
    except (ImportError, OSError) as exc:  # not built, or built against another torch
        return f"extension fastmsfd._C not usable ({exc})"
    if "cpp" not in _IMPLS["anomaly_map"]:
        for backend in ("cpp", "cuda"):  # one set of wrappers; the op dispatches on the tensors' device
            register_impl("anomaly_map", backend, cpp_backend.anomaly_map)
            register_impl("distill_loss", backend, cpp_backend.distill_loss)
    return None


def _cpp_reason(device: torch.device) -> str | None:
    why = _load_ext()
    if why:
        return why
    if device.type != "cpu":
        return "cpp runs on CPU tensors only"
    return None


def _cuda_reason(device: torch.device) -> str | None:
    why = _load_ext()
    if why:
        return why
    from . import cpp_backend

    if not cpp_backend.HAS_CUDA:
        return "fastmsfd._C was built without CUDA kernels (needs a CUDA build of torch and nvcc at install)"
    if device.type != "cuda":
        return "cuda runs on CUDA tensors only"
    return None


def _triton_reason(device: torch.device) -> str | None:
    import os

    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "triton needs CUDA tensors (or TRITON_INTERPRET=1 for testing on the CPU)"
    try:
        from .kernels import triton_available
    except ImportError as exc:
        return f"fastmsfd.kernels not importable ({exc})"
    why = triton_available()
    if why:
        return why
    if "triton" not in _IMPLS["anomaly_map"]:
        from .kernels import anomaly_map as triton_map
        from .kernels import distance as triton_distance

        register_impl("anomaly_map", "triton", triton_map.anomaly_map)
        register_impl("distill_loss", "triton", triton_distance.distill_loss)
    return None


_REASONS: dict[str, Callable[[torch.device], str | None]] = {
    "reference": lambda device: None,
    "cpp": _cpp_reason,
    "cuda": _cuda_reason,
    "triton": _triton_reason,
}
# Preference order of "auto" per device type (fastest first).
_AUTO = {"cpu": ("cpp", "reference"), "cuda": ("cuda", "triton", "reference")}


def backend_status(device: str | torch.device = "cpu") -> dict[str, str | None]:
    """{backend: None if usable on `device`, else the reason it is not}."""
    device = torch.device(device)
    return {name: _REASONS[name](device) for name in BACKENDS}


def select_backend(backend: str, device: torch.device, op: str) -> tuple[str, list[str]]:
    """The backend to run and, for "auto", the reasons the faster ones were skipped."""
    if backend not in ("auto",) + BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        why = _REASONS[backend](device)
        if why:
            raise RuntimeError(f"backend {backend!r} unavailable for {op} on {device}: {why}")
        return backend, []
    skipped = []
    for name in _AUTO.get(device.type, ("reference",)):
        why = _REASONS[name](device)
        if why is None and name in _IMPLS[op]:
            return name, skipped
        skipped.append(f"{name}: {why or 'no implementation of ' + op}")
    return "reference", skipped


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
    sigmas = _per_layer(sigmas, n, "sigmas", ref.default_sigmas(shapes, (H, W)))
    radii = _per_layer(radii, n, "radii", [None] * n)
    for sg in sigmas:
        if sg is None or not math.isfinite(sg) or sg <= 0:
            raise ValueError(f"sigmas must be positive finite numbers, got {sigmas}")
    if aggregate not in ref.AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {ref.AGGREGATIONS}, got {aggregate!r}")
    if topk is not None and not 0 < topk <= 1:
        raise ValueError(f"topk is a fraction of the heatmap in (0, 1], got {topk}")
    if blur_sigma is not None and (not math.isfinite(blur_sigma) or blur_sigma < 0):
        raise ValueError(f"blur_sigma must be >= 0, got {blur_sigma}")
    alpha, beta = _check_finite("alpha", alpha), _check_finite("beta", beta)
    if upsampling not in ref.UPSAMPLINGS:
        raise ValueError(f"upsampling must be one of {ref.UPSAMPLINGS}, got {upsampling!r}")
    if upsampling != "gaussian":
        if backend not in ("auto", "reference"):
            raise RuntimeError(f"backend {backend!r} implements Gaussian up-sampling only; "
                               f"upsampling={upsampling!r} runs on backend='reference'")
        _state.last = ("reference", [f"fused backends: Gaussian up-sampling only, not {upsampling}"])
        return ref.anomaly_map(teacher_feats, student_feats, (H, W), weights, alpha, beta, sigmas, radii, aggregate,
                               topk, blur_sigma or None, upsampling=upsampling)
    name, skipped = select_backend(backend, teacher_feats[0].device, "anomaly_map")
    _state.last = (name, skipped)
    return _IMPLS["anomaly_map"][name](teacher_feats, student_feats, (H, W), weights, alpha, beta, sigmas, radii,
                                       aggregate, topk, blur_sigma or None)


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
    name, skipped = select_backend(backend, teacher_feats[0].device, "distill_loss")
    _state.last = (name, skipped)
    teacher_feats = [t.detach() for t in teacher_feats]
    return _IMPLS["distill_loss"][name](teacher_feats, student_feats, alpha, beta, weights)


def _ref_distill(teacher_feats, student_feats, alpha, beta, weights):
    return ref.distill_loss(teacher_feats, student_feats, alpha, beta, weights)


_IMPLS: dict[str, dict[str, Callable]] = {
    "anomaly_map": {"reference": ref.anomaly_map},
    "distill_loss": {"reference": _ref_distill},
}


def register_impl(op: str, backend: str, fn: Callable) -> None:
    """Backends register their implementation here when their module imports."""
    _IMPLS[op][backend] = fn
