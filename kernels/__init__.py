"""Triton kernels for fastmsfd (installed as fastmsfd.kernels). Each kernel file names the reference it mirrors:

    distance.py      combined distance forward (+ backward statistics) and its gradient; the fused loss
    anomaly_map.py   up-sampling + aggregation of all layers in one kernel, image score

They are registered with torch.library.triton_op (namespace fastmsfd_triton) so torch.compile and export see them.
On a CPU they run only under TRITON_INTERPRET=1 (set before this package is imported), for testing.
"""
from __future__ import annotations


def triton_available() -> str | None:
    """None when the Triton kernels can be imported here, else the reason they cannot."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton not installed ({exc})"
    try:
        from . import anomaly_map, distance  # noqa: F401
    except Exception as exc:  # a Triton/torch version mismatch surfaces here
        return f"fastmsfd.kernels failed to import ({type(exc).__name__}: {exc})"
    return None
