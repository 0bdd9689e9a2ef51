"""Triton kernels of the per-layer combined distance and its gradient with respect to the student.

Reference: fastmsfd/ops/reference.py::combined_distance (and its autograd gradient).
    d = alpha * ||t - s||^2 / C + beta * (1 - <t,s> / (max(||t||,eps) * max(||s||,eps)))
One program handles a block of cells of one image and loops over the channels in chunks, accumulating the four
sums in float32, so each feature element is read once. Any strides (NCHW, channels_last, views; teacher and
student may differ) are read in place, without a copy.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

# A global read inside @triton.jit code must be a tl.constexpr: a plain float compiles only in the interpreter.
EPS = tl.constexpr(1e-6)
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
# The CPU interpreter's cost is per program, whatever its size: it gets fewer, larger blocks. Same kernel code;
# scripts/compile_triton.py compiles both block configurations for the GPU.
GPU_BLOCK_CELLS, INTERPRETER_BLOCK_CELLS = 128, 256
BLOCK_CELLS = INTERPRETER_BLOCK_CELLS if INTERPRETING else GPU_BLOCK_CELLS
BLOCK_C = 32


@triton.jit
def _distance_fwd_kernel(t_ptr, s_ptr, out_ptr, stats_ptr, C, HW, w, tb, tc, ty, tx, sb, sc, sy, sx, alpha, beta,
                         WRITE_STATS: tl.constexpr, BLOCK_CELLS: tl.constexpr, BLOCK_C: tl.constexpr):
    # int64 offsets: B*C*h*w (or a stride product) passes 2**31 for wide layers at large batches
    b = tl.program_id(0).to(tl.int64)
    cells = tl.program_id(1).to(tl.int64) * BLOCK_CELLS + tl.arange(0, BLOCK_CELLS)
    cell_ok = cells < HW
    y, x = cells // w, cells % w
    t_off = b * tb + y * ty + x * tx
    s_off = b * sb + y * sy + x * sx
    diff2 = tl.zeros([BLOCK_CELLS], dtype=tl.float32)
    tt = tl.zeros([BLOCK_CELLS], dtype=tl.float32)
    ss = tl.zeros([BLOCK_CELLS], dtype=tl.float32)
    ts = tl.zeros([BLOCK_CELLS], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        ch = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
        mask = (ch[:, None] < C) & cell_ok[None, :]
        a = tl.load(t_ptr + ch[:, None] * tc + t_off[None, :], mask=mask, other=0.0).to(tl.float32)
        v = tl.load(s_ptr + ch[:, None] * sc + s_off[None, :], mask=mask, other=0.0).to(tl.float32)
        d = a - v
        diff2 += tl.sum(d * d, axis=0)
        tt += tl.sum(a * a, axis=0)
        ss += tl.sum(v * v, axis=0)
        ts += tl.sum(a * v, axis=0)
    ns_raw = tl.sqrt(ss)
    nt = tl.maximum(tl.sqrt(tt), EPS)
    ns = tl.maximum(ns_raw, EPS)
    out = alpha * diff2 / C + beta * (1.0 - ts / (nt * ns))
    idx = b * HW + cells
    tl.store(out_ptr + idx, out, mask=cell_ok)
    if WRITE_STATS:
        tl.store(stats_ptr + idx * 4 + 0, nt, mask=cell_ok)
        tl.store(stats_ptr + idx * 4 + 1, ns, mask=cell_ok)
        tl.store(stats_ptr + idx * 4 + 2, ts, mask=cell_ok)
        tl.store(stats_ptr + idx * 4 + 3, ns_raw, mask=cell_ok)


@triton.jit
def _distance_bwd_kernel(grad_ptr, t_ptr, s_ptr, stats_ptr, gs_ptr, C, HW, w, tb, tc, ty, tx, sb, sc, sy, sx,
                         gb, gc, gy, gx,
                         two_alpha_c, beta, BLOCK_CELLS: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    cells = tl.program_id(1).to(tl.int64) * BLOCK_CELLS + tl.arange(0, BLOCK_CELLS)
    cell_ok = cells < HW
    idx = b * HW + cells
    g = tl.load(grad_ptr + idx, mask=cell_ok, other=0.0)
    nt = tl.load(stats_ptr + idx * 4 + 0, mask=cell_ok, other=1.0)
    ns = tl.load(stats_ptr + idx * 4 + 1, mask=cell_ok, other=1.0)
    ts = tl.load(stats_ptr + idx * 4 + 2, mask=cell_ok, other=0.0)
    ns_raw = tl.load(stats_ptr + idx * 4 + 3, mask=cell_ok, other=1.0)
    k_diff = g * two_alpha_c
    k_t = g * beta / (nt * ns)
    # max(|s|, eps) passes no gradient where it is active, exactly as torch's clamp_min in the reference
    k_s = tl.where(ns_raw > EPS, k_t * ts / (ns * ns), 0.0)
    y, x = cells // w, cells % w
    t_off = b * tb + y * ty + x * tx
    s_off = b * sb + y * sy + x * sx
    g_off = b * gb + y * gy + x * gx
    for c0 in range(0, C, BLOCK_C):
        ch = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
        mask = (ch[:, None] < C) & cell_ok[None, :]
        a = tl.load(t_ptr + ch[:, None] * tc + t_off[None, :], mask=mask, other=0.0).to(tl.float32)
        v = tl.load(s_ptr + ch[:, None] * sc + s_off[None, :], mask=mask, other=0.0).to(tl.float32)
        grad = k_diff[None, :] * (v - a) - k_t[None, :] * a + k_s[None, :] * v
        tl.store(gs_ptr + ch[:, None] * gc + g_off[None, :], grad.to(gs_ptr.dtype.element_ty), mask=mask)


def device_guard(x: torch.Tensor):
    """Make x's GPU the current device for a launch: Triton launches on the current device, so tensors on
    cuda:1 while cuda:0 is current would otherwise be read from the wrong GPU."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def _grid(B: int, HW: int):
    return (B, triton.cdiv(HW, BLOCK_CELLS))


