"""Every setting of a detector and its only default, as frozen dataclasses validated when made.

    NetworkSettings   backbone, layers, precision (what the networks are and how they compute)
    GeometrySettings  image_size, resize, tile, overlap (what the networks see)
    MapSettings       alpha, beta, sigma_factor, aggregate, blur_sigma, upsampling, map_norm (heatmap from features)
    ScoreSettings     score_topk, global_layer, global_backbone, global_image_size, global_density, global_weight
                      (the image score: the heatmap's, fused with the global branch's)
    RuntimeSettings   runtime, ops_backend, compile (where inference runs; not part of a fitted detector)

A DetectorConfig holds the first four. Some defaults are "auto" requests; resolve() turns a config and the
training images' sizes into a fully resolved one, which is what a model is built from, what fit prints and what a
checkpoint stores. Checkpoints store the settings flat (to_dict / from_dict: the keys files have always had).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from . import geometry, global_score
from .backbones import default_layers, layer_order
from .geometry import RESIZE_POLICIES
from .global_score import DEFAULT_DENSITY, DEFAULT_WEIGHT, DENSITIES
from .ops import BACKENDS
from .ops.reference import AGGREGATIONS, DEFAULT_SIGMA_FACTOR, UPSAMPLINGS
from .runtimes import PRECISIONS, RUNTIMES

MAP_NORMS = ("border", None)
AUTO = "auto"


def one_of(name: str, value, choices) -> None:
    """Refuse a value outside its choices, naming the setting and the choices."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def _finite(name: str, value, minimum: float = 0.0, strict: bool = False) -> float:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (value > minimum if strict else
                                                                        value >= minimum)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return float(value)


def _sides(size) -> bool:
    sides = size if isinstance(size, (list, tuple)) else (size,)
    return 0 < len(sides) <= 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 32 for v in sides)


def _size(name: str, size):
    """An int >= 32 or (height, width) of ints >= 32; a square (h, h) becomes the int h (the form files have
    always had)."""
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not _sides(size):
        raise ValueError(f"{name} must be an int >= 32 or (height, width) of ints >= 32, got {size!r}")
    return tuple(size) if isinstance(size, (list, tuple)) else size


