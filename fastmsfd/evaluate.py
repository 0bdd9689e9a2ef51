"""Evaluate a fitted Detector on an MVTec-layout category: metrics at the detector's image_size."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics
from .data import TestSample, mvtec_test_set, read_image, read_mask
from .errors import DataError


@dataclass
class EvalResult:
    category: str
    resolution: int
    metrics: dict[str, float | None]
    notes: list[str] = field(default_factory=list)
    samples: list[TestSample] = field(default_factory=list)
    scores: np.ndarray | None = None
    heatmaps: np.ndarray | None = None   # (N, S, S) float32
    masks: np.ndarray | None = None      # (N, S, S) bool


def _mask_at(sample: TestSample, size: int) -> np.ndarray:
    if sample.mask_path is None:
        return np.zeros((size, size), dtype=bool)
    mask = read_mask(sample.mask_path)
    h, w = read_image(sample.path).shape[:2]
    if mask.shape != (h, w):
        raise DataError(f"{sample.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                        f"{sample.path} is {w}x{h}")
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="nearest")[0, 0].numpy() > 0.5


def _safe(name: str, fn, notes: list[str]):
    try:
        return fn()
    except ValueError as exc:  # undefined metric (e.g. no defective images): say so, never a silent nan
        notes.append(f"{name}: {exc}")
        return None


def evaluate_category(detector, category: str | Path, batch_size: int = 16, progress: bool = False) -> EvalResult:
    category = Path(category)
    samples = mvtec_test_set(category)
    size = detector.image_size
    pred = detector.predict([s.path for s in samples], batch_size=batch_size, progress=progress)
    labels = np.array([s.label for s in samples])
    masks = np.stack([_mask_at(s, size) for s in samples])
    heat = pred.heatmaps.numpy()
    scores = pred.scores.numpy()
    notes: list[str] = []
    missing = [str(s.path) for s in samples if s.label and s.mask_path is None]
    if missing:
        notes.append(f"{len(missing)} defective images have no mask (treated as all-normal pixels), "
                     f"e.g. {missing[0]}")
    m: dict[str, float | None] = {
        "image_auroc": _safe("image AUROC", lambda: metrics.image_auroc(labels, scores), notes),
        "pixel_auroc": _safe("pixel AUROC", lambda: metrics.pixel_auroc(masks, heat), notes),
        "aupro": _safe("AUPRO", lambda: metrics.aupro(masks, heat), notes),
    }
    f1 = _safe("F1-max", lambda: metrics.f1_max(labels, scores), notes)
    m["f1_max"] = None if f1 is None else f1[0]
    thr = float(detector.threshold)
    m["f1_at_threshold"] = None if np.isnan(thr) else metrics.f1_at(labels, scores, thr)
    m["n_test"], m["n_defective"] = len(samples), int(labels.sum())
    return EvalResult(category.name, size, m, notes, samples, scores, heat, masks)
