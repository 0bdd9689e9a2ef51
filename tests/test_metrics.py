"""Metrics: AUROC against scikit-learn (ties included), AUPRO against a brute force over every threshold."""
import numpy as np
import pytest
from scipy import ndimage

from fastmsfd import metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", range(12))
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = rng.integers(0, 6, n).astype(float) if seed % 2 else rng.standard_normal(n)  # heavy ties on odd seeds
    assert metrics.image_auroc(y, s) == pytest.approx(sklearn_metrics.roc_auc_score(y, s), abs=1e-12)


def test_auroc_undefined_is_an_error_not_nan():
    with pytest.raises(ValueError, match="no anomalous"):
        metrics.image_auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="no normal"):
        metrics.pixel_auroc(np.ones((1, 2, 2)), np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.image_auroc([0, 1], [0.1, float("nan")])


def brute_aupro(masks, maps, limit=0.3):
    """Every distinct threshold t (score >= t positive), PRO and FPR computed from scratch."""
    region_idx = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        region_idx += [(i, lab == k) for k in range(1, n + 1)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fprs.append((pred & normal).sum() / normal.sum())
        pros.append(np.mean([(pred[i] & r).sum() / r.sum() for i, r in region_idx]))
    fprs, pros = np.array(fprs), np.array(pros)
    # integrate up to the limit with linear interpolation
    area, prev_f, prev_p = 0.0, 0.0, 0.0
    for f, p in zip(fprs[1:], pros[1:]):
        if f > limit:
            p_lim = prev_p + (p - prev_p) * (limit - prev_f) / (f - prev_f)
            area += (limit - prev_f) * (prev_p + p_lim) / 2
            return area / limit
        area += (f - prev_f) * (prev_p + p) / 2
        prev_f, prev_p = f, p
    return area / limit


@pytest.mark.parametrize("seed", range(15))
def test_aupro_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    N, H, W = int(rng.integers(1, 4)), int(rng.integers(4, 12)), int(rng.integers(4, 12))
    masks = rng.random((N, H, W)) < rng.uniform(0.05, 0.4)
    if seed % 3 == 0:
        masks[0] = False  # an image without defects (all its pixels are normal)
    masks[-1, 0, 0] = True  # at least one region
    maps = rng.integers(0, 8, (N, H, W)).astype(float) if seed % 2 else rng.random((N, H, W))
    maps = maps + masks * rng.uniform(0, 1.5)
    for limit in (0.3, 0.05, 1.0):
        assert metrics.aupro(masks, maps, limit) == pytest.approx(brute_aupro(masks, maps, limit), abs=1e-6)


def test_aupro_perfect_and_undefined():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 2:4, 2:5] = True
    assert metrics.aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no defect regions"):
        metrics.aupro(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4)))


def test_f1_max_matches_exhaustive_search(rng):
    y = rng.integers(0, 2, 60)
    s = rng.integers(0, 10, 60).astype(float)
    best = max(sklearn_metrics.f1_score(y, s >= t) for t in np.unique(s))
    f1, thr = metrics.f1_max(y, s)
    assert f1 == pytest.approx(best)
    assert metrics.f1_at(y, s, thr - 1e-9) == pytest.approx(best)


@pytest.mark.parametrize("seed", range(8))
def test_pixel_auroc_matches_sklearn_either_class_larger(seed):
    """Defects rarer than normal pixels, and more common; heavy ties on half the seeds."""
    rng = np.random.default_rng(100 + seed)
    shape = (int(rng.integers(1, 5)), int(rng.integers(3, 30)), int(rng.integers(3, 30)))
    masks = rng.random(shape) < (0.1 if seed % 2 else 0.9)
    masks.flat[:2] = [True, False]
    maps = rng.integers(0, 5, shape).astype(np.float32) if seed % 4 < 2 else rng.random(shape, dtype=np.float32)
    maps += masks * np.float32(rng.uniform(0, 1))
    expected = sklearn_metrics.roc_auc_score(masks.ravel(), maps.ravel())
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    assert metrics.pixel_auroc(list(masks), list(maps)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_aupro_of_images_of_different_sizes_matches_brute_force(seed):
    """List input (full-resolution evaluation): each image labelled on its own, regions pooled over the set."""
    rng = np.random.default_rng(200 + seed)
    masks, maps = [], []
    for i in range(3):
        h, w = rng.integers(4, 10, 2)
        m = rng.random((h, w)) < 0.2
        m[0, 0] = i == 2 or m[0, 0]
        masks.append(m)
        maps.append(rng.integers(0, 6, (h, w)).astype(float) + m * 0.7)
    all_scores = np.concatenate([a.ravel() for a in maps])
    for limit in (0.3, 1.0):
        got = metrics.aupro(masks, maps, limit)
        region_idx = []
        for m in masks:
            lab, n = ndimage.label(m, structure=np.ones((3, 3)))
            region_idx.append((lab, n))
        fprs, pros = [0.0], [0.0]
        n_normal = sum((~m).sum() for m in masks)
        for t in np.unique(all_scores)[::-1]:
            fprs.append(sum(((a >= t) & ~m).sum() for m, a in zip(masks, maps)) / n_normal)
            pros.append(np.mean([((a >= t) & (lab == k)).sum() / (lab == k).sum()
                                 for m, a, (lab, n) in zip(masks, maps, region_idx) for k in range(1, n + 1)]))
        area, pf, pp = 0.0, 0.0, 0.0
        for f, p in zip(fprs[1:], pros[1:]):
            if f > limit:
                area += (limit - pf) * (pp + pp + (p - pp) * (limit - pf) / (f - pf)) / 2
                break
            area += (f - pf) * (pp + p) / 2
            pf, pp = f, p
        assert got == pytest.approx(area / limit, abs=1e-6)


def test_metrics_do_not_depend_on_score_dtype(rng):
    """float32 maps are used as they are (no float64 copy); the value equals the float64 computation."""
    masks = rng.random((3, 17, 13)) < 0.15
    maps = (rng.random((3, 17, 13)) + masks * 0.3).astype(np.float32)
    assert metrics.aupro(masks, maps) == pytest.approx(metrics.aupro(masks, maps.astype(np.float64)), abs=1e-12)
    assert metrics.pixel_auroc(masks, maps) == metrics.pixel_auroc(masks, maps.astype(np.float64))