def launch_distance(t: torch.Tensor, s: torch.Tensor, alpha: float, beta: float, out: torch.Tensor,
                    stats: torch.Tensor | None = None) -> None:
    """Write d (B, h, w) float32 into `out` (and the backward statistics into `stats` when given)."""
    B, C, h, w = t.shape
    with device_guard(t):
        torch.library.wrap_triton(_distance_fwd_kernel)[_grid(B, h * w)](
            t, s, out, out if stats is None else stats, C, h * w, w, *t.stride(), *s.stride(), float(alpha),
            float(beta), WRITE_STATS=stats is not None, BLOCK_CELLS=BLOCK_CELLS, BLOCK_C=BLOCK_C)


@torch.library.triton_op("fastmsfd::triton_distance_forward", mutates_args={})
def distance_forward(t: torch.Tensor, s: torch.Tensor, alpha: float, beta: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(d (B, h, w) float32, stats (B, h, w, 4) float32) in one pass over the features."""
    B, C, h, w = t.shape
    out = torch.empty((B, h, w), device=t.device, dtype=torch.float32)
    stats = torch.empty((B, h, w, 4), device=t.device, dtype=torch.float32)
    launch_distance(t, s, alpha, beta, out, stats)
    return out, stats


@torch.library.triton_op("fastmsfd::triton_distance_map", mutates_args={})
def distance_map(t: torch.Tensor, s: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """d (B, h, w) float32 without the statistics the backward needs (inference)."""
    B, C, h, w = t.shape
    out = torch.empty((B, h, w), device=t.device, dtype=torch.float32)
    launch_distance(t, s, alpha, beta, out)
    return out


@torch.library.triton_op("fastmsfd::triton_distance_backward", mutates_args={})
def distance_backward(grad_d: torch.Tensor, t: torch.Tensor, s: torch.Tensor, stats: torch.Tensor, alpha: float,
                      beta: float) -> torch.Tensor:
    """d/ds of sum(grad_d * d), in s's dtype and layout."""
    B, C, h, w = t.shape
    grad_d = grad_d.to(torch.float32).contiguous()
    stats = stats.contiguous()
    grad_s = torch.empty_like(s)  # keeps s's layout (e.g. channels_last) when it is dense
    with device_guard(t):
        torch.library.wrap_triton(_distance_bwd_kernel)[_grid(B, h * w)](
            grad_d, t, s, stats, grad_s, C, h * w, w, *t.stride(), *s.stride(), *grad_s.stride(),
            2.0 * float(alpha) / C, float(beta), BLOCK_CELLS=BLOCK_CELLS, BLOCK_C=BLOCK_C)
    return grad_s


# its autograd (distance_backward) is registered by fastmsfd/ops/triton_ops.py, which owns the kernels' wiring


def layer_distance(t: torch.Tensor, s: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Backend "triton"'s d_l for the distillation loss: one fused pass forward, one backward."""
    return distance_forward(t, s, float(alpha), float(beta))[0]


# Fake (meta) implementations: shapes only, so torch.compile and opcheck never launch a kernel on fake tensors
# (the CPU interpreter would try to read their data).
@distance_forward.register_fake
def _(t, s, alpha, beta):
    B, _, h, w = t.shape
    return t.new_empty((B, h, w), dtype=torch.float32), t.new_empty((B, h, w, 4), dtype=torch.float32)


@distance_map.register_fake
def _(t, s, alpha, beta):
    return t.new_empty((t.shape[0], t.shape[2], t.shape[3]), dtype=torch.float32)


@distance_backward.register_fake
def _(grad_d, t, s, stats, alpha, beta):
    return torch.empty_like(s)


def aot_specs():
    """Every specialisation the launchers above can use, for scripts/compile_triton.py (which compiles each for
    the GPU ahead of time): yields (kernel, label, signature, constexprs)."""
    dtypes = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}
    for block in (GPU_BLOCK_CELLS, INTERPRETER_BLOCK_CELLS):
        for name, ptr in dtypes.items():
            # Triton passes an int argument >= 2**31 (a large stride) as i64: that variant at the GPU block size
            for index in ("i32", "i64") if block == GPU_BLOCK_CELLS else ("i32",):
                ints = {k: index for k in ("C", "HW", "w", "tb", "tc", "ty", "tx", "sb", "sc", "sy", "sx")}
                for stats in (True, False):
                    sig = dict(t_ptr=ptr, s_ptr=ptr, out_ptr="*fp32", stats_ptr="*fp32", **ints, alpha="fp32",
                               beta="fp32", WRITE_STATS="constexpr", BLOCK_CELLS="constexpr", BLOCK_C="constexpr")
                    yield (_distance_fwd_kernel, f"{name} {index} WRITE_STATS={stats} BLOCK_CELLS={block}", sig,
                           dict(WRITE_STATS=stats, BLOCK_CELLS=block, BLOCK_C=BLOCK_C))
                sig = dict(grad_ptr="*fp32", t_ptr=ptr, s_ptr=ptr, stats_ptr="*fp32", gs_ptr=ptr, **ints,
                           gb=index, gc=index, gy=index, gx=index, two_alpha_c="fp32", beta="fp32",
                           BLOCK_CELLS="constexpr", BLOCK_C="constexpr")
                yield (_distance_bwd_kernel, f"{name} {index} BLOCK_CELLS={block}", sig,
                       dict(BLOCK_CELLS=block, BLOCK_C=BLOCK_C))
