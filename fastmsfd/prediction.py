"""Prediction: what Detector.predict and predict_iter return for a batch of images."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Prediction:
    """Results of Detector.predict for a batch of B images."""
    heatmaps: torch.Tensor            # (B, H, W) float32 at the detector's input size (input_hw)
    scores: torch.Tensor              # (B,) float32
    labels: torch.Tensor | None       # (B,) bool: score > threshold (None when not calibrated)
    masks: torch.Tensor | None        # (B, H, W) bool: heatmap > threshold (None when not calibrated)
    sizes: list[tuple[int, int]]      # original (H, W) of each input
    names: list[str | None]           # file paths where the inputs were files

    def __len__(self) -> int:
        return len(self.scores)

    def heatmap_at_input_size(self, i: int) -> torch.Tensor:
        """Heatmap i resized (bilinear) to its input's original size."""
        h, w = self.sizes[i]
        return F.interpolate(self.heatmaps[i][None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]

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
                   [hw for p in parts for hw in p.sizes], [n for p in parts for n in p.names])
