"""The autograd formula shared by every compiled distance op (C++/CUDA in fastmsfd._C, Triton in
fastmsfd.kernels): forward returns (d, per-cell statistics); backward calls the backend's gradient kernel with
them. Only the student gets a gradient: the teacher is frozen."""
from __future__ import annotations

from typing import Callable

import torch


def register_distance_autograd(forward_op: str, backward: Callable) -> None:
    """forward_op: "namespace::name" of an op (t, s, alpha, beta) -> (d, stats);
    backward(grad_d, t, s, stats, alpha, beta) -> grad_s."""

    def setup_context(ctx, inputs, output):
        t, s, alpha, beta = inputs
        ctx.save_for_backward(t, s, output[1])
        ctx.alpha, ctx.beta = alpha, beta

    def grad(ctx, grad_d, _grad_stats):
        t, s, stats = ctx.saved_tensors
        grad_s = backward(grad_d, t, s, stats, ctx.alpha, ctx.beta) if ctx.needs_input_grad[1] else None
        return None, grad_s, None, None

    torch.library.register_autograd(forward_op, grad, setup_context=setup_context)
