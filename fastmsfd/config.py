"""The detector's settings as frozen dataclasses, validated once when made. Checkpoints store them flat
(to_dict / from_dict: the keys files have always had), so files written before this module load unchanged.

    network   backbone, layers, image_size, precision (what the networks are and how they compute)
    map       alpha, beta, sigma_factor, aggregate, blur_sigma, upsampling, map_norm (heatmap from features)
    score     score_topk (image score from the heatmap)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True)
class NetworkConfig:
    backbone: str = "efficientnet_lite0"
    layers: tuple[str, ...] = ()
    image_size: int = 256
    precision: str = "float32"       # "auto": chosen per machine (runtimes.choose)
    random_teacher: bool = False

    def __post_init__(self):
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 32:
            raise ValueError(f"image_size must be an int >= 32, got {self.image_size!r}")
        one_of("precision", self.precision, PRECISIONS)
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

    def __post_init__(self):
        if self.score_topk is not None and not (isinstance(self.score_topk, (int, float))
                                                and 0 < self.score_topk <= 1):
            raise ValueError(f"score_topk is a fraction of the heatmap in (0, 1] or None, got {self.score_topk!r}")


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
