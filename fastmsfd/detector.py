"""Detector: the public MSFD model (fit / predict / calibrate / save / load)."""
from __future__ import annotations

import math
import os
import threading
import warnings
from pathlib import Path
from types import MappingProxyType
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import calibration, geometry, global_score, ops, tiling
from .backbones import build_student, build_teacher, default_layers, layer_order, normalization
from .checkpoint import load_detector, save_detector
from .config import DetectorConfig
from .data import as_hw, iter_batches
from .errors import WeightsNotFoundError
from .geometry import content_box, pad_edges
from .ops import reference
from .prediction import Prediction
from .runtimes import RUNTIMES
from .train import TrainHistory

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
              "auto": None}  # auto: chosen per machine (runtimes.choose)


def _teacher_layers(backbone: str, layers: Sequence[str], global_layers: Sequence[str] = ()):
    """(the teacher's layers from shallow to deep, the map layers' indices in them, the global layers' indices or
    None)."""
    order = layer_order(backbone)
    for name in tuple(layers) + tuple(global_layers):
        if name not in order:
            raise ValueError(f"{backbone} has no layer {name!r} (layers: {', '.join(order)})")
    wanted = sorted(set(layers) | set(global_layers), key=order.index)
    # the networks return their layers from shallow to deep, whatever order they were named in
    return (tuple(wanted), [wanted.index(name) for name in sorted(layers, key=order.index)],
            [wanted.index(name) for name in sorted(global_layers, key=order.index)] or None)


