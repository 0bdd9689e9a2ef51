"""Exact anomaly-detection metrics: image AUROC, pixel AUROC, AUPRO (MVTec definition), F1.

No threshold grids: every curve is computed exactly with one sort and cumulative sums.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from scipy.stats import rankdata


def _np(x, dtype=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    return arr.astype(dtype) if dtype is not None else arr


def _binary_and_scores(labels, scores, what: str) -> tuple[np.ndarray, np.ndarray]:
    y = _np(labels).astype(bool).ravel()
    s = _np(scores, np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{what}: {y.size} labels but {s.size} scores")
    if not np.isfinite(s).all():
        raise ValueError(f"{what}: scores contain NaN or inf")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        kind = "anomalous" if n_pos == 0 else "normal"
        raise ValueError(f"{what} is undefined: the evaluation set has no {kind} samples")
    return y, s


def auroc(labels, scores, what: str = "AUROC") -> float:
    """Area under the ROC curve, exact, ties counted as half (Mann-Whitney U)."""
    y, s = _binary_and_scores(labels, scores, what)
    ranks = rankdata(s)  # average ranks for ties
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def image_auroc(labels, scores) -> float:
    """Image-level AUROC from (N,) labels (1 = anomalous) and (N,) scores."""
    return auroc(labels, scores, "image AUROC")


def pixel_auroc(masks, maps) -> float:
    """Pixel-level AUROC over all pixels of all images: masks (N, H, W) bool, maps (N, H, W) float."""
    masks, maps = _per_image(masks, maps, "pixel AUROC")
    return auroc(np.concatenate([m.ravel() for m in masks]), np.concatenate([a.ravel() for a in maps]),
                 "pixel AUROC")


def _per_image(masks, maps, what: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(N, H, W) arrays, or lists of (H_i, W_i) arrays (images of different sizes, e.g. at full resolution)."""
    if isinstance(masks, (list, tuple)) or isinstance(maps, (list, tuple)):
        masks = [_np(m).astype(bool) for m in masks]
        maps = [_np(a, np.float64) for a in maps]
        if len(masks) != len(maps) or any(m.shape != a.shape or m.ndim != 2 for m, a in zip(masks, maps)):
            raise ValueError(f"{what}: masks and maps must pair up as same-shape (H, W) arrays")
        return masks, maps
    masks, maps = _np(masks).astype(bool), _np(maps, np.float64)
    if masks.shape != maps.shape or masks.ndim != 3:
        raise ValueError(f"{what}: masks {masks.shape} and maps {maps.shape} must both be (N, H, W)")
    return list(masks), list(maps)


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """The exact ROC curve (FPR, TPR) over every distinct threshold, from (0, 0) to (1, 1)."""
    y, s = _binary_and_scores(labels, scores, "ROC")
    order = np.argsort(-s, kind="stable")
    ys, ss = y[order], s[order]
    last = np.r_[ss[1:] != ss[:-1], True]
    tp, fp = np.cumsum(ys)[last], np.cumsum(~ys)[last]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def pro_curve(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """The exact PRO-vs-FPR curve over every distinct threshold (descending), starting at (0, 0).

    Regions: 8-connected components of each ground-truth mask, pooled over the set. PRO(t) is the mean over
    regions of the fraction of the region with score >= t; FPR(t) is over all normal pixels.
    """
    masks, maps = _per_image(masks, maps, "AUPRO")
    if not all(np.isfinite(a).all() for a in maps):
        raise ValueError("AUPRO: maps contain NaN or inf")
    regions = []
    n_regions = 0
    structure = np.ones((3, 3), dtype=bool)
    for m in masks:
        lab, n = ndimage.label(m, structure=structure)
        regions.append(np.where(lab > 0, lab + n_regions, 0).ravel())
        n_regions += n
    n_normal = int(sum((~m).sum() for m in masks))
    if n_regions == 0 or n_normal == 0:
        raise ValueError("AUPRO is undefined: " + ("no defect regions in the masks" if n_regions == 0
                                                     else "no normal pixels"))
    region, scores = np.concatenate(regions), np.concatenate([a.ravel() for a in maps])
    sizes = np.bincount(region, minlength=n_regions + 1).astype(np.float64)
    # each anomalous pixel adds 1 / (|its region| * number of regions) to PRO; each normal pixel 1 / n_normal to FPR
    pro_w = np.where(region > 0, 1.0 / (sizes[region] * n_regions), 0.0)
    order = np.argsort(-scores, kind="stable")
    s_sorted = scores[order]
    pro = np.cumsum(pro_w[order])
    fpr = np.cumsum(region[order] == 0) / n_normal  # integer counts: exactly 1.0 at the end
    last_of_tie = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    return np.r_[0.0, fpr[last_of_tie]], np.r_[0.0, pro[last_of_tie]]


def aupro(masks, maps, fpr_limit: float = 0.3) -> float:
    """Area under PRO vs FPR up to `fpr_limit` (trapezoid rule, linear interpolation at the limit) / fpr_limit."""
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(masks, maps)
    fpr = np.minimum(fpr, 1.0)
    keep = fpr <= fpr_limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < fpr_limit:
        j = int(np.searchsorted(fpr, fpr_limit, side="right"))  # first point beyond the limit
        x0, x1, y0, y1 = fpr[j - 1], fpr[j], pro[j - 1], pro[j]
        y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        x, y = np.r_[x, fpr_limit], np.r_[y, y_lim]
    return float(np.trapezoid(y, x) / fpr_limit)


def f1_max(labels, scores) -> tuple[float, float]:
    """The best F1 over all thresholds (score >= t is anomalous) and the threshold that gives it."""
    y, s = _binary_and_scores(labels, scores, "F1-max")
    order = np.argsort(-s, kind="stable")
    ys, ss = y[order], s[order]
    tp = np.cumsum(ys)
    fp = np.cumsum(~ys)
    last = np.r_[ss[1:] != ss[:-1], True]
    tp, fp, thr = tp[last], fp[last], ss[last]
    f1 = 2 * tp / (2 * tp + fp + (y.sum() - tp))
    best = int(np.argmax(f1))
    return float(f1[best]), float(thr[best])


def f1_at(labels, scores, threshold: float) -> float:
    """F1 of the rule score > threshold (the Detector's labelling rule)."""
    y, s = _np(labels).astype(bool).ravel(), _np(scores, np.float64).ravel()
    pred = s > threshold
    tp = float((pred & y).sum())
    denom = 2 * tp + float((pred & ~y).sum()) + float((~pred & y).sum())
    return 2 * tp / denom if denom else 0.0
