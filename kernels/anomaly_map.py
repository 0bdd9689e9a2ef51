"""Triton kernel of the fused anomaly map: Gaussian receptive-field up-sampling of every layer's distance map,
per-layer weights, aggregation, heatmap write and per-tile maxima for the image score.

Reference: fastmsfd/ops/reference.py::run (upsample, aggregate, image_score).
Launches: one distance kernel per layer (kernels/distance.py; reads each feature element once and writes the
small d_l, C_l times smaller than the features), then ONE kernel for all layers that writes each heatmap tile
once: per tile, G_rows[tile] @ d_l @ G_cols[tile]^T for every layer with fp32 `tl.dot` (IEEE precision, not TF32)
and the aggregation in registers. The image maximum comes from the per-tile maxima; a top-k mean uses torch.topk
on the heatmap (a selection over the whole image). The final blur of max/product aggregation (it cannot fold into
G) is two torch matmuls. Up to 4 layers a launch; 5-8 (reference.MAX_LAYERS) run as two launches combined.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import distance as _distance

MODES = ("sum", "mean", "max", "product")  # MODE indexes these: fastmsfd.ops.reference.AGGREGATIONS' order

SLOTS = 4  # layers one kernel launch aggregates; more run as several launches combined after (same result)
# Heatmap tile per program; the CPU interpreter (per-program cost) gets larger tiles. Same kernel code;
# scripts/compile_triton.py compiles both for the GPU.
GPU_BLOCK, INTERPRETER_BLOCK = 32, 64
BLOCK_H = BLOCK_W = INTERPRETER_BLOCK if _distance.INTERPRETING else GPU_BLOCK
BLOCK_K = 16  # rows of d_l per step of the first product (tl.dot needs K >= 16)


@triton.jit
def _layer_tile(d_ptr, gr_ptr, gc_ptr, b, ys, xs, H, W, h, w, WP: tl.constexpr, BLOCK_H: tl.constexpr,
                BLOCK_K: tl.constexpr):
    """weightless A_l[ys, xs] = G_rows[ys, :] @ d_l[b] @ G_cols[xs, :]^T as a (BLOCK_H, BLOCK_W) fp32 tile."""
    jj = tl.arange(0, WP)
    rows = tl.zeros([BLOCK_H, WP], dtype=tl.float32)
    for i0 in range(0, h, BLOCK_K):
        ii = i0 + tl.arange(0, BLOCK_K)
        gr = tl.load(gr_ptr + ys[:, None] * h + ii[None, :], mask=(ys[:, None] < H) & (ii[None, :] < h), other=0.0)
        d = tl.load(d_ptr + b * h * w + ii[:, None] * w + jj[None, :], mask=(ii[:, None] < h) & (jj[None, :] < w),
                    other=0.0)
        rows += tl.dot(gr, d, input_precision="ieee")
    gc = tl.load(gc_ptr + xs[:, None] * w + jj[None, :], mask=(xs[:, None] < W) & (jj[None, :] < w), other=0.0)
    return tl.dot(rows, tl.trans(gc), input_precision="ieee")


@triton.jit
def _combine(out, a, MODE: tl.constexpr):
    if MODE == 2:
        return tl.maximum(out, a, propagate_nan=tl.PropagateNan.ALL)
    elif MODE == 3:
        return out * a
    else:
        return out + a


@triton.jit
def _upsample_aggregate_kernel(heat_ptr, tile_max_ptr, H, W,
                               d0, gr0, gc0, h0, w0, k0, d1, gr1, gc1, h1, w1, k1,
                               d2, gr2, gc2, h2, w2, k2, d3, gr3, gc3, h3, w3, k3,
                               NUM_LAYERS: tl.constexpr, MODE: tl.constexpr,
                               WP0: tl.constexpr, WP1: tl.constexpr, WP2: tl.constexpr, WP3: tl.constexpr,
                               BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)  # int64 offsets: B*H*W may pass 2**31 at large batches
    ty = tl.program_id(1)
    tx = tl.program_id(2)
    ys = ty * BLOCK_H + tl.arange(0, BLOCK_H)
    xs = tx * BLOCK_W + tl.arange(0, BLOCK_W)
    out = k0 * _layer_tile(d0, gr0, gc0, b, ys, xs, H, W, h0, w0, WP0, BLOCK_H, BLOCK_K)
    if NUM_LAYERS > 1:
        out = _combine(out, k1 * _layer_tile(d1, gr1, gc1, b, ys, xs, H, W, h1, w1, WP1, BLOCK_H, BLOCK_K), MODE)
    if NUM_LAYERS > 2:
        out = _combine(out, k2 * _layer_tile(d2, gr2, gc2, b, ys, xs, H, W, h2, w2, WP2, BLOCK_H, BLOCK_K), MODE)
    if NUM_LAYERS > 3:
        out = _combine(out, k3 * _layer_tile(d3, gr3, gc3, b, ys, xs, H, W, h3, w3, WP3, BLOCK_H, BLOCK_K), MODE)
    if MODE == 1:
        out = out / NUM_LAYERS
    mask = (ys[:, None] < H) & (xs[None, :] < W)
    tl.store(heat_ptr + b * H * W + ys[:, None] * W + xs[None, :], out, mask=mask)
    n_nan = tl.sum(tl.where(mask & (out != out), 1, 0))
    tile_max = tl.max(tl.where(mask, out, -float("inf")))
    tile_max = tl.where(n_nan > 0, float("nan"), tile_max)
    tl.store(tile_max_ptr + (b * tl.num_programs(1) + ty) * tl.num_programs(2) + tx, tile_max)


def _launch(teacher, student, g_rows, g_cols, weights, alpha, beta, mode, H, W):
    """One kernel launch over up to SLOTS layers: (heat (B, H, W), per-tile maxima)."""
    L = len(teacher)
    B, device = teacher[0].shape[0], teacher[0].device
    args = []
    wps = []
    for t, s, gr, gc, wgt in zip(teacher, student, g_rows, g_cols, weights):
        d = torch.empty((B, t.shape[2], t.shape[3]), device=device, dtype=torch.float32)
        _distance.launch_distance(t, s, alpha, beta, d)  # launches under the tensors' device guard
        args += [d, gr.to(device=device, dtype=torch.float32).contiguous(),
                 gc.to(device=device, dtype=torch.float32).contiguous(), t.shape[2], t.shape[3], float(wgt)]
        wps.append(max(16, triton.next_power_of_2(t.shape[3])))
    while len(wps) < SLOTS:  # unused layer slots: never read (NUM_LAYERS is a compile-time constant)
        args += args[:6]
        wps.append(wps[0])
    heat = torch.empty((B, H, W), device=device, dtype=torch.float32)
    grid = (B, triton.cdiv(H, BLOCK_H), triton.cdiv(W, BLOCK_W))
    tile_max = torch.empty(grid, device=device, dtype=torch.float32)
    with _distance.device_guard(heat):
        torch.library.wrap_triton(_upsample_aggregate_kernel)[grid](
            heat, tile_max, H, W, *args, NUM_LAYERS=L, MODE=mode, WP0=wps[0], WP1=wps[1], WP2=wps[2], WP3=wps[3],
            BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W, BLOCK_K=BLOCK_K)
    return heat, tile_max


@torch.library.triton_op("fastmsfd::triton_anomaly_map", mutates_args={})
def fused_anomaly_map(teacher: list[torch.Tensor], student: list[torch.Tensor], g_rows: list[torch.Tensor],
                      g_cols: list[torch.Tensor], weights: list[float], alpha: float, beta: float, mode: int,
                      blur_rows: torch.Tensor | None, blur_cols: torch.Tensor | None,
                      topk_count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """heat (B, H, W) float32 and score (B,): the max when topk_count == 0, else the mean of the topk_count largest.
    The same schema as the C++/CUDA op fastmsfd::anomaly_map. blur_rows/blur_cols: the final blur of max/product
    aggregation, applied after the kernel (two matmuls)."""
    L, B = len(teacher), teacher[0].shape[0]
    H, W = g_rows[0].shape[0], g_cols[0].shape[0]
    if L <= SLOTS:
        heat, tile_max = _launch(teacher, student, g_rows, g_cols, weights, alpha, beta, mode, H, W)
    else:  # groups of SLOTS layers; mean is a sum divided once at the end
        group_mode = 0 if mode == 1 else mode
        combine = {0: torch.add, 2: torch.maximum, 3: torch.mul}[group_mode]  # torch.maximum propagates NaN
        heat = None
        for i in range(0, L, SLOTS):
            part = _launch(teacher[i:i + SLOTS], student[i:i + SLOTS], g_rows[i:i + SLOTS], g_cols[i:i + SLOTS],
                           weights[i:i + SLOTS], alpha, beta, group_mode, H, W)[0]
            heat = part if heat is None else combine(heat, part)
        if mode == 1:
            heat = heat / L
        tile_max = None
    if blur_rows is None and topk_count == 0 and tile_max is not None:
        return heat, tile_max.reshape(B, -1).amax(dim=1)
    if blur_rows is not None:  # reference.upsample
        heat = blur_rows.to(heat.device) @ heat @ blur_cols.to(heat.device).T
    flat = heat.flatten(1)  # reference.score_of_top: the maximum (0), else the mean of the topk_count largest
    k = min(topk_count, flat.shape[1])
    return heat, flat.max(dim=1).values if k == 0 else flat.topk(k, dim=1).values.mean(dim=1)


@fused_anomaly_map.register_fake
def _(teacher, student, g_rows, g_cols, weights, alpha, beta, mode, blur_rows, blur_cols, topk_count):
    B = teacher[0].shape[0]
    heat = teacher[0].new_empty((B, g_rows[0].shape[0], g_cols[0].shape[0]), dtype=torch.float32)
    return heat, heat.new_empty((B,))


def aot_specs():
    """Every specialisation the launcher above can use, for scripts/compile_triton.py: yields (kernel, label,
    signature, constexprs). The features' dtype never reaches this kernel (it reads the float32 distance maps).
    All layer counts and aggregation modes at 256 px (WP, a layer's padded width: 64/32/16); the other block
    configuration and 512 px widths for the default sum of three layers."""
    layer = dict(d="*fp32", gr="*fp32", gc="*fp32", h="i32", w="i32", k="fp32")
    configs = [(GPU_BLOCK, n, mode, (64, 32, 16, 16)) for n in range(1, SLOTS + 1) for mode in range(4)]
    configs += [(INTERPRETER_BLOCK, 3, 0, (64, 32, 16, 16)), (GPU_BLOCK, 3, 0, (128, 64, 32, 16))]
    for block, n_layers, mode, widths in configs:
        wps = widths[:n_layers] + (widths[0],) * (SLOTS - n_layers)  # unused slots repeat layer 0
        sig = dict(heat_ptr="*fp32", tile_max_ptr="*fp32", H="i32", W="i32")
        for i in range(SLOTS):
            sig.update({f"{k}{i}": v for k, v in layer.items()})
        consts = dict(NUM_LAYERS=n_layers, MODE=mode, WP0=wps[0], WP1=wps[1], WP2=wps[2], WP3=wps[3],
                      BLOCK_H=block, BLOCK_W=block, BLOCK_K=BLOCK_K)
        sig.update({k: "constexpr" for k in consts})
        label = f"fp32 NUM_LAYERS={n_layers} MODE={MODES[mode]} WP={'/'.join(map(str, wps[:n_layers]))} " \
                f"BLOCK={block}"
        yield _upsample_aggregate_kernel, label, sig, consts
