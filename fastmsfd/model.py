"""MSFDModel: the one inference module. Images at the network input size -> heatmap, score and the score's parts.

The torch runtime calls it; ONNX export traces exactly it (export.py), and ONNX Runtime, OpenVINO and the Triton
repository run that export: there is no second forward. It owns the networks (teacher, student, the global
branch's own teacher) and every fitted statistic as a buffer. fit.py measures those statistics through the
public pieces forward is made of (normalize, features, raw_heatmaps, map_and_global, whole_image_features), so
what fit measures is what inference computes. docs/design.md ("The data path") draws it.
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Sequence

import torch
from torch import nn

from . import calibration, geometry, global_score, ops, tiling
from .backbones import build_student, build_teacher, layer_order, normalization
from .config import DetectorConfig
from .data import as_hw
from .errors import WeightsNotFoundError
from .ops import reference

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelOutput(NamedTuple):
    """What MSFDModel.forward returns for a batch of B images (every runtime returns the same fields)."""
    heatmap: torch.Tensor   # (B, H, W) float32 at the network input size
    score: torch.Tensor     # (B,) float32: anomalous when above the threshold
    map_z: torch.Tensor     # (B,) the map score, standardised on held-out normal images (no global branch: score)
    global_z: torch.Tensor  # (B,) the global branch's score standardised likewise; NaN without a global branch
    peak: torch.Tensor      # (B, 2) int64 (row, column) of the heatmap's maximum


OUTPUT_NAMES = ModelOutput._fields


def teacher_layers(backbone: str, layers: Sequence[str], global_layers: Sequence[str] = ()):
    """(the teacher's layers shallow to deep, the map layers' indices in them, the global layers' or None)."""
    order = layer_order(backbone)
    for name in tuple(layers) + tuple(global_layers):
        if name not in order:
            raise ValueError(f"{backbone} has no layer {name!r} (layers: {', '.join(order)})")
    wanted = sorted(set(layers) | set(global_layers), key=order.index)
    # the networks return their layers from shallow to deep, whatever order they were named in
    return (tuple(wanted), [wanted.index(name) for name in sorted(layers, key=order.index)],
            [wanted.index(name) for name in sorted(global_layers, key=order.index)] or None)


class MSFDModel(nn.Module):
    """A frozen teacher, a student and the global branch, with every fitted statistic, as one nn.Module."""

    TILE_CHUNK = 32  # network inputs per pass when an image runs as tiles: memory stays bounded

    def __init__(self, config: DetectorConfig, weights=None, download: bool = False):
        super().__init__()
        if not config.resolved:
            raise ValueError("MSFDModel needs a resolved config (fastmsfd.config.resolve)")
        self.config = config
        net, score = config.network, config.score
        global_layers = global_score.layer_names(score.global_layer)
        # the networks' map layers: the heatmap's and the score's, shallow to deep; the layers each map reads
        order = layer_order(net.backbone)
        self.map_layers = tuple(sorted(set(net.layers) | set(score.score_layers or ()), key=order.index))
        self.heat_index = [self.map_layers.index(n) for n in sorted(net.layers, key=order.index)]
        self.score_index = None if score.score_layers is None else \
            [self.map_layers.index(n) for n in sorted(score.score_layers, key=order.index)]
        names, self.map_index, self.global_index = teacher_layers(
            net.backbone, self.map_layers, () if score.global_backbone else global_layers)
        self.teacher = build_teacher(net.backbone, names, weights=weights, download=download)
        self.global_teacher = None  # the global branch's own teacher; None: the map's teacher serves it
        if score.global_backbone:
            g_names, _, self.global_index = teacher_layers(score.global_backbone, (), global_layers)
            try:
                self.global_teacher = build_teacher(score.global_backbone, g_names, download=download,
                                                    weights="random" if net.random_teacher else None)
            except WeightsNotFoundError as exc:
                raise WeightsNotFoundError(f"{exc} (this is the global branch's teacher; global_backbone=None "
                                           "uses the map's teacher instead)") from None
        self.student = build_student(net.backbone, self.map_layers)
        mean, std = normalization(net.backbone)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        # a global teacher trained on another input normalisation gets x * scale + shift (identity: skipped)
        g_mean, g_std = normalization(score.global_backbone) if score.global_backbone else (mean, std)
        self.global_renormalize = (g_mean, g_std) != (mean, std)
        self.register_buffer("global_in_scale", self.std / torch.tensor(g_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("global_in_shift", (self.mean - torch.tensor(g_mean).view(1, 3, 1, 1)) /
                             torch.tensor(g_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("layer_weights", torch.ones(len(self.map_layers)))  # one per map layer
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self._build_views()  # first: a tile larger than image_size is clamped here
        # per-pixel statistics of normal heatmaps (map_norm="border"), and of the score's map when it has layers
        # of its own; the identity until fit measures them
        self.reset_border_statistics()
        if self.has_global:  # the global branch's density and the fusion's standardisation (identity until fit)
            c = sum((self.global_teacher or self.teacher).channels[i] for i in self.global_index)
            self.register_buffer("global_mean", torch.zeros(c))
            self.register_buffer("global_precision", torch.eye(c))
            # global_density="nearest": the training images' pooled features, as many rows as fit keeps; until
            # then the origin, which scores as the Gaussian's identity does
            self.register_buffer("global_memory", torch.zeros(1, c))
            self.register_buffer("score_stats", torch.tensor([0.0, 1.0, 0.0, 1.0]))
        self.precision = "float32"  # what the torch runtime computes in (set by the runtime choice; never "auto")
        self.ops_backend = "auto"   # the fused op's backend (fastmsfd.ops); tracing for export takes the reference
        self.compile_mode: bool | str = False  # torch.compile of the networks (eval, no grad)
        self._compiled = None
        self.student.eval()
        # channels_last: a CPU training step runs faster in it (docs/defaults.md has the measurement)
        for net_ in self.networks():
            net_.to(memory_format=torch.channels_last)

    # ---- geometry ----------------------------------------------------------------------------------------
    @property
    def input_hw(self) -> tuple[int, int]:
        """Every image is resized to this (height, width)."""
        return as_hw(self.config.geometry.image_size)

    @property
    def network_hw(self) -> tuple[int, int]:
        """The networks' input (height, width): the tile when they run on tiles, else input_hw."""
        tile = self.config.geometry.tile
        return self.input_hw if tile is None else as_hw(tile)

    @property
    def stride(self) -> int:
        """The deepest map layer's stride: sizes that are a multiple of it leave no cell half on padding."""
        return max(self.student.strides)

    @property
    def has_global(self) -> bool:
        return self.global_index is not None

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def networks(self) -> list[nn.Module]:
        """The teacher, the student and the global branch's own teacher if it has one."""
        return [self.teacher, self.student] + ([self.global_teacher] if self.global_teacher is not None else [])

    def set_geometry(self, image_size, tile=None) -> None:
        """Change image_size and tile (fit rounds them to the stride); the border statistics reset."""
        self.config = self.config.replace(image_size=list(as_hw(image_size)),
                                          tile=None if tile is None else list(as_hw(tile)))
        self._build_views()
        self.reset_border_statistics()

    def reset_border_statistics(self) -> None:
        names = ("map",) + (("score_map",) if self.score_index is not None else ())
        for name in names:
            self.register_buffer(f"{name}_mean", torch.zeros(self.network_hw, device=self.device))
            self.register_buffer(f"{name}_std", torch.ones(self.network_hw, device=self.device))

    def _global_view_size(self) -> tuple[int, int]:
        size = self.config.score.global_image_size
        if not self.has_global:  # no branch: nothing to view (no view matrices to build or export)
            return self.input_hw
        if size is None:
            return self.network_hw
        stride = max((self.global_teacher or self.teacher).backbone.strides[i] for i in self.global_index)
        if isinstance(size, int):  # about size x size pixels at the input's aspect, never more than the input
            h, w = self.input_hw
            return self.input_hw if size * size >= h * w else geometry.auto_image_size([self.input_hw], stride,
                                                                                        size * size)
        return geometry.round_to_stride(size, stride, "global_image_size")

    def _build_views(self) -> None:
        """The tiles of input_hw and the global branch's whole-image view (both follow image_size)."""
        geo = self.config.geometry
        tile = None if geo.tile is None else tuple(min(a, b) for a, b in zip(as_hw(geo.tile), self.input_hw))
        if tile is not None and tile != as_hw(geo.tile):
            warnings.warn(f"tile {as_hw(geo.tile)} is larger than image_size {self.input_hw}: using tiles of "
                          f"{tile}", stacklevel=4)
            self.config = self.config.replace(tile=list(tile))
        self.grid = None if tile is None or tile == self.input_hw else tiling.TileGrid(self.input_hw, tile,
                                                                                      geo.overlap)
        weights = self.grid.weights() if self.grid else torch.ones(1, 1, 1)
        self.register_buffer("tile_weights", weights.to(self.device), persistent=False)
        self.global_hw = self._global_view_size()  # what the global branch sees of the whole image
        if isinstance(self.config.score.global_image_size, tuple) and self.has_global:
            self.config = self.config.replace(global_image_size=list(self.global_hw))  # rounded: warn once
        self.view_resized = self.global_hw != self.input_hw  # else the branch sees the input itself
        rows, cols = (tiling.view_matrices(self.input_hw, self.global_hw) if self.view_resized
                      else (torch.ones(1, 1),) * 2)
        self.register_buffer("view_rows", rows.to(self.device), persistent=False)
        self.register_buffer("view_cols", cols.to(self.device), persistent=False)

    # ---- the pieces forward is made of -------------------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images, or float images in [0, 1] -> the backbone's input normalisation, channels_last."""
        x = images.to(self.device, non_blocking=True).float()
        if images.dtype == torch.uint8 and torch.jit.is_tracing():
            # the exported graph folds the 1/255 into its constants, as every earlier export did (the same
            # function; float32 rounding differs from the eager order in the last bit)
            return (x - self.mean * 255.0) / (self.std * 255.0)
        if images.dtype == torch.uint8:
            x = x / 255.0
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def autocast(self):
        dtype = DTYPES[self.precision]
        return torch.autocast(self.device.type, dtype=dtype,
                              enabled=dtype != torch.float32 and not torch.jit.is_tracing())

    def features(self, x: torch.Tensor, student: nn.Module | None = None, teacher: bool = True):
        """Teacher and student features at the map layers of normalised network inputs, under the precision
        (teacher=False: the student's alone). student: the network to run in place of self.student (its DDP
        wrapper while training)."""
        if not teacher:
            with self.autocast():
                return (student or self.student)(x)
        return self._features(x, student, pooled_global=False)[:2]

    def all_features(self, x: torch.Tensor):
        """(teacher map features, student features, pooled global features or None)."""
        if self.compile_mode and not self.training and not torch.is_grad_enabled() and not torch.jit.is_tracing():
            if self._compiled is None:
                mode = None if self.compile_mode is True else self.compile_mode
                self._compiled = torch.compile(self._features, mode=mode, dynamic=False)
            return self._compiled(x)
        return self._features(x)

    def teacher_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The frozen teacher's map-layer features of normalised images, in float32 (what fit caches)."""
        with torch.no_grad(), self.autocast():
            t_all = self.teacher(x)
        return [t_all[i].float() for i in self.map_index]

    def _features(self, x: torch.Tensor, student: nn.Module | None = None, pooled_global: bool = True):
        with self.autocast():
            t_all, s = self.teacher(x), (student or self.student)(x)
            g = None
            if self.has_global and pooled_global:  # the map teacher's features serve an unresized view
                g = self.pooled_global(self.whole_image(x), None if self.view_resized else t_all)
        t = [t_all[i] for i in self.map_index]
        # autocast can leave the teacher's standardisation in float32: give both the student's dtype
        return [a.to(b.dtype) for a, b in zip(t, s)], s, g

    def whole_image(self, x: torch.Tensor) -> torch.Tensor:
        """What the global branch sees of normalised images at input_hw: the whole image at global_hw."""
        if not self.view_resized:
            return x
        return tiling.whole_view(x, self.view_rows, self.view_cols).contiguous(memory_format=torch.channels_last)

    def global_teacher_input(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised inputs in the global teacher's own input normalisation."""
        return x * self.global_in_scale + self.global_in_shift if self.global_renormalize else x

    def pooled_global(self, view: torch.Tensor, teacher_features=None) -> torch.Tensor:
        """Pooled global-layer features (B, C) of a normalised view: from the branch's own teacher, or from the map
        teacher's features (computed here unless given)."""
        if self.global_teacher is None:
            t_all = self.teacher(view) if teacher_features is None else teacher_features
        else:
            t_all = self.global_teacher(self.global_teacher_input(view))
        return global_score.pooled_layers(t_all, self.global_index)

    def whole_image_features(self, x: torch.Tensor) -> torch.Tensor:
        """The global branch's pooled features of normalised images at input_hw (the teacher alone runs)."""
        with self.autocast():
            return self.pooled_global(self.whole_image(x))

    def global_distance(self, pooled: torch.Tensor) -> torch.Tensor:
        """The global branch's raw score of pooled features (B, C) under its density."""
        density = self.config.score.global_density
        return global_score.distance(pooled, density, getattr(self, "global_mean", None),
                                     getattr(self, "global_precision", None), getattr(self, "global_memory", None))

    def raw_heatmaps(self, t, s, layer_weights: Sequence[float] | None = None):
        """(heatmaps, scores) of teacher/student features at the networks' input size, before the border
        standardisation: the fused op (fastmsfd.ops) with this model's settings."""
        maps, hw = self.config.map, self.network_hw
        weights = self.layer_weights.tolist() if layer_weights is None else list(layer_weights)
        sigmas = reference.default_sigmas([tuple(f.shape[-2:]) for f in t], hw, maps.sigma_factor)
        backend = "reference" if torch.jit.is_tracing() else self.ops_backend  # the traced graph: plain ops
        return ops.anomaly_map(t, s, hw, layer_weights=weights, alpha=maps.alpha, beta=maps.beta, sigmas=sigmas,
                               aggregate=maps.aggregate, topk=self.config.score.score_topk,
                               blur_sigma=maps.blur_sigma, backend=backend, upsampling=maps.upsampling)

    def raw_maps(self, t, s, index: Sequence[int]):
        """(maps, scores) of the map layers at `index` (heat_index, score_index) of the map layers' features,
        weighted by their layer weights, before the border standardisation."""
        weights = self.layer_weights.tolist()
        return self.raw_heatmaps([t[i] for i in index], [s[i] for i in index], [weights[i] for i in index])

    def heatmaps(self, t, s):
        """(heatmaps, their scores, score maps or None) of the map layers' features at the networks' input size,
        each standardised by its border statistics; the score map (score_layers) gives the map score where it
        exists, the heatmap's own score otherwise."""
        topk, norm = self.config.score.score_topk, self.config.map.map_norm
        heat, score = self.raw_maps(t, s, self.heat_index)
        if norm:
            heat = calibration.standardize(heat, self.map_mean, self.map_std)
            score = reference.image_score(heat, topk)
        if self.score_index is None:
            return heat, score, None
        score_map, score = self.raw_maps(t, s, self.score_index)
        if norm:
            score_map = calibration.standardize(score_map, self.score_map_mean, self.score_map_std)
            score = reference.image_score(score_map, topk)
        return heat, score, score_map

    def map_and_global(self, x: torch.Tensor):
        """(heatmaps at input_hw, the map's scores, the global branch's raw scores or None) of normalised images.
        Tiles: cut, scored tile by tile, stitched (tiling.py); the global branch sees the whole image once."""
        if self.grid is None:
            t, s, g = self.all_features(x)
            heat, score, _ = self.heatmaps(t, s)
        else:
            tiles = tiling.cut(x, self.grid)
            step = max(self.TILE_CHUNK, len(x))  # a traced graph takes them in one: its batch is not fixed
            chunks = [tiles] if torch.jit.is_tracing() else [tiles[i:i + step] for i in range(0, len(tiles), step)]
            maps = [self.heatmaps(*self.features(c)) for c in chunks]
            heat = tiling.stitch(torch.cat([m[0] for m in maps]), self.grid, self.tile_weights)
            score_map = heat if self.score_index is None else \
                tiling.stitch(torch.cat([m[2] for m in maps]), self.grid, self.tile_weights)
            score = reference.image_score(score_map, self.config.score.score_topk)
            g = self.whole_image_features(x) if self.has_global else None
        return heat, score, (None if g is None else self.global_distance(g))

    def peak(self, heat: torch.Tensor) -> torch.Tensor:
        """(B, 2) int64 (row, column) of each heatmap's maximum."""
        width = heat.shape[-1] if not torch.jit.is_tracing() else self.input_hw[1]
        index = heat.flatten(1).argmax(dim=1)
        row = index.div(width, rounding_mode="trunc")
        return torch.stack([row, index - row * width], dim=1)

    def forward(self, images: torch.Tensor) -> ModelOutput:
        """uint8 (B, 3, H, W) images at input_hw (or float images in [0, 1]) -> ModelOutput."""
        heat, map_score, glob = self.map_and_global(self.normalize(images))
        if glob is None:
            score, map_z, global_z = map_score, map_score, torch.full_like(map_score, math.nan)
        else:
            map_z, global_z = global_score.standardized(map_score, glob, self.score_stats)
            score = global_score.fuse_z(map_z, global_z, self.config.score.global_weight)
        return ModelOutput(heat, score, map_z, global_z, self.peak(heat))

    def forget_compiled(self) -> None:
        """Drop the torch.compile'd networks (recompiled on next use): after the weights or the precision change."""
        self._compiled = None

    def train(self, mode: bool = True) -> "MSFDModel":
        super().train(mode)
        self.teacher.eval()  # the teachers are frozen: their BatchNorm statistics never change
        if self.global_teacher is not None:
            self.global_teacher.eval()
        return self
