"""Shared helpers for testing a backend against the reference: inputs, the low-precision tolerance rule, and
output poisoning."""
from __future__ import annotations

import contextlib

import torch

from fastmsfd import ops


def backends_for(device: str, exclude=("reference",)) -> list[str]:
    """The non-reference backends usable on `device` here (each one's test is skipped with its reason if not)."""
    return [b for b, why in ops.backend_status(device).items() if why is None and b not in exclude]


def feature_pair(B, C, h, w, dtype=torch.float32, device="cpu", gen=None, layout="nchw"):
    t = torch.randn(B, C, h, w, generator=gen)
    s = t + 0.7 * torch.randn(B, C, h, w, generator=gen)  # correlated, like a trained student
    t, s = t.to(device=device, dtype=dtype), s.to(device=device, dtype=dtype)
    if layout == "channels_last":
        t, s = t.contiguous(memory_format=torch.channels_last), s.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # neither NCHW nor NHWC contiguous
        t, s = t.transpose(2, 3).contiguous().transpose(2, 3), s.transpose(2, 3).contiguous().transpose(2, 3)
    return t, s


def assert_dtype_rule(got: torch.Tensor, ref_lowp: torch.Tensor, exact: torch.Tensor, factor: float = 2.0,
                      floor: float = 1e-6) -> None:
    """Low-precision rule: the backend's error against the float64 result is at most `factor` times the
    reference's own error in that dtype (plus `floor` times the magnitude, for cases where it is ~0)."""
    exact = exact.double()
    err = (got.double() - exact).abs().max().item()
    ref_err = (ref_lowp.double() - exact).abs().max().item()
    bound = factor * ref_err + floor * max(exact.abs().max().item(), 1.0)
    assert err <= bound, f"error {err:.3g} > {factor} x reference error {ref_err:.3g} (+floor)"


@contextlib.contextmanager
def poisoned_outputs():
    """torch.empty (and at::empty inside the compiled ops) fills new float memory with NaN while this is active,
    so an output element a kernel forgets to write fails the comparison."""
    old = torch.are_deterministic_algorithms_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old)
        torch.utils.deterministic.fill_uninitialized_memory = old_fill
