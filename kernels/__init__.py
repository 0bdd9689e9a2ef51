"""Triton kernels for fastmsfd (installed as fastmsfd.kernels). Each kernel file names the reference it mirrors."""
from __future__ import annotations


def triton_available() -> str | None:
    """None when Triton kernels can run here, else the reason they cannot."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton not installed ({exc})"
    return "no Triton kernels in this build yet"
