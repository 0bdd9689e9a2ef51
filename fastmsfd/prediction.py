"""Prediction: what Detector.predict and predict_iter return for a batch of images."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def peak_in_image(peak: tuple[int, int], box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[int, int]:
    """(x, y) in an input image of size (h, w) of a heatmap peak (row, column): box (top, left, height, width) is
    where the image lies in the heatmap (geometry.content_box)."""
    (row, col), (top, left, h, w), (src_h, src_w) = peak, box, size
    y = (min(max(row - top, 0), h - 1) + 0.5) * src_h / h
    x = (min(max(col - left, 0), w - 1) + 0.5) * src_w / w
    return min(int(x), src_w - 1), min(int(y), src_h - 1)


def explanation(map_z, global_z, peak, box, size) -> dict:
    """An image's score parts, JSON-ready: map_z (the map score, standardised), global_z (the global
    branch's; None without one) and peak {x, y} (where the heatmap peaks, in the input's pixels). A high map_z
    with a peak: a local defect there; a high global_z with a low map_z: the whole part looks different."""
    g = float(global_z)
    x, y = peak_in_image(peak, box, size)
    return {"map_z": float(map_z), "global_z": None if math.isnan(g) else g, "peak": {"x": x, "y": y}}


@dataclass
class Prediction:
    """Results of Detector.predict for a batch of B images."""
    heatmaps: torch.Tensor            # (B, H, W) float32 at the detector's image_size (input_hw);
    #                                   heatmap_at_input_size(i) gives heatmap i at its own image's size
    scores: torch.Tensor              # (B,) float32
    labels: torch.Tensor | None       # (B,) bool: score > threshold (None when not calibrated)
    masks: torch.Tensor | None        # (B, H, W) bool: heatmap > threshold (None when not calibrated)
    sizes: list[tuple[int, int]]      # original (H, W) of each input
    names: list[str | None]           # file paths where the inputs were files
    # (top, left, height, width) of each image inside its heatmap: all of it unless resize="keep_aspect" padded
    boxes: list[tuple[int, int, int, int]] | None = None
    # the score's parts, from the model's forward (model.ModelOutput): the map's standardised score, the
    # global branch's (NaN without one) and the heatmap maximum's (row, column). A high global_z with a low map_z:
    # the whole part looks different; a high map_z: a local defect at the peak.
    map_z: torch.Tensor | None = None       # (B,) float32
    global_z: torch.Tensor | None = None    # (B,) float32
    peaks: torch.Tensor | None = None       # (B, 2) int64, in heatmap pixels

    def __len__(self) -> int:
        return len(self.scores)

    def heatmap_of_image(self, i: int) -> torch.Tensor:
        """Heatmap i without the padding resize="keep_aspect" added (the whole heatmap otherwise)."""
        if self.boxes is None:
            return self.heatmaps[i]
        top, left, h, w = self.boxes[i]
        return self.heatmaps[i, top:top + h, left:left + w]

    def heatmap_at_input_size(self, i: int) -> torch.Tensor:
        """Heatmap i at its input's original size: the padding cropped, then resized (bilinear)."""
        h, w = self.sizes[i]
        return F.interpolate(self.heatmap_of_image(i)[None, None], size=(h, w), mode="bilinear",
                             align_corners=False)[0, 0]

    def _box(self, i: int) -> tuple[int, int, int, int]:
        return self.boxes[i] if self.boxes is not None else (0, 0, *self.heatmaps.shape[-2:])

    def peak_at_input_size(self, i: int) -> tuple[int, int]:
        """(x, y): where heatmap i peaks, in pixels of its input image (the padding taken off, the resize undone)."""
        return peak_in_image(self.peaks[i].tolist(), self._box(i), self.sizes[i])

    def explanation(self, i: int) -> dict:
        """Image i's score parts, JSON-ready (explanation())."""
        return explanation(self.map_z[i], self.global_z[i], self.peaks[i].tolist(), self._box(i), self.sizes[i])

    def heatmaps_at_input_size(self) -> list[torch.Tensor]:
        """Every heatmap at its own input's size (a list: the sizes may all differ)."""
        return [self.heatmap_at_input_size(i) for i in range(len(self))]

    @classmethod
    def concat(cls, parts: list["Prediction"]) -> "Prediction":
        """One Prediction from several (predict_iter's batches)."""
        def cat(xs):
            return None if xs[0] is None else torch.cat(xs)

        return cls(torch.cat([p.heatmaps for p in parts]), torch.cat([p.scores for p in parts]),
                   cat([p.labels for p in parts]), cat([p.masks for p in parts]),
                   [hw for p in parts for hw in p.sizes], [n for p in parts for n in p.names],
                   None if any(p.boxes is None for p in parts) else [b for p in parts for b in p.boxes],
                   *(None if any(getattr(p, f) is None for p in parts) else torch.cat([getattr(p, f) for p in parts])
                     for f in ("map_z", "global_z", "peaks")))
