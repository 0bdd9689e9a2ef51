"""The reference PyTorch math of MSFD's fused op: the spec in code (DESIGN.md "The fused op").

Every other backend (C++, CUDA, Triton) is tested against the functions here. Clarity over speed. plan() is the
set-up every backend shares (up-sampling matrices with the final blur folded in where it can be, the blur left
for after aggregation where it cannot, the top-k pixel count); run() is the reference backend itself.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import torch

EPS = 1e-6
AGGREGATIONS = ("sum", "mean", "max", "product")
# Layers one call takes, in every backend (the CUDA launcher's fixed arrays; Triton runs groups of its slots).
MAX_LAYERS = 8
# "gaussian": MSFD's receptive-field up-sampling (DESIGN.md). "bilinear": what STPM-style baselines use
# (F.interpolate, align_corners=False), kept as a separable matrix too so it shares all the code; for ablations.
UPSAMPLINGS = ("gaussian", "bilinear")
# Default Gaussian width in units of the layer's cell spacing (output pixels per feature cell).
# Chosen by measurement on the demo and MTD (docs/defaults.md).
DEFAULT_SIGMA_FACTOR = 1.0


def combined_distance(t: torch.Tensor, s: torch.Tensor, alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """d = alpha * ||t - s||^2 / C + beta * (1 - cos(t, s)) per cell: (B, C, h, w) -> (B, h, w), float32
    (float64 inputs stay float64, for exact tests)."""
    acc = torch.float64 if t.dtype == torch.float64 else torch.float32
    t, s = t.to(acc), s.to(acc)
    channels = t.shape[1]
    l2 = (t - s).pow(2).sum(1) / channels
    dot = (t * s).sum(1)
    denom = t.norm(dim=1).clamp_min(EPS) * s.norm(dim=1).clamp_min(EPS)
    return alpha * l2 + beta * (1.0 - dot / denom)


@functools.lru_cache(maxsize=256)
def _gaussian_matrix_cpu(out_len: int, n_cells: int, sigma: float, radius: float | None) -> torch.Tensor:
    spacing = out_len / n_cells
    centres = (torch.arange(n_cells, dtype=torch.float64) + 0.5) * spacing - 0.5
    r = 3.0 * sigma if radius is None else float(radius)
    r = max(r, spacing / 2)  # every output row must see at least one cell
    u = torch.arange(out_len, dtype=torch.float64)[:, None] - centres[None, :]
    logits = -(u * u) / (2.0 * sigma * sigma)
    logits = logits.masked_fill(u.abs() > r, float("-inf"))
    # softmax == g / sum(g), without underflow to 0/0 when sigma is much smaller than the spacing
    return torch.softmax(logits, dim=1).to(torch.float32)


def gaussian_matrix(out_len: int, n_cells: int, sigma: float, radius: float | None = None,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """Row-normalised truncated Gaussian up-sampling matrix G (out_len x n_cells), float32, cached."""
    if sigma <= 0 or not math.isfinite(sigma):
        raise ValueError(f"Gaussian sigma must be a positive finite number, got {sigma}")
    if radius is not None and (radius < 0 or not math.isfinite(radius)):
        raise ValueError(f"receptive-field radius must be >= 0 and finite, got {radius}")
    g = _gaussian_matrix_cpu(int(out_len), int(n_cells), float(sigma), None if radius is None else float(radius))
    return g.to(device)


@functools.lru_cache(maxsize=256)
def _bilinear_matrix_cpu(out_len: int, n_cells: int) -> torch.Tensor:
    src = ((torch.arange(out_len, dtype=torch.float64) + 0.5) * n_cells / out_len - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(n_cells - 1)
    i1 = (i0 + 1).clamp_max(n_cells - 1)
    frac = src - i0
    m = torch.zeros(out_len, n_cells, dtype=torch.float64)
    rows = torch.arange(out_len)
    m.index_put_((rows, i0), 1.0 - frac, accumulate=True)
    m.index_put_((rows, i1), frac, accumulate=True)
    return m.to(torch.float32)


def bilinear_matrix(out_len: int, n_cells: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The (out_len x n_cells) matrix of F.interpolate(mode="bilinear", align_corners=False) along one axis."""
    return _bilinear_matrix_cpu(int(out_len), int(n_cells)).to(device)


