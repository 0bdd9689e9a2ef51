"""Heatmap overlays as PNG files (no matplotlib needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .checkpoint import atomic_path


def _jet(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 with a jet-like colour map."""
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def overlay_vmax(threshold: float, heatmaps: np.ndarray) -> float:
    """The heatmap value shown at full colour: twice the threshold (it sits mid-scale), or the largest value
    when there is no usable threshold (unset, or not positive)."""
    if np.isfinite(threshold) and threshold > 0:
        return 2 * threshold
    return max(float(np.max(h)) for h in heatmaps)  # an array or a list of differently sized heatmaps


def overlay(image: np.ndarray, heatmap: np.ndarray, vmax: float, mask: np.ndarray | None = None,
            alpha: float = 0.5) -> np.ndarray:
    """Blend a heatmap (scaled by vmax, e.g. the threshold times 2) over an RGB uint8 image of the same size;
    outline the predicted mask in white when given."""
    heat = np.clip(heatmap / max(vmax, 1e-12), 0, 1)
    out = (image.astype(np.float32) * (1 - alpha) + _jet(heat).astype(np.float32) * alpha).astype(np.uint8)
    if mask is not None and mask.any():
        edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
        out[edge] = 255
    return out


def save_overlay(path: str | Path, image: np.ndarray, heatmap: np.ndarray, vmax: float,
                 mask: np.ndarray | None = None) -> None:
    """Write image | overlay side by side; `image` is resized to the heatmap's size first."""
    h, w = heatmap.shape
    if image.shape[:2] != (h, w):
        image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    panel = np.concatenate([image, overlay(image, heatmap, vmax, mask)], axis=1)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(panel).save(tmp, format="PNG")
