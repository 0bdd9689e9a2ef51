"""Backend records and the choice between them. Probing a backend registers nothing and changes nothing: it
imports the backend's module (once per process) and reports why it cannot run, or None.

Each backend module offers the same two functions:
    run(teacher_feats, student_feats, plan, alpha, beta) -> (heatmap, score)    # plan: reference.Plan
    layer_distance(t, s, alpha, beta) -> d (B, h, w) float32, differentiable in s   # the loss's per-layer term
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

import torch

from . import reference

BACKENDS = ("reference", "cpp", "cuda", "triton")
# "auto": the preference order per device type, fastest first.
AUTO_ORDER = {"cpu": ("cpp", "reference"), "cuda": ("cuda", "triton", "reference")}


# Plain import statements (not importlib): the dispatcher also runs inside torch.compile'd code, and Dynamo
# executes an import statement but cannot trace importlib or a pybind call.
def _load_compiled() -> ModuleType | str:
    try:
        from . import compiled
    except (ImportError, OSError) as exc:  # not built, or built against another torch
        return f"extension fastmsfd._C not usable ({exc})"
    return compiled


def _load_triton() -> ModuleType | str:
    try:
        from . import triton_ops
    except Exception as exc:  # triton missing, or a Triton/torch version mismatch
        return f"fastmsfd.kernels not importable ({type(exc).__name__}: {exc})"
    return triton_ops


def _compiled_reason(device: torch.device, want: str) -> str | None:
    module = _load_compiled()
    if isinstance(module, str):
        return module
    if want == "cuda" and not module.HAS_CUDA:
        return "fastmsfd._C was built without CUDA kernels (needs a CUDA build of torch and nvcc at install)"
    if device.type != ("cpu" if want == "cpp" else "cuda"):
        return f"{want} runs on {'CPU' if want == 'cpp' else 'CUDA'} tensors only"
    return None


def _triton_reason(device: torch.device) -> str | None:
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "triton needs CUDA tensors (or TRITON_INTERPRET=1 for testing on the CPU)"
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton not installed ({exc})"
    module = _load_triton()
    return module if isinstance(module, str) else None


@dataclass(frozen=True)
class Backend:
    name: str
    load: Callable[[], ModuleType | str]               # the module with run() and layer_distance()
    reason: Callable[[torch.device], str | None]       # None when usable on that device, else why not


REGISTRY = {
    "reference": Backend("reference", lambda: reference, lambda device: None),
    "cpp": Backend("cpp", _load_compiled, lambda device: _compiled_reason(device, "cpp")),
    "cuda": Backend("cuda", _load_compiled, lambda device: _compiled_reason(device, "cuda")),
    "triton": Backend("triton", _load_triton, _triton_reason),
}


def backend_status(device: str | torch.device = "cpu") -> dict[str, str | None]:
    """{backend: None if usable on `device`, else the reason it is not}."""
    device = torch.device(device)
    return {name: REGISTRY[name].reason(device) for name in BACKENDS}


def select(backend: str, device: torch.device, dtype: torch.dtype) -> tuple[Backend, list[str]]:
    """The backend to run and, for "auto", the reasons the faster ones were skipped. float64 always runs on the
    reference: the compiled kernels accumulate in float32."""
    if backend not in ("auto",) + BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        why = REGISTRY[backend].reason(device)
        if why:
            raise RuntimeError(f"backend {backend!r} unavailable on {device}: {why}")
        if dtype == torch.float64 and backend != "reference":
            return REGISTRY["reference"], [f"{backend}: float64 runs on the reference (kernels accumulate in "
                                           "float32)"]
        return REGISTRY[backend], []
    skipped = []
    for name in AUTO_ORDER.get(device.type, ("reference",)):
        why = REGISTRY[name].reason(device)
        if why is None and dtype == torch.float64 and name != "reference":
            why = "float64 runs on the reference (kernels accumulate in float32)"
        if why is None:
            return REGISTRY[name], skipped
        skipped.append(f"{name}: {why}")
    return REGISTRY["reference"], skipped


__all__ = ["BACKENDS", "Backend", "REGISTRY", "backend_status", "select", "reference"]
