"""Evaluate a fitted Detector on a test set: image AUROC, pixel AUROC, AUPRO, F1, per defect type.

Resolution: by default heatmaps and masks at the detector's image_size (masks resized with nearest neighbour; with
resize="keep_aspect" the image's part of the heatmap, and the mask at that part's size);
with full_res=True at each image's original size (heatmaps resized bilinearly). Every report states which.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics
from .data import read_mask
from .datasets import Category, TestSample, mvtec_category, read_npy
from .errors import DataError


@dataclass
class EvalResult:
    category: str
    resolution: str                       # "256x256" or "original size"
    metrics: dict[str, float | int | None]
    per_defect: dict[str, float | None] = field(default_factory=dict)   # image AUROC of good vs each type
    notes: list[str] = field(default_factory=list)
    samples: list[TestSample] = field(default_factory=list)
    scores: np.ndarray | None = None
    heatmaps: list[np.ndarray] | np.ndarray | None = None   # (N, S, S) or a list at original sizes
    masks: list[np.ndarray] | np.ndarray | None = None
    threshold: float = float("nan")
    seconds: float = 0.0


def read_sample_mask(sample: TestSample) -> np.ndarray | None:
    """The ground-truth mask of a test sample as bool (H, W) at its image's size, or None when it has none."""
    if sample.mask_path is None:
        return None
    if sample.mask_path.suffix == ".npy":
        stack = read_npy(sample.mask_path)
        if stack.ndim != 3 or sample.mask_index is None or sample.mask_index >= stack.shape[0]:
            raise DataError(f"{sample.mask_path}: expected a (frames, H, W) mask stack with frame "
                            f"{sample.mask_index}, got shape {stack.shape}")
        return np.asarray(stack[sample.mask_index]) != 0
    return read_mask(sample.mask_path)


def mask_at(mask: np.ndarray | None, size: tuple[int, int]) -> np.ndarray:
    """A mask (or None: all normal) as bool at `size`, resized the way the evaluation resizes it (nearest)."""
    if mask is None:
        return np.zeros(size, bool)
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(t, size=size, mode="nearest")[0, 0].numpy() > 0.5


def _safe(name: str, fn, notes: list[str]):
    try:
        return fn()
    except ValueError as exc:  # undefined metric (e.g. no defective images): say so, never a silent nan
        notes.append(f"{name} undefined: {exc}")
        return None


def evaluate(detector, category: Category | str | Path, full_res: bool = False, batch_size: int = 16,
             progress: bool = False) -> EvalResult:
    """Predict every test sample in batches and compute the metrics; masks are checked against image sizes."""
    if not isinstance(category, Category):
        category = mvtec_category(category)
    start = time.perf_counter()
    samples = category.test
    if not samples:
        raise DataError(f"{category.root}: empty test set")
    hw = detector.input_hw
    heat_list, mask_list, scores = [], [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(samples), desc=f"evaluate {category.name}", unit="img")
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        pred = detector.predict([s.path for s in chunk], batch_size=batch_size, progress=False)
        scores.append(pred.scores.numpy())
        for j, s in enumerate(chunk):
            h, w = pred.sizes[j]
            mask = read_sample_mask(s)
            if mask is not None and mask.shape != (h, w):
                raise DataError(f"{s.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {s.path} "
                                f"is {w}x{h}")
            if full_res:
                heat_list.append(pred.heatmap_at_input_size(j).numpy())
                mask_list.append(np.zeros((h, w), bool) if mask is None else mask)
            else:  # at image_size, without the padding of resize="keep_aspect"
                heat_list.append(pred.heatmap_of_image(j).numpy())
                mask_list.append(mask_at(mask, heat_list[-1].shape))
        if bar:
            bar.update(len(chunk))
    if bar:
        bar.close()
    scores = np.concatenate(scores)
    same = len({h.shape for h in heat_list}) == 1
    heat = np.stack(heat_list) if same and not full_res else heat_list
    masks = np.stack(mask_list) if same and not full_res else mask_list
    labels = np.array([s.label for s in samples])
    notes = list(category.notes)
    missing = [str(s.path) for s in samples if s.label and s.mask_path is None]
    if missing:
        notes.append(f"{len(missing)} defective images have no mask (their pixels count as normal), "
                     f"e.g. {missing[0]}")
    if labels.sum() == 0:
        notes.append("the test set has no defective images: AUROC, AUPRO and F1 are undefined")
    elif labels.sum() == len(labels):
        notes.append("the test set has no normal images: image AUROC is undefined")
    m: dict[str, float | int | None] = {
        "image_auroc": _safe("image AUROC", lambda: metrics.image_auroc(labels, scores), notes),
        "pixel_auroc": _safe("pixel AUROC", lambda: metrics.pixel_auroc(masks, heat), notes),
        "aupro": _safe("AUPRO", lambda: metrics.aupro(masks, heat), notes),
    }
    f1 = _safe("F1-max", lambda: metrics.f1_max(labels, scores), notes) if labels.any() else None
    m["f1_max"] = None if f1 is None else f1[0]
    thr = float(detector.threshold)
    m["f1_at_threshold"] = None if np.isnan(thr) or not labels.any() else metrics.f1_at(labels, scores, thr)
    m["n_test"], m["n_defective"] = len(samples), int(labels.sum())
    per_defect = {}
    good = labels == 0
    for defect in sorted({s.defect for s in samples if s.label}):
        sel = good | np.array([s.defect == defect for s in samples])
        per_defect[defect] = _safe(f"image AUROC ({defect})",
                                   lambda: metrics.image_auroc(labels[sel], scores[sel]), [])
    resolution = "original size" if full_res else f"{hw[0]}x{hw[1]}"
    return EvalResult(category.name, resolution, m, per_defect, notes, samples, scores, heat, masks, thr,
                      time.perf_counter() - start)


def evaluate_category(detector, category, batch_size: int = 16, progress: bool = False) -> EvalResult:
    """An MVTec-layout category folder (kept for the demo)."""
    return evaluate(detector, category, batch_size=batch_size, progress=progress)
