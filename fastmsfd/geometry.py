"""How an image of any size becomes the network's input, and back.

resize="squash" (the default): stretched to image_size. resize="keep_aspect": scaled to fit inside image_size
with its aspect kept, centred, and the rest filled by repeating the edge pixels (not black, which would look
like a defect); the heatmap's padded part is cropped away before it is resized back to the image's own size.
image_size="auto": fit() derives the size from the training images (auto_image_size) and prints it.
"""
from __future__ import annotations

import math
import statistics
import warnings
from typing import Sequence

import torch

RESIZE_POLICIES = ("squash", "keep_aspect")
AUTO_SIDE = 256                # image_size="auto": a square's side; other aspects keep about its area
AUTO_AREA = AUTO_SIDE * AUTO_SIDE


def content_box(src_hw: Sequence[int], canvas_hw: Sequence[int], policy: str) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the image inside the canvas."""
    (h, w), (H, W) = src_hw, canvas_hw
    if policy == "squash":
        return 0, 0, H, W
    scale = min(H / h, W / w)
    ch, cw = min(H, max(1, round(h * scale))), min(W, max(1, round(w * scale)))
    return (H - ch) // 2, (W - cw) // 2, ch, cw


def pad_edges(image: torch.Tensor, box: tuple[int, int, int, int], canvas_hw: Sequence[int]) -> torch.Tensor:
    """(..., h, w) placed at box on a canvas (..., H, W) whose border repeats the image's edge pixels (any
    dtype)."""
    top, left, h, w = box
    H, W = canvas_hw
    rows = (torch.arange(H) - top).clamp(0, h - 1)
    cols = (torch.arange(W) - left).clamp(0, w - 1)
    return image[..., rows, :][..., cols]


def to_canvas(images: torch.Tensor, canvas_hw: Sequence[int], policy: str) -> torch.Tensor:
    """Float images (B, C, h, w) at canvas_hw by the resize policy (bilinear, antialiased; keep_aspect pads)."""
    if tuple(images.shape[-2:]) == tuple(canvas_hw):
        return images
    box = content_box(tuple(images.shape[-2:]), canvas_hw, policy)
    images = torch.nn.functional.interpolate(images, size=box[2:], mode="bilinear", antialias=True,
                                             align_corners=False)
    return pad_edges(images, box, canvas_hw)


def round_to_stride(hw: tuple[int, int], stride: int, what: str = "image_size") -> tuple[int, int]:
    """hw with each side rounded to the nearest multiple of stride (at least one stride); warns naming the size
    used when it changes anything. A side that is not a multiple leaves the deepest cells half on padding."""
    out = tuple(_nearest_multiple(v, stride) for v in hw)
    if out != tuple(hw):
        warnings.warn(f"{what} {hw[0]}x{hw[1]} is not a multiple of the network's stride {stride}: using "
                      f"{out[0]}x{out[1]} (height x width)", stacklevel=3)
    return out


def auto_image_size(sizes: Sequence[tuple[int, int]], stride: int, area: int = AUTO_AREA) -> tuple[int, int]:
    """(H, W): the training images' median aspect ratio at about `area` pixels, each side a multiple of stride."""
    if not sizes:
        raise ValueError("image_size='auto' needs at least one training image")
    aspect = statistics.median(h / w for h, w in sizes)
    h, w = (area * aspect) ** 0.5, (area / aspect) ** 0.5
    return tuple(_nearest_multiple(v, stride) for v in (h, w))


def _nearest_multiple(value: float, stride: int) -> int:
    """The multiple of stride nearest value (halves round up), at least one stride."""
    return max(stride, math.floor(value / stride + 0.5) * stride)
