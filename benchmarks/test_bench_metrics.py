"""Metric speed at evaluation scale: 2,000 test images of 256x256 (131M pixels), exact pixel AUROC and AUPRO,
beside scikit-learn's roc_auc_score on the same pixels (the reference implementation of AUROC).

    .venv/bin/python -m pytest benchmarks/test_bench_metrics.py --benchmark-min-rounds=1
"""
import numpy as np
import pytest

from fastmsfd import metrics

N, S = 2000, 256


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    masks = np.zeros((N, S, S), bool)
    for i in range(0, N, 2):  # half the images have a defect region
        y, x = rng.integers(0, S - 40, 2)
        masks[i, y:y + 40, x:x + 30] = True
    maps = (rng.random((N, S, S), dtype=np.float32) + masks * 0.5).astype(np.float32)
    return masks, maps


def test_aupro(benchmark, data):
    masks, maps = data
    value = benchmark.pedantic(metrics.aupro, args=(masks, maps), rounds=1, iterations=1)
    assert 0 < value <= 1


def test_pixel_auroc(benchmark, data):
    masks, maps = data
    value = benchmark.pedantic(metrics.pixel_auroc, args=(masks, maps), rounds=1, iterations=1)
    assert 0.5 < value <= 1


def test_pixel_auroc_sklearn_reference(benchmark, data):
    sklearn = pytest.importorskip("sklearn.metrics")
    masks, maps = data
    value = benchmark.pedantic(sklearn.roc_auc_score, args=(masks.ravel(), maps.ravel()), rounds=1, iterations=1)
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(value, abs=1e-9)  # the fast path is still exact