class Detector(nn.Module):
    """Multi-Scale Feature Distillation anomaly detector.

    The image score is the mean of the top 1% of the heatmap (score_topk=0.01; None for the plain maximum):
    it beat the maximum on the demo and on MTD (docs/defaults.md).

    map_norm="border" (default): fit() also measures the mean and std of normal heatmaps as a function of the
    distance to the image border, and every heatmap is standardised by them before scoring, so the noisier
    border pixels no longer win the top-k (docs/defaults.md, "Border calibration"). None: the raw heatmap.

    Geometry (docs/geometry.md): every image is resized to image_size, an int or (H, W), or "auto" (the
    default: fit takes the training images' median aspect at about 256x256 pixels; square parts get 256x256,
    KolektorSDD's 500x1260 416x160, chosen on development parts, docs/quality.md). resize="squash" stretches,
    "keep_aspect" letterboxes with repeated edge pixels. tile (an int or (H, W)) runs the networks on tiles of
    the resized image overlapping by at least `overlap` of a tile, each standardised and then stitched into one
    heatmap (fastmsfd/tiling.py). The global branch sees the whole image at global_image_size: an int is about
    that side squared in the input's aspect (never more pixels than the input), (H, W) exactly, None the
    networks' input (the tile's size with tiles), "auto" (the default) 192 for the Lite2 branch, else None.
    Sizes are rounded to the layers' stride.

    Image score (docs/quality.md): the heatmap's score fused with a global branch, a density of pooled teacher
    layers (global_layer; None: the map's score alone), weighted by global_weight after both are standardised
    on held-out normal images. global_density="nearest" (the default) scores the distance to the nearest
    training image's pooled features, "gaussian" the Mahalanobis distance to a Gaussian of them.
    global_backbone="auto" gives the branch a teacher of its own (EfficientNet-Lite2's stage5 and stage6 for
    Lite maps: better image scores, one more network per image); None pools the map teacher's layer (stage7),
    faster.

    A frozen ImageNet teacher and a same-architecture student; where their features disagree, the input is
    anomalous. Fit on defect-free images only.
    """

    def __init__(self, backbone: str = "efficientnet_lite0", layers: Sequence[str] | None = None,
                 image_size: int | tuple[int, int] | str = "auto", device: str | torch.device = "cpu",
                 weights: Any = None,
                 runtime: str = "auto", precision: str = "float32", alpha: float = 1.0, beta: float = 1.0,
                 sigma_factor: float = reference.DEFAULT_SIGMA_FACTOR, aggregate: str = "sum",
                 score_topk: float | None = 0.01, blur_sigma: float | None = None, download: bool = False,
                 ops_backend: str = "auto", compile: bool | str = False, upsampling: str = "gaussian",
                 map_norm: str | None = "border", global_layer: str | None = "auto",
                 global_weight: float | str = global_score.DEFAULT_WEIGHT, global_backbone: str | None = "auto",
                 global_image_size: int | tuple[int, int] | str | None = "auto",
                 global_density: str = global_score.DEFAULT_DENSITY, resize: str = "squash",
                 tile: int | tuple[int, int] | None = None, overlap: float = 0.25):
        super().__init__()
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if ops_backend not in ("auto",) + ops.BACKENDS:
            raise ValueError(f"ops_backend must be 'auto' or one of {ops.BACKENDS}, got {ops_backend!r}")
        global_backbone, global_layer = global_score.resolve(backbone, global_backbone, global_layer)
        global_image_size = global_score.resolve_image_size(global_backbone, global_image_size)
        # "auto": fit() chooses it with synthetic defects on held-out normal images (fit.choose_global_weight)
        self.global_weight_request = global_weight
        global_weight = global_score.DEFAULT_WEIGHT if global_weight == "auto" else global_weight
        # "auto" (the default): fit() derives it from the training images' sizes (geometry.auto_image_size);
        # until then 256x256, which is also what square training images get
        self.image_size_request = image_size
        image_size = geometry.AUTO_SIDE if image_size == "auto" else image_size
        # every setting validated once, before any network is built
        self.settings = DetectorConfig.from_dict(dict(global_layer=global_layer, global_weight=global_weight,
            global_backbone=global_backbone, global_image_size=global_image_size, global_density=global_density,
            backbone=backbone, layers=tuple(layers) if layers else default_layers(backbone), image_size=image_size,
            precision=precision, random_teacher=isinstance(weights, str) and weights == "random", alpha=alpha,
            beta=beta, sigma_factor=sigma_factor, aggregate=aggregate, blur_sigma=blur_sigma, upsampling=upsampling,
            map_norm=map_norm, score_topk=score_topk, resize=resize, tile=tile, overlap=overlap))
        self.layers = self.settings.network.layers
        global_layers = global_score.layer_names(global_layer)
        teacher_layers, self._map_index, self._global_index = _teacher_layers(
            backbone, self.layers, () if global_backbone else global_layers)
        self.teacher = build_teacher(backbone, teacher_layers, weights=weights, download=download)
        # the global branch's own teacher (global_backbone), or None: the map's teacher serves it
        self.global_teacher = None
        if global_backbone:
            g_layers, _, self._global_index = _teacher_layers(global_backbone, (), global_layers)
            try:
                self.global_teacher = build_teacher(global_backbone, g_layers, download=download,
                                                    weights="random" if self.settings.network.random_teacher else None)
            except WeightsNotFoundError as exc:
                raise WeightsNotFoundError(f"{exc} (this is the global branch's teacher; global_backbone=None uses "
                                           "the map's teacher instead)") from None
        self.student = build_student(backbone, self.layers)
        self.info: dict[str, Any] = {}  # what fit and calibrate measured (n_train, epochs_run, calibration, ...)
        mean, std = normalization(backbone)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        # a global teacher trained on another input normalisation gets x * scale + shift (identity: skipped)
        g_mean, g_std = normalization(global_backbone) if global_backbone else (mean, std)
        self._global_renormalize = (g_mean, g_std) != (mean, std)
        self.register_buffer("global_in_scale", self.std / torch.tensor(g_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("global_in_shift", (self.mean - torch.tensor(g_mean).view(1, 3, 1, 1)) /
                             torch.tensor(g_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("layer_weights", torch.ones(len(self.layers)))
        self.register_buffer("threshold", torch.tensor(float("nan")))
        # per-pixel statistics of normal heatmaps (map_norm="border"); the identity until fit() measures them
        self._set_views()  # first: a tile larger than image_size is clamped here
        self.register_buffer("map_mean", torch.zeros(self.network_hw))
        self.register_buffer("map_std", torch.ones(self.network_hw))
        if global_layer:  # the global branch's density and the fusion's standardisation (identity until fit)
            c = sum((self.global_teacher or self.teacher).channels[i] for i in self._global_index)
            self.register_buffer("global_mean", torch.zeros(c))
            self.register_buffer("global_precision", torch.eye(c))
            # global_density="nearest": the training images' pooled features, as many rows as fit keeps; until
            # then the origin, which scores as the Gaussian's identity does
            self.register_buffer("global_memory", torch.zeros(1, c))
            self.register_buffer("score_stats", torch.tensor([0.0, 1.0, 0.0, 1.0]))
        self.runtime_request = runtime
        # torch.compile of the inference networks (torch runtime, eval mode): True, or a torch.compile mode such as
        # "reduce-overhead" (CUDA graphs for fixed shapes on a GPU) or "max-autotune".
        self.compile_mode = compile
        self._compiled = None
        self._runner = None                  # the exported graph in ONNX Runtime / OpenVINO, built on first use
        self._lock = threading.RLock()       # guards lazy runner creation and train/eval switches in predict
        self._runtime = None                 # runtimes.Choice: runtime, precision and why, resolved on first use
        self.ops_backend = ops_backend
        self._fitting = False
        self.history: TrainHistory | None = None
        self.fitted = False
        self.student.eval()
        # channels_last: a CPU training step runs faster in it (docs/defaults.md has the measurement)
        for net in self.networks():
            net.to(memory_format=torch.channels_last)
        self.to(device)

    # ---- properties ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def image_size(self) -> int | tuple[int, int]:
        """The network's input size as configured: a square side, or (height, width)."""
        return self.settings.network.image_size

    @property
    def input_hw(self) -> tuple[int, int]:
        """The network's input size as (height, width); every image is resized to it."""
        return as_hw(self.settings.network.image_size)

    @property
    def network_hw(self) -> tuple[int, int]:
        """The networks' input as (height, width): the tile when they run on tiles, else input_hw."""
        tile = self.settings.network.tile
        return self.input_hw if tile is None else as_hw(tile)

    @property
    def grid(self) -> tiling.TileGrid | None:
        """Where the tiles lie in input_hw (None: the networks see the whole image)."""
        return self._grid

    @property
    def global_hw(self) -> tuple[int, int]:
        """What the global branch sees: the whole image at this (height, width)."""
        return self._global_hw

    def _global_view_size(self) -> tuple[int, int]:
        size = self.settings.score.global_image_size
        if self._global_index is None:  # no branch: nothing to view (no view matrices to build or export)
            return self.input_hw
        if size is None:
            return self.network_hw
        stride = max((self.global_teacher or self.teacher).backbone.strides[i] for i in self._global_index)
        if isinstance(size, int):  # about size x size pixels at the input's aspect, never more than the input
            h, w = self.input_hw
            return self.input_hw if size * size >= h * w else geometry.auto_image_size([self.input_hw], stride,
                                                                                        size * size)
        return geometry.round_to_stride(size, stride, "global_image_size")

    def _set_views(self) -> None:
        """The tiles of input_hw and the global branch's whole-image view (both follow image_size)."""
        net = self.settings.network
        tile = None if net.tile is None else tuple(min(a, b) for a, b in zip(as_hw(net.tile), self.input_hw))
        if tile is not None and tile != as_hw(net.tile):
            warnings.warn(f"tile {as_hw(net.tile)} is larger than image_size {self.input_hw}: using tiles of "
                          f"{tile}", stacklevel=3)
            self.settings = self.settings.replace(tile=list(tile))
        self._grid = None if tile is None or tile == self.input_hw else \
            tiling.TileGrid(self.input_hw, tile, net.overlap)
        weights = self._grid.weights() if self._grid else torch.ones(1, 1, 1)
        self.register_buffer("tile_weights", weights.to(self.mean.device), persistent=False)
        self._global_hw = self._global_view_size()
        if isinstance(self.settings.score.global_image_size, tuple) and self._global_index is not None:
            self.settings = self.settings.replace(global_image_size=list(self._global_hw))  # rounded: warn once
        self._view_resized = self._global_hw != self.input_hw  # else the branch sees the input itself
        rows, cols = (tiling.view_matrices(self.input_hw, self._global_hw) if self._view_resized
                      else (torch.ones(1, 1),) * 2)
        self.register_buffer("view_rows", rows.to(self.mean.device), persistent=False)
        self.register_buffer("view_cols", cols.to(self.mean.device), persistent=False)

    def set_geometry(self, image_size: int | tuple[int, int], tile: int | tuple[int, int] | None = None) -> None:
        """Change image_size and tile before fit (fit does this for image_size="auto" and to round sizes to the
        stride); the map statistics reset."""
        self.settings = self.settings.replace(image_size=list(as_hw(image_size)),
                                              tile=None if tile is None else list(as_hw(tile)))
        self.map_mean = torch.zeros(self.network_hw, device=self.device)
        self.map_std = torch.ones(self.network_hw, device=self.device)
        self._set_views()
        self.reset_runtime()

    @property
    def stride(self) -> int:
        """The deepest map layer's stride: sizes that are a multiple of it leave no cell half on padding."""
        return max(self.student.strides)

    @property
    def config(self) -> MappingProxyType:
        """Every setting and what fit/calibrate measured, flat and read-only (the checkpoint's configuration).
        Settings change through Detector(...), Detector.load(...) or reset_runtime(precision=...)."""
        return MappingProxyType({**self.settings.to_dict(), **self.info})

    def extra_repr(self) -> str:
        thr = float(self.threshold)
        state = "fitted" if self.fitted else "not fitted"
        net, maps, score = self.settings.network, self.settings.map, self.settings.score
        glob = f", global={score.global_layer} ({score.global_density}, weight {score.global_weight:g})" \
            if score.global_layer else ""
        glob += f" at {self.global_hw}" if score.global_layer and score.global_image_size is not None else ""
        geometry = "" if net.resize == "squash" else f", resize={net.resize}"
        geometry += "" if self._grid is None else f", tile={self.network_hw} x{len(self._grid)}"
        return (f"backbone={net.backbone}, layers={list(self.layers)}{glob}, image_size={self.image_size}"
                f"{geometry}, "
                f"aggregate={maps.aggregate}, map_norm={maps.map_norm}, "
                f"precision={net.precision}, {state}, "
                f"threshold={'unset' if math.isnan(thr) else f'{thr:.4g}'}")

    def __repr__(self) -> str:  # a one-line summary, not the whole network
        return f"Detector({self.extra_repr()})"

    # ---- runtimes --------------------------------------------------------------------------------------
    @property
    def runtime_choice(self):
        """runtimes.Choice: the runtime and precision predict() uses on this machine, and why."""
        if self._runtime is None:
            from .runtimes import choose

            self._runtime = choose(self.runtime_request, self.device, self.settings.network.precision)
        return self._runtime

    @property
    def runtime(self) -> str:
        """The runtime predict() uses: "torch", "onnxruntime" or "openvino" (resolved from the request)."""
        return self.runtime_choice.runtime

    @property
    def precision(self) -> str:
        """The precision inference runs in ("auto" resolved for this machine); fit() trains "auto" in float32."""
        return self.runtime_choice.precision

    def reset_runtime(self, runtime: str | None = None, precision: str | None = None) -> None:
        """Drop the exported graph (it is rebuilt from the current weights on next use); optionally switch
        runtime and/or inference precision. fit() and load() do this themselves; call it after changing weights
        by hand."""
        if runtime is not None:
            if runtime not in RUNTIMES:
                raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
            self.runtime_request = runtime
        if precision is not None:
            self.settings = self.settings.replace(precision=precision)
        self._runner, self._runtime, self._compiled = None, None, None

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        if "_runner" in self.__dict__:  # moved or cast: the exported graph and the runtime choice are stale
            self.reset_runtime()
        return out

    def _infer(self, images_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, 3, S, S) -> heatmaps, scores with the chosen runtime."""
        if self.runtime == "torch":
            return self.heatmaps_and_scores(self._prepare(images_u8))
        runner = self._runner
        if runner is None:
            with self._lock:
                if self._runner is None:
                    from .export import onnx_bytes
                    from .runtimes import build_runner

                    self._runner = build_runner(self.runtime, onnx_bytes(self), self.precision)
                runner = self._runner
        return runner(images_u8)

    def export_onnx(self, path: str | os.PathLike, dynamic_batch: bool = True) -> Path:
        """One ONNX graph from uint8 images (B, 3, S, S) to (heatmap, score), normalisation inside, preprocessing
        and threshold in its metadata; written atomically. See fastmsfd/export.py."""
        from .export import export_onnx

        return export_onnx(self, path, dynamic_batch)

    # ---- the network ---------------------------------------------------------------------------------
    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] -> the backbone's input normalisation, channels_last like the networks."""
        return ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def _prepare(self, images_u8: torch.Tensor) -> torch.Tensor:
        return self._normalize(images_u8.to(self.device, non_blocking=True).float().div_(255.0))

    def _autocast(self):
        precision = self.settings.network.precision
        if precision == "auto":
            precision = "float32" if self._fitting else self.precision
        dtype = PRECISIONS[precision]
        enabled = dtype != torch.float32
        return torch.autocast(self.device.type, dtype=dtype, enabled=enabled)

    def features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher and student features of normalised images (B, 3, S, S) at the map layers, under the chosen
        precision."""
        return self._all_features(x, pooled_global=False)[:2]

    def _all_features(self, x: torch.Tensor, pooled_global: bool = True):
        """(teacher map features, student features, pooled global-layer features or None)."""
        if self.compile_mode and not self.training and not torch.is_grad_enabled():
            if self._compiled is None:
                mode = None if self.compile_mode is True else self.compile_mode
                self._compiled = torch.compile(self._features, mode=mode, dynamic=False)
            return self._compiled(x, pooled_global=pooled_global)
        return self._features(x, pooled_global=pooled_global)

    def _features(self, x: torch.Tensor, student: nn.Module | None = None, pooled_global: bool = True):
        """student: the network to run in place of self.student (its DDP wrapper while training);
        pooled_global=False: no global features (None), so a global branch's own teacher does not run."""
        with self._autocast():
            t_all, s = self.teacher(x), (student or self.student)(x)
            g = None
            if self._global_index is not None and pooled_global:  # the map teacher's features serve an unresized view
                g = self._pooled_global(self.whole_image(x), None if self._view_resized else t_all)
        t = [t_all[i] for i in self._map_index]
        # under autocast the teacher's float32 standardisation can leave it in float32 while the student is in
        # bfloat16/float16: give both the student's dtype (the distance kernels accumulate in float32 anyway)
        return [a.to(b.dtype) for a, b in zip(t, s)], s, g

    def global_features(self, x: torch.Tensor) -> torch.Tensor:
        """The global layer's pooled teacher features (B, C) of normalised network inputs: the teacher alone."""
        with self._autocast():
            return self._pooled_global(x)

    def _pooled_global(self, x: torch.Tensor, teacher_features: Sequence[torch.Tensor] | None = None):
        """Pooled global-layer features of normalised inputs: from the global branch's own teacher, or from the
        map teacher's features (computed here unless given)."""
        if self.global_teacher is None:
            t_all = self.teacher(x) if teacher_features is None else teacher_features
        else:
            t_all = self.global_teacher(self.global_teacher_input(x))
        return global_score.pooled_layers(t_all, self._global_index)

    def global_teacher_input(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised inputs in the global teacher's own input normalisation."""
        return x * self.global_in_scale + self.global_in_shift if self._global_renormalize else x

    def networks(self) -> list[nn.Module]:
        """The teacher, the student and the global branch's own teacher if it has one."""
        return [self.teacher, self.student] + ([self.global_teacher] if self.global_teacher is not None else [])

    def _sigmas(self, feats: Sequence[torch.Tensor]) -> list[float]:
        return reference.default_sigmas([tuple(f.shape[-2:]) for f in feats], self.network_hw,
                                        self.settings.map.sigma_factor)

    def heatmaps_and_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmaps (B, H, W) and image scores (B,) of normalised images at input_hw, on the torch runtime."""
        heat, score, glob = self.map_and_global(x)
        if glob is not None:
            score = global_score.fuse(score, glob, self.score_stats, self.settings.score.global_weight)
        return heat, score

    TILE_CHUNK = 32  # network inputs per pass when an image runs as tiles: memory stays bounded

    def map_and_global(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(heatmaps at input_hw, the map's image scores, the global branch's scores or None) of normalised
        images, before fusion. Tiles: cut, scored tile by tile, stitched (tiling.py); the global branch sees
        the whole image once, at global_hw (whole_image_features)."""
        if self._grid is None:
            t, s, g = self._all_features(x)
            heat, score = self.maps_from_features(t, s)
        else:
            tiles = tiling.cut(x, self._grid)
            step = max(self.TILE_CHUNK, len(x))
            heat = tiling.stitch(torch.cat([self.maps_from_features(*self.features(tiles[i:i + step]))[0]
                                            for i in range(0, len(tiles), step)]), self._grid, self.tile_weights)
            score = reference.image_score(heat, self.settings.score.score_topk)
            g = None if self._global_index is None else self.whole_image_features(x)
        return heat, score, (None if g is None else self.global_scores(g))

    def whole_image_features(self, x: torch.Tensor) -> torch.Tensor:
        """The global branch's pooled features of normalised images at input_hw: of the whole image at
        global_hw."""
        return self.global_features(self.whole_image(x))

    def whole_image(self, x: torch.Tensor) -> torch.Tensor:
        """What the global branch sees of normalised images at input_hw: the whole image at global_hw
        (global_image_size; None: the tile's size with tiles, else the image itself)."""
        if not self._view_resized:
            return x
        return tiling.whole_view(x, self.view_rows, self.view_cols).contiguous(memory_format=torch.channels_last)

    def global_scores(self, global_features: torch.Tensor) -> torch.Tensor:
        """The global branch's score of pooled global-layer features (B, C): the distance to the nearest training
        image's, or the Mahalanobis distance (global_density)."""
        return global_score.distance(global_features, self.settings.score.global_density, self.global_mean,
                                     self.global_precision, self.global_memory)

    def maps_from_features(self, t: Sequence[torch.Tensor], s: Sequence[torch.Tensor],
                           layer_weights: Sequence[float] | None = None, standardize: bool = True,
                           global_features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(heatmaps, scores) of teacher/student features with this detector's settings, at the networks' input
        size (a tile's heatmap when the detector runs on tiles: map_and_global stitches them). Pass one layer's
        features, layer_weights=[1.0] and standardize=False to see that layer alone, up-sampled and scored as the
        detector does (the border statistics belong to the full heatmap). With global_features (pooled, from
        _all_features) and a global branch, the score is the fused one."""
        weights = self.layer_weights.tolist() if layer_weights is None else list(layer_weights)
        maps, topk = self.settings.map, self.settings.score.score_topk
        heat, score = ops.anomaly_map(t, s, self.network_hw, layer_weights=weights, alpha=maps.alpha, beta=maps.beta,
                                      sigmas=self._sigmas(t), aggregate=maps.aggregate, topk=topk,
                                      blur_sigma=maps.blur_sigma, backend=self.ops_backend,
                                      upsampling=maps.upsampling)
        if standardize and maps.map_norm:
            heat = calibration.standardize(heat, self.map_mean, self.map_std)
            score = reference.image_score(heat, topk)
        if standardize and global_features is not None and self._global_index is not None:
            score = global_score.fuse(score, self.global_scores(global_features), self.score_stats,
                                      self.settings.score.global_weight)
        return heat, score

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) float images in [0, 1] -> heatmaps (B, S, S) and scores (B,). Resizes by the resize
        policy when H, W != S."""
        hw = self.input_hw
        if tuple(images.shape[-2:]) != hw:
            box = content_box(tuple(images.shape[-2:]), hw, self.settings.network.resize)
            images = F.interpolate(images, size=box[2:], mode="bilinear", antialias=True, align_corners=False)
            images = pad_edges(images, box, hw)
        return self.heatmaps_and_scores(self._normalize(images))

    # ---- fitting -------------------------------------------------------------------------------------
    def fit(self, source, epochs: int | None = None, batch_size: int = 8, lr: float = 1e-3, val_fraction: float = 0.1,
            seed: int = 0, progress: bool = True, calibrate_quantile: float = 0.99, **train_kwargs) -> "Detector":
        """Train the student on normal images: a folder, an MVTec category folder (uses train/good), a list of
        paths, a tensor/array batch or a DataLoader. A held-out part (val_fraction) of them drives early
        stopping, the per-layer weights and the default threshold. epochs=None: about 3,000 training images seen
        (train.auto_epochs: 40 epochs for 75 images, 12 for 250, 4 for 700), since longer training measurably
        blurs what the student gets wrong (docs/defaults.md). Further keywords are train.TrainConfig's: augment,
        crop_scale, optimizer, schedule, weight_decay, grad_clip, patience, max_rollbacks, state_path and resume
        (docs/training.md); the checkpoint keeps them as config["training"]. Returns self."""
        from .fit import fit_detector

        fit_detector(self, source, epochs, batch_size, lr, val_fraction, seed, progress, calibrate_quantile,
                     **train_kwargs)
        return self

    # ---- inference -----------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_iter(self, images, batch_size: int = 16):
        """Like predict, one Prediction per batch: memory stays flat however many images there are."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self.training:
            # Inference needs eval mode. The switch is one-way (like model.eval()), never undone behind another
            # thread's back, so concurrent predict calls always see the same frozen networks.
            self.eval()
        thr = float(self.threshold)
        policy = self.settings.network.resize
        for u8, sizes, names in iter_batches(images, self.input_hw, batch_size, policy):
            self._warn_small(sizes, names)
            h, s = self._infer(u8)
            h, s = h.float().cpu(), s.float().cpu()
            labels = masks = None
            if not math.isnan(thr):
                labels, masks = s > thr, h > thr
            yield Prediction(h, s, labels, masks, sizes, names,
                             [content_box(hw, self.input_hw, policy) for hw in sizes])

    def _warn_small(self, sizes, names) -> None:
        """Images smaller than one tile are up-sampled to image_size like any other (documented): say so."""
        if self._grid is None:
            return
        th, tw = self.network_hw
        small = [(n or f"images[{i}]", hw) for i, (hw, n) in enumerate(zip(sizes, names))
                 if hw[0] < th or hw[1] < tw]
        if small:
            name, (h, w) = small[0]
            warnings.warn(f"{len(small)} image(s) smaller than one tile ({th}x{tw}), e.g. {name} ({h}x{w}): "
                          f"up-sampled to image_size {self.input_hw[0]}x{self.input_hw[1]} and run as tiles",
                          stacklevel=3)

    @torch.no_grad()
    def predict(self, images, batch_size: int = 16, progress: bool = False) -> Prediction:
        """Heatmaps and scores for paths, a folder, PIL images, uint8 arrays or float tensors of any size.
        Puts the detector in eval mode. Safe to call from several threads at once (same results as sequential
        calls); not while fit() runs."""
        from tqdm.auto import tqdm

        parts = list(tqdm(self.predict_iter(images, batch_size), desc="predicting", disable=not progress))
        return Prediction.concat(parts)

    def train(self, mode: bool = True) -> "Detector":
        super().train(mode)
        self.teacher.eval()  # the teachers are frozen: their BatchNorm statistics never change
        if self.global_teacher is not None:
            self.global_teacher.eval()
        return self

    @torch.no_grad()
    def calibrate(self, normal_images, quantile: float = 0.99, batch_size: int = 16, *,
                  leave_out_far: bool = True, names: Sequence[str] | None = None) -> float:
        """Set the threshold from defect-free images only: the `quantile` of their scores. About
        (1 - quantile) of normal parts will then be flagged; labels are score > threshold.

        leave_out_far: images scoring far above the others (beyond the upper quartile plus 3 interquartile
        ranges; 20 images or more) are left out of the quantile, with a warning naming them (`names`, else the
        files given, else their positions): a foreign object or a mislabelled defect among the normal images
        would otherwise set the threshold. Their positions are kept in info["calibration"]["left_out"]."""
        calibration.check_quantile(quantile)  # before any inference
        if isinstance(normal_images, torch.Tensor) and normal_images.dtype == torch.uint8 \
                and normal_images.dim() == 4 and tuple(normal_images.shape[-2:]) == self.input_hw:
            scores = torch.cat([self._infer(normal_images[i:i + batch_size])[1].float().cpu()
                                for i in range(0, len(normal_images), batch_size)])
            found = [None] * len(scores)
        else:
            pred = self.predict(normal_images, batch_size=batch_size)
            scores, found = pred.scores, pred.names
        if names is not None and len(names) != len(scores):
            raise ValueError(f"calibrate: {len(names)} names for {len(scores)} images")
        far = calibration.far_out(scores) if leave_out_far else torch.zeros(len(scores), dtype=torch.bool)
        thr = calibration.threshold(scores[~far], quantile)
        left_out = far.nonzero().flatten().tolist()
        if left_out:
            named = [(names or found)[i] or f"normal_images[{i}]" for i in left_out]
            # stacklevel 3: past no_grad's wrapper, at calibrate's caller
            warnings.warn(f"calibrate: {len(left_out)} of {len(scores)} normal images score far above the others "
                          f"(beyond the upper quartile plus {calibration.FAR_OUT_IQRS:g} interquartile ranges) and "
                          f"were left out of the threshold; look at them, they may be defective or unusual: "
                          f"{', '.join(named)}. calibrate(..., leave_out_far=False) keeps them.", stacklevel=3)
        self.threshold.fill_(thr)
        self.info["calibration"] = {"quantile": quantile, "n_images": len(scores), "left_out": left_out}
        return thr

    # ---- persistence ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write a self-contained .fastmsfd file (teacher, student, config, preprocessing, weights, threshold)."""
        save_detector(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, runtime: str = "auto", device: str | torch.device = "cpu",
             ops_backend: str = "auto", precision: str | None = None) -> "Detector":
        """A saved detector; precision (default: the file's) sets the inference precision, e.g. float16 for a
        detector fitted in float32. Loading runs no code from the file (safetensors, checked)."""
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
        det = load_detector(cls, path, runtime=runtime, ops_backend=ops_backend)
        det.reset_runtime(precision=precision)
        return det.to(device)