def default_sigmas(shapes: Sequence[tuple[int, int]], out_size: tuple[int, int],
                   factor: float = DEFAULT_SIGMA_FACTOR) -> list[float]:
    """sigma_l = factor * cell spacing of layer l in output pixels (the larger of the two axes)."""
    H, W = out_size
    return [factor * max(H / h, W / w) for h, w in shapes]


def upsampling_matrices(shapes: Sequence[tuple[int, int]], out_size: tuple[int, int], sigmas: Sequence[float],
                        radii: Sequence[float | None], blur_sigma: float | None, fold_blur: bool,
                        device, upsampling: str = "gaussian") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(G_rows, G_cols) per layer; with fold_blur the final blur B is folded in as B @ G (sum/mean only).
    upsampling="bilinear" ignores sigmas and radii."""
    if upsampling not in UPSAMPLINGS:
        raise ValueError(f"upsampling must be one of {UPSAMPLINGS}, got {upsampling!r}")
    H, W = out_size
    mats = []
    for (h, w), sigma, radius in zip(shapes, sigmas, radii):
        if upsampling == "bilinear":
            gr, gc = bilinear_matrix(H, h, device), bilinear_matrix(W, w, device)
        else:
            gr = gaussian_matrix(H, h, sigma, radius, device)
            gc = gaussian_matrix(W, w, sigma, radius, device)
        if blur_sigma and fold_blur:
            gr = gaussian_matrix(H, H, blur_sigma, None, device) @ gr
            gc = gaussian_matrix(W, W, blur_sigma, None, device) @ gc
        mats.append((gr, gc))
    return mats


def upsample(d: torch.Tensor, g_rows: torch.Tensor, g_cols: torch.Tensor) -> torch.Tensor:
    """A = G_rows @ d @ G_cols^T for each image: (B, h, w) -> (B, H, W), in d's dtype."""
    return g_rows.to(d.dtype) @ d @ g_cols.to(d.dtype).T


def aggregate(maps: Sequence[torch.Tensor], weights: Sequence[float], mode: str) -> torch.Tensor:
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {mode!r}")
    weighted = [w * a for w, a in zip(weights, maps)]
    out = weighted[0]
    for a in weighted[1:]:
        if mode in ("sum", "mean"):
            out = out + a
        elif mode == "max":
            out = torch.maximum(out, a)
        else:
            out = out * a
    return out / len(maps) if mode == "mean" else out


def topk_count(topk: float, n_pixels: int) -> int:
    """How many pixels the top-k score averages: ceil(topk * n), at least 1 (one rounding for every backend)."""
    return max(1, math.ceil(topk * n_pixels))


def image_score(heat: torch.Tensor, topk: float | None = None) -> torch.Tensor:
    """The heatmap maximum, or the mean of its top-k fraction (0 < topk <= 1). NaN propagates."""
    return score_of_top(heat, 0 if topk is None else topk_count(topk, heat.flatten(1).shape[1]))


def score_of_top(heat: torch.Tensor, k: int) -> torch.Tensor:
    """The mean of each heatmap's k largest pixels; k == 0: the maximum. NaN propagates."""
    flat = heat.flatten(1)
    if k == 0:
        return flat.max(dim=1).values if flat.shape[1] else flat.new_zeros(flat.shape[0])
    return flat.topk(min(k, flat.shape[1]), dim=1).values.mean(dim=1)