def _set(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class NetworkSettings:
    backbone: str = "efficientnet_lite0"
    layers: tuple[str, ...] | None = None  # the heatmap's layers; None: the backbone's (backbones.default_layers)
    precision: str = "float32"       # "auto": chosen per machine (runtimes.choose)
    random_teacher: bool = False

    def __post_init__(self):
        one_of("precision", self.precision, PRECISIONS)
        if self.layers is not None:
            _set(self, "layers", tuple(self.layers))


@dataclass(frozen=True)
class GeometrySettings:
    """What the networks see (docs/geometry.md)."""
    # every image is resized to it: a square side, (height, width), or "auto" (the training images' median aspect
    # at about 256x256 pixels, chosen at fit)
    image_size: int | tuple[int, int] | str = AUTO
    resize: str = "squash"           # "squash" stretches, "keep_aspect" letterboxes with repeated edge pixels
    tile: int | tuple[int, int] | None = None  # the networks' input when they run on tiles of image_size
    overlap: float = 0.25            # the least overlap of neighbouring tiles, a fraction of a tile

    def __post_init__(self):
        if self.image_size != AUTO:
            _set(self, "image_size", _size("image_size", self.image_size))
        if self.tile is not None:
            _set(self, "tile", _size("tile", self.tile))
        one_of("resize", self.resize, RESIZE_POLICIES)
        if not (isinstance(self.overlap, (int, float)) and 0 <= self.overlap <= 0.75):
            raise ValueError(f"overlap is a fraction of a tile in [0, 0.75], got {self.overlap!r}")


@dataclass(frozen=True)
class MapSettings:
    """The heatmap from teacher and student features (docs/design.md has the math)."""
    alpha: float = 1.0               # weight of the squared L2 term of the combined distance
    beta: float = 1.0                # weight of the cosine term
    sigma_factor: float = DEFAULT_SIGMA_FACTOR  # Gaussian width per layer, in cell spacings
    aggregate: str = "sum"
    blur_sigma: float | None = None
    upsampling: str = "gaussian"     # "bilinear": the STPM-style baseline (ablations)
    map_norm: str | None = "border"  # "border": standardise by normal heatmaps' border statistics; None: raw

    def __post_init__(self):
        _finite("alpha", self.alpha)
        _finite("beta", self.beta)
        _finite("sigma_factor", self.sigma_factor, strict=True)
        if self.blur_sigma is not None:
            _finite("blur_sigma", self.blur_sigma)
        one_of("aggregate", self.aggregate, AGGREGATIONS)
        one_of("upsampling", self.upsampling, UPSAMPLINGS)
        one_of("map_norm", self.map_norm, MAP_NORMS)


@dataclass(frozen=True)
class ScoreSettings:
    """The image score: the heatmap's, fused with the global branch's (global_score.py, docs/quality.md)."""
    score_topk: float | None = 0.01  # the mean of the top 1% of the heatmap; None: its maximum
    # the layers whose map gives the map score, when they differ from the heatmap's (network.layers): fine
    # layers localise, deep layers judge; None: the heatmap's own score
    score_layers: tuple[str, ...] | None = None
    # the global branch's teacher layer(s); "auto": the branch teacher's default; None: the map's score alone
    global_layer: str | None = AUTO
    # the branch's own teacher; "auto": global_score.DEFAULT_BACKBONES; None: the map's teacher
    global_backbone: str | None = AUTO
    # what the branch sees: the whole image at about this side squared (the input's aspect), or (height, width);
    # None: at the networks' input (the tile's size with tiles); "auto": global_score.DEFAULT_IMAGE_SIDES
    global_image_size: int | tuple[int, int] | str | None = AUTO
    global_density: str = DEFAULT_DENSITY  # "nearest" training image, or "gaussian"
    # the global score's share of the fused score; "auto": chosen at fit with synthetic defects
    global_weight: float | str = DEFAULT_WEIGHT

    def __post_init__(self):
        if self.score_topk is not None and not (isinstance(self.score_topk, (int, float))
                                                and 0 < self.score_topk <= 1):
            raise ValueError(f"score_topk is a fraction of the heatmap in (0, 1] or None, got {self.score_topk!r}")
        if self.global_weight != AUTO and not (isinstance(self.global_weight, (int, float))
                                               and 0 <= self.global_weight <= 1):
            raise ValueError(f"global_weight must be in [0, 1] or 'auto', got {self.global_weight!r}")
        one_of("global_density", self.global_density, DENSITIES)
        if self.score_layers is not None:
            _set(self, "score_layers", tuple(self.score_layers))
        if self.global_layer is not None and not isinstance(self.global_layer, str):  # a list: one string
            _set(self, "global_layer", ",".join(self.global_layer))
        size = self.global_image_size
        if size is not None and size != AUTO:  # an int stays a side (the input's aspect), a square (h, h) exact
            if not _sides(size):
                raise ValueError(f"global_image_size must be None, 'auto', an int >= 32 or (height, width) of "
                                 f"ints >= 32, got {size!r}")
            _set(self, "global_image_size", tuple(size) if isinstance(size, (list, tuple)) else size)


@dataclass(frozen=True)
class RuntimeSettings:
    """Where and how inference runs: never stored in a checkpoint (Detector.load takes them again)."""
    runtime: str = "auto"            # "torch", "onnxruntime", "openvino"; "auto": the fastest installed here
    ops_backend: str = "auto"        # the fused op's backend on the torch runtime (fastmsfd.ops)
    compile: bool | str = False      # torch.compile the networks (torch runtime): True or a torch.compile mode

    def __post_init__(self):
        one_of("runtime", self.runtime, RUNTIMES)
        one_of("ops_backend", self.ops_backend, ("auto",) + BACKENDS)


PARTS = (("network", NetworkSettings), ("geometry", GeometrySettings), ("map", MapSettings),
         ("score", ScoreSettings))
FLAT_KEYS = {f.name: part for part, kind in PARTS for f in dataclasses.fields(kind)}
RUNTIME_KEYS = tuple(f.name for f in dataclasses.fields(RuntimeSettings))


@dataclass(frozen=True)
class DetectorConfig:
    network: NetworkSettings = field(default_factory=NetworkSettings)
    geometry: GeometrySettings = field(default_factory=GeometrySettings)
    map: MapSettings = field(default_factory=MapSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)

    def to_dict(self) -> dict[str, Any]:
        """Flat, JSON-ready: the keys a checkpoint's configuration has always had."""
        out: dict[str, Any] = {}
        for name, _ in PARTS:
            out.update(dataclasses.asdict(getattr(self, name)))
        out["layers"] = None if self.network.layers is None else list(self.network.layers)
        out["score_layers"] = None if self.score.score_layers is None else list(self.score.score_layers)
        for key in ("image_size", "tile", "global_image_size"):
            if isinstance(out[key], tuple):
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, flat: dict[str, Any]) -> "DetectorConfig":
        """From flat keys; missing ones take their defaults, an unknown one is refused by name."""
        unknown = sorted(set(flat) - set(FLAT_KEYS))
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; the settings are {sorted(FLAT_KEYS)}")
        return cls(**{name: kind(**{k: v for k, v in flat.items() if FLAT_KEYS[k] == name}) for name, kind in PARTS})

    def replace(self, **changes) -> "DetectorConfig":
        """A copy with some flat keys changed (validated again), e.g. replace(precision="bfloat16")."""
        return DetectorConfig.from_dict({**self.to_dict(), **changes})

    @property
    def resolved(self) -> bool:
        """True when no "auto" request is left (what a model is built from)."""
        return AUTO not in (self.geometry.image_size, self.score.global_layer, self.score.global_backbone,
                            self.score.global_image_size, self.score.global_weight) and self.network.layers is not None


