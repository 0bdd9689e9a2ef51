"""Exact anomaly-detection metrics: image AUROC, pixel AUROC, AUPRO (MVTec definition), F1.

No threshold grids: every curve is exact. AUROC and AUPRO sort the normal scores once and binary-search the
others, so 2,000 images of 256x256 take seconds, not minutes (benchmarks/test_bench_metrics.py).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage


def _np(x, dtype=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    return arr.astype(dtype) if dtype is not None else arr


def _scores(x) -> np.ndarray:
    """Scores as a float array without widening float32 (a float64 copy of 131M pixels costs a second and 1 GB;
    widening never changes which scores tie, so every metric is the same either way)."""
    arr = _np(x)
    if arr.dtype in (np.float32, np.float64):
        return arr
    return arr.astype(np.float32 if arr.dtype in (np.float16, np.uint8, np.int8, np.bool_) else np.float64)


def _binary_and_scores(labels, scores, what: str) -> tuple[np.ndarray, np.ndarray]:
    y = _np(labels).reshape(-1)
    y = y if y.dtype == np.bool_ else y.astype(bool)
    s = _scores(scores).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"{what}: {y.size} labels but {s.size} scores")
    if not np.isfinite(s).all():
        raise ValueError(f"{what}: scores contain NaN or inf")
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or n_pos == y.size:
        kind = "anomalous" if n_pos == 0 else "normal"
        raise ValueError(f"{what} is undefined: the evaluation set has no {kind} samples")
    return y, s


def _count_below_and_tied(sorted_ref: np.ndarray, queries: np.ndarray) -> tuple[int, int]:
    """Over all queries: how many reference values are strictly below, and how many equal (exact integers)."""
    queries = np.sort(queries)  # sorted keys make searchsorted walk the reference once
    below = np.searchsorted(sorted_ref, queries, side="left")
    upto = np.searchsorted(sorted_ref, queries, side="right")
    n_below = int(below.sum(dtype=np.int64))
    return n_below, int(upto.sum(dtype=np.int64)) - n_below


def auroc(labels, scores, what: str = "AUROC") -> float:
    """Area under the ROC curve, exact, ties counted as half (Mann-Whitney U).

    One sort of each class and a binary search per positive: no argsort and no ranks of the whole set,
    which is what makes 131M pixels take seconds rather than a minute.
    """
    y, s = _binary_and_scores(labels, scores, what)
    pos, neg = s[y], s[~y]
    n_below, n_tied = _count_below_and_tied(np.sort(neg), pos)
    return float((n_below + 0.5 * n_tied) / (pos.size * neg.size))


def image_auroc(labels, scores) -> float:
    """Image-level AUROC from (N,) labels (1 = anomalous) and (N,) scores."""
    return auroc(labels, scores, "image AUROC")


def pixel_auroc(masks, maps) -> float:
    """Pixel-level AUROC over all pixels of all images: masks (N, H, W) bool, maps (N, H, W) float."""
    masks, maps, _ = _pixels(masks, maps, "pixel AUROC")
    return auroc(masks, maps, "pixel AUROC")


_PLANE_8 = np.zeros((3, 3, 3), dtype=bool)
_PLANE_8[1] = True  # 8-connectivity inside each image, never across images of the stack


def _pixels(masks, maps, what: str, regions: bool = False) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Flat masks and scores (views where the input allows) from (N, H, W) arrays, or from lists of (H_i, W_i)
    arrays (images of different sizes, e.g. at full resolution); with regions=True also the 8-connected
    ground-truth regions, numbered across the whole set, and their count."""
    if isinstance(masks, (list, tuple)) or isinstance(maps, (list, tuple)):
        masks, maps = [_np(m) != 0 for m in masks], [_scores(a) for a in maps]
        if len(masks) != len(maps) or any(m.shape != a.shape or m.ndim != 2 for m, a in zip(masks, maps)):
            raise ValueError(f"{what}: masks and maps must pair up as same-shape (H, W) arrays")
        if not masks:
            raise ValueError(f"{what}: no images")
        flat_m = np.concatenate([m.reshape(-1) for m in masks])
        flat_s = np.concatenate([a.reshape(-1) for a in maps])
        if not regions:
            return flat_m, flat_s, ()
        labels, n_regions = [], 0
        for m in masks:
            lab, n = ndimage.label(m, structure=_PLANE_8[1])
            lab[lab > 0] += n_regions
            labels.append(lab.reshape(-1))
            n_regions += n
        return flat_m, flat_s, (np.concatenate(labels), n_regions)
    masks, maps = _np(masks), _scores(maps)
    if masks.shape != maps.shape or masks.ndim != 3:
        raise ValueError(f"{what}: masks {masks.shape} and maps {maps.shape} must both be (N, H, W)")
    masks = masks if masks.dtype == np.bool_ else masks != 0
    if not regions:
        return masks.reshape(-1), maps.reshape(-1), ()
    lab, n_regions = ndimage.label(masks, structure=_PLANE_8)
    return masks.reshape(-1), maps.reshape(-1), (lab.reshape(-1), n_regions)


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """The exact ROC curve (FPR, TPR) over every distinct threshold, from (0, 0) to (1, 1)."""
    y, s = _binary_and_scores(labels, scores, "ROC")
    order = np.argsort(-s, kind="stable")
    ys, ss = y[order], s[order]
    last = np.r_[ss[1:] != ss[:-1], True]
    tp, fp = np.cumsum(ys)[last], np.cumsum(~ys)[last]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def pro_curve(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    """The exact PRO-vs-FPR curve (threshold descending, score >= t detected), from (0, 0) to (1, PRO at the
    lowest score).

    Regions: 8-connected components of each ground-truth mask, pooled over the set. PRO(t) is the mean over
    regions of the fraction of the region with score >= t; FPR(t) is over all normal pixels.

    Between two consecutive distinct anomalous scores only FPR moves, so the curve there is flat: it is fully
    described by two corners per anomalous score (just above it, and at it). Those corners come from one sort of
    the normal scores and binary searches, instead of an argsort of every pixel; the piecewise-linear curve,
    its area and any interpolation on it are the same as with a point at every distinct threshold.
    """
    is_defect, scores, (region, n_regions) = _pixels(masks, maps, "AUPRO", regions=True)
    if not np.isfinite(scores).all():
        raise ValueError("AUPRO: maps contain NaN or inf")
    n_normal = is_defect.size - int(np.count_nonzero(is_defect))
    if n_regions == 0 or n_normal == 0:
        raise ValueError("AUPRO is undefined: " + ("no defect regions in the masks" if n_regions == 0
                                                     else "no normal pixels"))
    normal = np.sort(scores[~is_defect])
    a_region, a_score = region[is_defect], scores[is_defect]
    sizes = np.bincount(a_region, minlength=n_regions + 1).astype(np.float64)
    # each anomalous pixel adds 1 / (|its region| * number of regions) to PRO
    order = np.argsort(-a_score, kind="stable")
    a_score = a_score[order]
    pro = np.cumsum(1.0 / (sizes[a_region[order]] * n_regions))
    last_of_tie = np.r_[a_score[1:] != a_score[:-1], True]
    thr, pro = a_score[last_of_tie], pro[last_of_tie]
    above = n_normal - np.searchsorted(normal, thr, side="right")  # normal pixels with score > t
    at_or_above = n_normal - np.searchsorted(normal, thr, side="left")  # ... score >= t
    fpr = np.empty(2 * thr.size + 2)
    fpr[0], fpr[1:-1:2], fpr[2:-1:2], fpr[-1] = 0.0, above / n_normal, at_or_above / n_normal, 1.0
    pro_pts = np.empty_like(fpr)
    pro_pts[0], pro_pts[1:-1:2], pro_pts[2:-1:2], pro_pts[-1] = 0.0, np.r_[0.0, pro[:-1]], pro, pro[-1]
    return fpr, pro_pts


def aupro(masks, maps, fpr_limit: float = 0.3) -> float:
    """Area under PRO vs FPR up to `fpr_limit` (trapezoid rule, linear interpolation at the limit) / fpr_limit."""
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(masks, maps)
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