@dataclass(frozen=True)
class Plan:
    """Everything a backend needs besides the features, computed once from shapes and parameters."""
    g_rows: tuple[torch.Tensor, ...]     # per layer, (H, h_l) float32; the final blur folded in for sum/mean
    g_cols: tuple[torch.Tensor, ...]     # per layer, (W, w_l)
    weights: tuple[float, ...]
    mode: str                            # one of AGGREGATIONS
    blur_rows: torch.Tensor | None       # the final blur of max/product (it cannot fold): after aggregation
    blur_cols: torch.Tensor | None
    topk: float | None                   # score: the maximum (None) or the mean of this fraction of the pixels
    topk_count: int                      # that fraction as a pixel count, rounded once for every backend; 0: max

    @property
    def out_size(self) -> tuple[int, int]:
        return self.g_rows[0].shape[0], self.g_cols[0].shape[0]

    @property
    def mode_index(self) -> int:
        return AGGREGATIONS.index(self.mode)


def plan(shapes: Sequence[tuple[int, int]], out_size: tuple[int, int], layer_weights: Sequence[float],
         sigmas: Sequence[float], radii: Sequence[float | None], aggregate_mode: str, topk: float | None = None,
         blur_sigma: float | None = None, device: torch.device | str = "cpu", upsampling: str = "gaussian") -> Plan:
    """The shared set-up of the fused op for layers of these (h, w) shapes. Arguments already validated."""
    H, W = out_size
    fold = aggregate_mode in ("sum", "mean")
    mats = upsampling_matrices(shapes, out_size, sigmas, radii, blur_sigma, fold, device, upsampling)
    post_blur = bool(blur_sigma) and not fold
    return Plan(tuple(m[0] for m in mats), tuple(m[1] for m in mats), tuple(float(w) for w in layer_weights),
                aggregate_mode, gaussian_matrix(H, H, blur_sigma, None, device) if post_blur else None,
                gaussian_matrix(W, W, blur_sigma, None, device) if post_blur else None, topk,
                0 if topk is None else topk_count(topk, H * W))


def run(teacher_feats: Sequence[torch.Tensor], student_feats: Sequence[torch.Tensor], p: Plan, alpha: float,
        beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference backend: heatmap (B, H, W) float32 (float64 for float64 features) and image score (B,)."""
    maps = [upsample(combined_distance(t, s, alpha, beta), gr, gc)
            for t, s, gr, gc in zip(teacher_feats, student_feats, p.g_rows, p.g_cols)]
    heat = aggregate(maps, p.weights, p.mode)
    if p.blur_rows is not None:
        heat = upsample(heat, p.blur_rows, p.blur_cols)
    return heat, image_score(heat, p.topk)


def layer_distance(t: torch.Tensor, s: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """d_l for the distillation loss, differentiable with respect to s (torch's autograd)."""
    return combined_distance(t, s, alpha, beta)


def anomaly_map(teacher_feats: Sequence[torch.Tensor], student_feats: Sequence[torch.Tensor],
                out_size: tuple[int, int], layer_weights: Sequence[float], alpha: float, beta: float,
                sigmas: Sequence[float], radii: Sequence[float | None], aggregate_mode: str,
                topk: float | None = None, blur_sigma: float | None = None,
                upsampling: str = "gaussian") -> tuple[torch.Tensor, torch.Tensor]:
    """The full fused op, unfused, from its parameters: plan() then run(). Arguments already validated."""
    p = plan([tuple(t.shape[-2:]) for t in teacher_feats], out_size, layer_weights, sigmas, radii, aggregate_mode,
             topk, blur_sigma, teacher_feats[0].device, upsampling)
    return run(teacher_feats, student_feats, p, alpha, beta)


def distill_loss(teacher_feats: Sequence[torch.Tensor], student_feats: Sequence[torch.Tensor],
                 alpha: float, beta: float, layer_weights: Sequence[float] | None = None,
                 distance=layer_distance) -> torch.Tensor:
    """sum_l w_l * mean over batch and cells of d_l; differentiable with respect to the student features.
    The one loss loop: a backend passes its own differentiable per-layer `distance`."""
    weights = layer_weights if layer_weights is not None else [1.0] * len(teacher_feats)
    total = None
    for w, t, s in zip(weights, teacher_feats, student_feats):
        term = w * distance(t, s, alpha, beta).mean()
        total = term if total is None else total + term
    return total
