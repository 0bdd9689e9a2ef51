"""The detector's settings as frozen dataclasses, validated once when made. Checkpoints store them flat
(to_dict / from_dict: the keys files have always had), so files written before this module load unchanged.

    network   backbone, layers, image_size, resize, tile, overlap, precision (what the networks are, what they
              see and how they compute)
    map       alpha, beta, sigma_factor, aggregate, blur_sigma, upsampling, map_norm (heatmap from features)
    score     score_topk, global_layer, global_backbone, global_image_size, global_density, global_weight (image
              score: the heatmap's, fused with the global branch's)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .geometry import RESIZE_POLICIES
from .global_score import DEFAULT_DENSITY, DEFAULT_WEIGHT, DENSITIES
from .ops.reference import AGGREGATIONS, DEFAULT_SIGMA_FACTOR, UPSAMPLINGS
from .runtimes import PRECISIONS

MAP_NORMS = ("border", None)


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


def _size(name: str, size):
    """An int >= 32 or (height, width) of ints >= 32; a square (h, h) becomes the int h (the form files have
    always had)."""
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    sides = size if isinstance(size, (list, tuple)) else (size,)
    if not (0 < len(sides) <= 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 32
                                         for v in sides)):
        raise ValueError(f"{name} must be an int >= 32 or (height, width) of ints >= 32, got {size!r}")
    return tuple(size) if isinstance(size, (list, tuple)) else size


@dataclass(frozen=True)
class NetworkConfig:
    backbone: str = "efficientnet_lite0"
    layers: tuple[str, ...] = ()
    image_size: int | tuple[int, int] = 256  # a square side, or (height, width): every image is resized to it
    precision: str = "float32"       # "auto": chosen per machine (runtimes.choose)
    random_teacher: bool = False
    resize: str = "squash"           # how an image reaches image_size (geometry.py): "squash" or "keep_aspect"
    tile: int | tuple[int, int] | None = None  # the networks' input when they run on tiles of image_size
    overlap: float = 0.25            # the least overlap of neighbouring tiles, a fraction of a tile

    def __post_init__(self):
        object.__setattr__(self, "image_size", _size("image_size", self.image_size))
        if self.tile is not None:
            object.__setattr__(self, "tile", _size("tile", self.tile))
        one_of("precision", self.precision, PRECISIONS)
        one_of("resize", self.resize, RESIZE_POLICIES)
        if not (isinstance(self.overlap, (int, float)) and 0 <= self.overlap <= 0.75):
            raise ValueError(f"overlap is a fraction of a tile in [0, 0.75], got {self.overlap!r}")
        object.__setattr__(self, "layers", tuple(self.layers))


@dataclass(frozen=True)
class MapConfig:
    alpha: float = 1.0
    beta: float = 1.0
    sigma_factor: float = DEFAULT_SIGMA_FACTOR
    aggregate: str = "sum"
    blur_sigma: float | None = None
    upsampling: str = "gaussian"
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
class ScoreConfig:
    score_topk: float | None = 0.01  # the mean of the top 1% of the heatmap; None: its maximum
    global_layer: str | None = None  # the global branch's teacher layer (global_score.py); None: map score only
    global_backbone: str | None = None  # the global branch's own teacher; None: the map's teacher
    # what the branch sees: the whole image at about this side squared (the input's aspect), or (height, width);
    # None: at the networks' input (the tile's size with tiles)
    global_image_size: int | tuple[int, int] | None = None
    # the branch's density of normal pooled features (global_score.py); files written before the setting existed
    # mean checkpoint.LATER_SETTINGS' "gaussian"
    global_density: str = DEFAULT_DENSITY
    global_weight: float = DEFAULT_WEIGHT  # the global score's share of the fused image score (docs/quality.md)

    def __post_init__(self):
        if self.score_topk is not None and not (isinstance(self.score_topk, (int, float))
                                                and 0 < self.score_topk <= 1):
            raise ValueError(f"score_topk is a fraction of the heatmap in (0, 1] or None, got {self.score_topk!r}")
        if not (isinstance(self.global_weight, (int, float)) and 0 <= self.global_weight <= 1):
            raise ValueError(f"global_weight must be in [0, 1], got {self.global_weight!r}")
        one_of("global_density", self.global_density, DENSITIES)
        size = self.global_image_size
        if size is not None:  # an int stays a side (the input's aspect), a square (h, h) stays exact
            sides = size if isinstance(size, (list, tuple)) else (size,)
            if not (len(sides) in (1, 2) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 32
                                                 for v in sides)):
                raise ValueError(f"global_image_size must be None, an int >= 32 or (height, width) of ints >= 32, "
                                 f"got {size!r}")
            object.__setattr__(self, "global_image_size", tuple(size) if isinstance(size, (list, tuple)) else size)


@dataclass(frozen=True)
class DetectorConfig:
    network: NetworkConfig = field(default_factory=NetworkConfig)
    map: MapConfig = field(default_factory=MapConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)

    def to_dict(self) -> dict[str, Any]:
        """Flat, JSON-ready: the keys a checkpoint's configuration has always had."""
        out: dict[str, Any] = {}
        for part in (self.network, self.map, self.score):
            out.update(dataclasses.asdict(part))
        out["layers"] = list(self.network.layers)
        for key in ("image_size", "tile", "global_image_size"):
            if isinstance(out[key], tuple):
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, flat: dict[str, Any]) -> "DetectorConfig":
        """From flat keys (a checkpoint's configuration, or keyword arguments); unknown keys are ignored, missing
        ones take their defaults."""
        parts = {}
        for name, kind in (("network", NetworkConfig), ("map", MapConfig), ("score", ScoreConfig)):
            names = {f.name for f in dataclasses.fields(kind)}
            parts[name] = kind(**{k: v for k, v in flat.items() if k in names})
        return cls(**parts)

    def replace(self, **changes) -> "DetectorConfig":
        """A copy with some flat keys changed (validated again), e.g. replace(precision="bfloat16")."""
        unknown = set(changes) - set(self.to_dict())
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}")
        return DetectorConfig.from_dict({**self.to_dict(), **changes})