def check_layers(backbone: str, layers: Sequence[str], what: str = "layers") -> None:
    """A layer set the backbone has: not empty, each name known (the error names the valid layers)."""
    order = layer_order(backbone)
    if not layers:
        raise ValueError(f"{what} is empty; {backbone} has the layers {', '.join(order)}")
    for name in layers:
        if name not in order:
            raise ValueError(f"{backbone} has no layer {name!r} ({what}; its layers: {', '.join(order)})")


def resolve(config: DetectorConfig, image_sizes: Sequence[tuple[int, int]] | None = None,
            stride: int | None = None) -> DetectorConfig:
    """The config with every "auto" resolved: the backbone's default layers, the global branch's teacher, layers
    and view, image_size from the training images' sizes (geometry.auto_image_size, at the map layers' stride;
    without sizes the square default), and global_weight "auto" as the default weight until fit chooses it."""
    net, geo, score = config.network, config.geometry, config.score
    layers = default_layers(net.backbone) if net.layers is None else net.layers
    check_layers(net.backbone, layers)
    score_layers = score.score_layers
    if score_layers is not None:
        check_layers(net.backbone, score_layers, "score_layers")
        if set(score_layers) == set(layers):  # the heatmap's own score
            score_layers = None
    g_backbone, g_layer = global_score.resolve(net.backbone, score.global_backbone, score.global_layer)
    size = geo.image_size
    if size == AUTO:
        size = geometry.auto_image_size(image_sizes, stride) if image_sizes else geometry.AUTO_SIDE
    return config.replace(layers=list(layers), score_layers=None if score_layers is None else list(score_layers),
                          global_backbone=g_backbone, global_layer=g_layer,
                          global_image_size=global_score.resolve_image_size(g_backbone, score.global_image_size),
                          image_size=list(size) if isinstance(size, tuple) else size,
                          global_weight=DEFAULT_WEIGHT if score.global_weight == AUTO else score.global_weight)


# ---- the constructor's keywords ---------------------------------------------------------------------------
# Detector(...) keywords of the settings objects: the research knobs warn (a deprecation) at the top level;
# geometry and runtime keywords are shortcuts.
RESEARCH_KEYS = tuple(f.name for f in dataclasses.fields(MapSettings)) + \
    tuple(f.name for f in dataclasses.fields(ScoreSettings))
SHORTCUT_KEYS = ("resize", "tile", "overlap", "ops_backend", "compile")


def from_keywords(backbone: str, layers, image_size, precision: str, geometry_: GeometrySettings | None,
                  heatmap: MapSettings | None, score: ScoreSettings | None, runtime, keywords: dict[str, Any]
                  ) -> tuple[DetectorConfig, RuntimeSettings, list[str]]:
    """(config, runtime settings, the research keywords given at the top level) from Detector(...)'s arguments:
    the one translation of the keywords earlier releases took. Unknown keywords are refused by name."""
    unknown = sorted(set(keywords) - set(RESEARCH_KEYS) - set(SHORTCUT_KEYS))
    if unknown:
        raise TypeError(f"Detector() got unexpected keyword(s) {unknown}")
    flat = {**dataclasses.asdict(geometry_ or GeometrySettings()), **dataclasses.asdict(heatmap or MapSettings()),
            **dataclasses.asdict(score or ScoreSettings())}
    flat.update({k: v for k, v in keywords.items() if k in FLAT_KEYS})
    if image_size is not None:
        flat["image_size"] = image_size
    runtime = runtime if isinstance(runtime, RuntimeSettings) else RuntimeSettings(runtime=runtime)
    runtime = dataclasses.replace(runtime, **{k: v for k, v in keywords.items() if k in RUNTIME_KEYS})
    flat.update(backbone=backbone, layers=None if layers is None else tuple(layers), precision=precision)
    return DetectorConfig.from_dict(flat), runtime, [k for k in keywords if k in RESEARCH_KEYS]
