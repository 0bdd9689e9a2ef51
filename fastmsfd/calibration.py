"""Calibration from normal images only: functions of distances, heatmaps and scores, no networks.

- layer_weights: each layer's normal range maps to about 1, so no single scale dominates the sum;
- border statistics: near the image border the heatmap of a normal image is noisier (zero padding changes the
  features there, and row-normalised up-sampling averages fewer cells); standardising each pixel by the normal
  heatmaps' mean and std at the same distance from the border makes every position equally likely to cross a
  threshold;
- threshold: a quantile of normal images' scores, leaving out those far above the others (far_out): a foreign
  object or a mislabelled defect among the normal images must not set the threshold.
Detector.fit and Detector.calibrate feed them; the ONNX graph applies standardize() too.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

LAYER_WEIGHT_QUANTILE = 0.99


def layer_weights(distances: Sequence[torch.Tensor], quantile: float = LAYER_WEIGHT_QUANTILE) -> torch.Tensor:
    """w_l = 1 / (the quantile of layer l's cell distances on normal images), float32 (L,)."""
    q = [float(np.quantile(d.flatten().float().cpu().numpy(), quantile)) for d in distances]
    return torch.tensor([1.0 / max(v, 1e-12) for v in q])


def check_quantile(quantile: float) -> None:
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")


FAR_OUT_IQRS = 3.0  # Tukey's "far out" fence: beyond the upper quartile plus 3 interquartile ranges
FAR_OUT_MIN_IMAGES = 20  # fewer: quartiles of a handful of scores put a plain normal image beyond the fence


def far_out(scores: torch.Tensor, iqrs: float = FAR_OUT_IQRS) -> torch.Tensor:
    """bool (N,): the scores beyond Tukey's far-out fence (Q3 + 3 IQR; iqrs sets another multiple); all False with
    fewer than FAR_OUT_MIN_IMAGES scores or no spread between the quartiles."""
    s = scores.double().flatten()
    if len(s) < FAR_OUT_MIN_IMAGES:
        return torch.zeros(len(s), dtype=torch.bool)
    q1, q3 = torch.quantile(s, torch.tensor([0.25, 0.75], dtype=torch.float64)).tolist()
    if not q3 > q1:
        return torch.zeros(len(s), dtype=torch.bool)
    return s > q3 + iqrs * (q3 - q1)


def threshold(scores: torch.Tensor, quantile: float) -> float:
    """The `quantile` of normal images' scores: about (1 - quantile) of normal parts score above it."""
    check_quantile(quantile)
    if not torch.isfinite(scores).all():
        raise ValueError("calibrate: some normal images gave NaN/inf scores")
    return float(torch.quantile(scores.double(), quantile))


BORDER_SMOOTH = 1.0  # the rings' statistics are pooled over a Gaussian of this many rings: inner rings are small


def border_distance(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W) int64: each pixel's distance in pixels to the nearest image edge (0 on the edge)."""
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    dr = torch.minimum(rows, height - 1 - rows)
    dc = torch.minimum(cols, width - 1 - cols)
    return torch.minimum(dr[:, None], dc[None, :])


def border_statistics(heatmaps: torch.Tensor, smooth: float = BORDER_SMOOTH) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (each (H, W), float32) of normal heatmaps (N, H, W) as a function of the distance to the
    border. Ring r pools the pixels at distance r' with Gaussian weights exp(-(r - r')^2 / (2 smooth^2)); the
    std is floored at a tenth of its median over rings so a near-constant ring cannot blow up a pixel."""
    if heatmaps.dim() != 3 or heatmaps.shape[0] < 1:
        raise ValueError(f"border_statistics needs heatmaps (N, H, W) with N >= 1, got {tuple(heatmaps.shape)}")
    _, H, W = heatmaps.shape
    dist = border_distance(H, W, heatmaps.device).flatten()
    n_rings = int(dist.max()) + 1
    x = heatmaps.detach().double().flatten(1)
    count = torch.bincount(dist, minlength=n_rings).double() * x.shape[0]
    s1 = torch.zeros(n_rings, dtype=torch.float64, device=x.device).index_add_(0, dist, x.sum(0))
    s2 = torch.zeros(n_rings, dtype=torch.float64, device=x.device).index_add_(0, dist, (x * x).sum(0))
    r = torch.arange(n_rings, dtype=torch.float64, device=x.device)
    kernel = torch.exp(-(r[:, None] - r[None, :]) ** 2 / (2 * smooth ** 2)) if smooth > 0 else torch.eye(
        n_rings, dtype=torch.float64, device=x.device)
    count, s1, s2 = kernel @ count, kernel @ s1, kernel @ s2
    mean = s1 / count
    std = (s2 / count - mean ** 2).clamp_min(0).sqrt()
    std = std.clamp_min(max(0.1 * float(std.median()), 1e-12))
    return mean[dist].view(H, W).float(), std[dist].view(H, W).float()


def standardize(heat: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(heat - mean) / std per pixel, in float32: (B, H, W) with (H, W) statistics."""
    return (heat.float() - mean) / std


def fenced_threshold(scores: torch.Tensor, quantile: float, leave_out_far: bool = True,
                     names: Sequence[str | None] | None = None) -> tuple[float, list[int], str | None]:
    """(threshold, positions left out, a warning naming them or None): the `quantile` of normal images' scores,
    leaving out those beyond the far-out fence when leave_out_far (names: what the warning calls each image;
    its position where a name is None)."""
    if names is not None and len(names) != len(scores):
        raise ValueError(f"calibrate: {len(names)} names for {len(scores)} images")
    far = far_out(scores) if leave_out_far else torch.zeros(len(scores), dtype=torch.bool)
    thr = threshold(scores[~far], quantile)
    left_out = far.nonzero().flatten().tolist()
    message = None
    if left_out:
        named = [(names[i] if names is not None else None) or f"normal_images[{i}]" for i in left_out]
        message = (f"calibrate: {len(left_out)} of {len(scores)} normal images score far above the others "
                   f"(beyond the upper quartile plus {FAR_OUT_IQRS:g} interquartile ranges) and were left out of "
                   f"the threshold; look at them, they may be defective or unusual: {', '.join(named)}. "
                   "calibrate(..., leave_out_far=False) keeps them.")
    return thr, left_out, message
