"""Prediction: what Detector.predict and predict_iter return for a batch of images."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
                   None if any(p.boxes is None for p in parts) else [b for p in parts for b in p.boxes])
