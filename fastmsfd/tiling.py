"""Tiles: the networks run on overlapping tiles cut from the image (resized to image_size), and the tiles'
heatmaps are stitched back into one.

Each tile's heatmap is first standardised by the border statistics of normal *tiles* (calibration.py), so a
tile's noisier edges are on the same scale as its centre; the stitch then weights every tile by a window that
rises from almost 0 at its edges to 1 over the overlap, normalised so the weights at each pixel sum to 1: a
tile's edge, where its context ends, hardly counts where a neighbour covers it. Cutting and
stitching are fixed slices and pads for a given geometry, so the ONNX graph contains them too. The global branch
sees the whole image once at its own size (whole_view; Detector.global_hw), not the tiles.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _starts(length: int, tile: int, overlap: float) -> list[int]:
    """Tile starts along one axis: the fewest tiles whose neighbours overlap by at least `overlap` of a tile,
    spread evenly from 0 to length - tile (the last tile ends at the edge)."""
    if length <= tile:
        return [0]
    step = max(1, math.floor(tile * (1 - overlap)))
    n = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _ramp(tile: int, overlap_px: int) -> torch.Tensor:
    """A tile's 1-D blending weight: rises from almost 0 at its edges to 1 over the overlap (a squared sine, so
    neither the weight nor its slope jumps: a linear ramp left measurable steps along the seams), 1 in the
    middle."""
    i = torch.arange(tile, dtype=torch.float64)
    edge = torch.minimum(i, tile - 1 - i) + 1e-3  # > 0: an image edge covered by one tile only keeps it
    return torch.sin(0.5 * math.pi * (edge / max(1, overlap_px)).clamp(max=1.0)) ** 2


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of an image of size canvas lie: (top, left) of each, row by row."""
    canvas: tuple[int, int]
    tile: tuple[int, int]
    overlap: float

    @property
    def rows(self) -> list[int]:
        return _starts(self.canvas[0], self.tile[0], self.overlap)

    @property
    def cols(self) -> list[int]:
        return _starts(self.canvas[1], self.tile[1], self.overlap)

    @property
    def positions(self) -> list[tuple[int, int]]:
        return [(r, c) for r in self.rows for c in self.cols]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def seams(self) -> tuple[list[int], list[int]]:
        """Rows and columns of the canvas where a tile begins or ends inside it (tile edges that are not image
        edges)."""
        (H, W), (th, tw) = self.canvas, self.tile
        rows = sorted({r for r in self.rows if r > 0} | {r + th - 1 for r in self.rows if r + th < H})
        cols = sorted({c for c in self.cols if c > 0} | {c + tw - 1 for c in self.cols if c + tw < W})
        return rows, cols

    def weights(self) -> torch.Tensor:
        """(n, th, tw) float32 stitching weights: each tile's window divided by the windows' sum at every pixel."""
        (th, tw) = self.tile

        def overlap_px(starts, tile):
            gaps = [b - a for a, b in zip(starts, starts[1:])]
            return tile - max(gaps) if gaps else 0

        win = _ramp(th, overlap_px(self.rows, th))[:, None] * _ramp(tw, overlap_px(self.cols, tw))[None, :]
        total = sum(_place(win[None], self.canvas, pos) for pos in self.positions)[0]
        return torch.stack([win / total[r:r + th, c:c + tw] for r, c in self.positions]).float()


def _place(x: torch.Tensor, canvas: tuple[int, int], pos: tuple[int, int]) -> torch.Tensor:
    """(..., th, tw) placed at pos on a zero (..., H, W) canvas (a pad: exportable)."""
    (H, W), (r, c) = canvas, pos
    th, tw = x.shape[-2:]
    return F.pad(x, (c, W - c - tw, r, H - r - th))


def warn_smaller_than_tile(sizes, names, grid: TileGrid, stacklevel: int = 2) -> None:
    """Images smaller than one tile are up-sampled to the canvas like any other (documented): say so."""
    th, tw = grid.tile
    small = [(n or f"images[{i}]", hw) for i, (hw, n) in enumerate(zip(sizes, names)) if hw[0] < th or hw[1] < tw]
    if small:
        name, (h, w) = small[0]
        warnings.warn(f"{len(small)} image(s) smaller than one tile ({th}x{tw}), e.g. {name} ({h}x{w}): "
                      f"up-sampled to image_size {grid.canvas[0]}x{grid.canvas[1]} and run as tiles",
                      stacklevel=stacklevel + 1)


def cut(images: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """(B, C, H, W) -> (n * B, C, th, tw): tile k of image b at index k * B + b."""
    th, tw = grid.tile
    return torch.cat([images[:, :, r:r + th, c:c + tw] for r, c in grid.positions])


def stitch(tiles: torch.Tensor, grid: TileGrid, weights: torch.Tensor) -> torch.Tensor:
    """(n * B, th, tw) tile heatmaps (cut's order) and grid.weights() -> (B, H, W)."""
    n = len(grid)
    per_tile = tiles.float().reshape(n, -1, *grid.tile) * weights[:, None]
    return sum(_place(per_tile[k], grid.canvas, pos) for k, pos in enumerate(grid.positions))


def view_matrices(canvas: tuple[int, int], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows (h, H), cols (w, W)): antialiased bilinear resizing from canvas to size as two matrices (it is
    separable), so the whole-image view is two MatMuls in every runtime (ONNX opset 17 has no antialiased
    Resize)."""
    def along(n_in: int, n_out: int) -> torch.Tensor:
        eye = torch.eye(n_in, dtype=torch.float64)[None, None]
        return F.interpolate(eye, size=(n_out, n_in), mode="bilinear", antialias=True, align_corners=False)[0, 0]

    return along(canvas[0], size[0]).float(), along(canvas[1], size[1]).float()


def whole_view(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, h, w): the whole image at the tiles' size (view_matrices)."""
    return rows @ images @ cols.T


def random_crops(images: torch.Tensor, tile: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """One random tile-sized crop of each image (B, C, H, W); images already tile-sized pass unchanged."""
    H, W = images.shape[-2:]
    th, tw = tile
    if (H, W) == (th, tw):
        return images
    tops = torch.randint(0, H - th + 1, (len(images),), generator=generator).tolist()
    lefts = torch.randint(0, W - tw + 1, (len(images),), generator=generator).tolist()
    return torch.stack([im[:, r:r + th, c:c + tw] for im, r, c in zip(images, tops, lefts)])
