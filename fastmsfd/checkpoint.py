"""The .fastmsfd checkpoint: one safetensors file (tensors + JSON metadata), never pickle.

Loading executes no code. A SHA-256 of the tensor bytes catches truncation and bit flips; a format version
catches files from an incompatible release. Writes are atomic (temp file in the same folder, then rename).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from ._version import __version__
from .errors import CheckpointError
from .global_score import DEFAULT_WEIGHT

FORMAT = "fastmsfd"
# 2: a detector that uses settings added after version 1 (which version-1 readers ignore, scoring differently
# without an error); files that use none of them are still written as version 1, so older readers keep them
# 3: score layers apart from the heatmap's (score_layers), which a version-2 reader would not build
FORMAT_VERSION = 3


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on failure delete it.

    A crash at any point leaves either the old file or the complete new one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict[str, Any],
                    format_version: int = FORMAT_VERSION) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format": FORMAT, "format_version": str(format_version), "fastmsfd_version": __version__,
            "config": json.dumps(config), "sha256": _digest(tensors)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_checkpoint(path: str | os.PathLike, with_version: bool = False):
    """(tensors, config), and the format version with_version, from a .fastmsfd file; CheckpointError naming the
    file for anything wrong."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for malformed headers and short files
        raise CheckpointError(f"{path}: not a readable fastmsfd checkpoint (truncated or corrupt: {exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fastmsfd checkpoint (no fastmsfd format tag)")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise CheckpointError(f"{path}: unreadable format version {meta.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by fastmsfd {meta.get('fastmsfd_version', '?')} in format "
                              f"version {version}; this fastmsfd {__version__} reads up to version "
                              f"{FORMAT_VERSION}: upgrade fastmsfd")
    if meta.get("sha256") != _digest(tensors):
        raise CheckpointError(f"{path}: checksum mismatch, the file is corrupt (bit flip or partial copy)")
    try:
        config = json.loads(meta["config"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: configuration block missing or corrupt ({exc})") from None
    return (tensors, config, version) if with_version else (tensors, config)


# ---- a Detector in a checkpoint -------------------------------------------------------------------------
# settings every file has carried since format version 1; later settings fall back to their old behaviour
REQUIRED_SETTINGS = ("backbone", "layers", "image_size", "precision", "alpha", "beta", "sigma_factor", "aggregate",
                     "score_topk", "blur_sigma")
BUFFERS = ("layer_weights", "mean", "std")
MAP_NORM_BUFFERS = ("map_mean", "map_std")
SCORE_NORM_BUFFERS = ("score_map_mean", "score_map_std")  # the score map's border statistics (score_layers)
GLOBAL_BUFFERS = {"gaussian": ("global_mean", "global_precision", "score_stats"),
                  "nearest": ("global_memory", "score_stats")}  # by global_density
MEMORY = "global_memory"  # its number of rows is fit's to choose
# settings added after format version 1, each with what a file without it means (what version 1 computed)
LATER_SETTINGS = {"upsampling": "gaussian", "map_norm": None, "score_layers": None, "global_layer": None,
                  "global_backbone": None,
                  "global_weight": DEFAULT_WEIGHT, "global_image_size": None, "global_density": "gaussian",
                  "resize": "squash", "tile": None, "overlap": 0.25}
# the ones that change what a detector computes; the others only refine global_layer and tile
MISREAD_BY_VERSION_1 = ("upsampling", "map_norm", "global_layer", "resize", "tile")


def format_version_of(config: dict[str, Any]) -> int:
    """1 when a version-1 reader would compute what this detector computes (a square image size and none of the
    later settings in use), 3 with score layers of their own, else 2: an older fastmsfd then says "upgrade"
    instead of silently scoring the map alone, without tiles or squashed, or refusing the student."""
    if config.get("score_layers"):
        return 3
    plain = isinstance(config.get("image_size"), int) and all(
        config.get(k, LATER_SETTINGS[k]) == LATER_SETTINGS[k] for k in MISREAD_BY_VERSION_1)
    return 1 if plain else 2


def migrate(config: dict[str, Any], version: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings, info) of a file's flat configuration, written in format `version` (1 to FORMAT_VERSION): a
    setting the file predates takes what version 1 computed (LATER_SETTINGS; version-2 files carry every setting
    but score_layers, which came with version 3, and files of any version written since carry them all); every
    other key is what fit measured."""
    from .config import FLAT_KEYS

    if not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(f"no migration from format version {version}")
    settings = {k: v for k, v in config.items() if k in FLAT_KEYS}
    settings = {**{k: v for k, v in LATER_SETTINGS.items() if k not in settings}, **settings}
    info = {k: v for k, v in config.items() if k not in FLAT_KEYS and k not in ("fitted", "fastmsfd_version")}
    return settings, info


def read_settings(path: str | os.PathLike):
    """A checkpoint's settings (config.DetectorConfig, migrated from its format version), without building a
    detector: what a reader that only needs the geometry (the Ray path) takes."""
    from .config import DetectorConfig

    _, config, version = load_checkpoint(path, with_version=True)
    try:
        return DetectorConfig.from_dict(migrate(config, version)[0])
    except ValueError as exc:
        raise CheckpointError(f"{path}: configuration not usable by this fastmsfd ({exc})") from None


def read_info(path: str | os.PathLike) -> dict:
    """What fit and calibrate measured (n_train, calibration with the drift reference, ...), without building a
    detector."""
    _, config, version = load_checkpoint(path, with_version=True)
    return migrate(config, version)[1]


def _buffers(config) -> tuple[str, ...]:
    """The model's buffers a checkpoint carries for these settings."""
    norm = MAP_NORM_BUFFERS + (SCORE_NORM_BUFFERS if config.score.score_layers else ())
    return BUFFERS + (norm if config.map.map_norm else ()) + \
        (GLOBAL_BUFFERS[config.score.global_density] if config.score.global_layer else ())


def save_detector(det, path: str | os.PathLike) -> None:
    """Networks, fitted statistics and configuration of a Detector in one file."""
    model = det.model
    tensors = {f"{name}.{k}": v for name, net in _networks(model) for k, v in net.state_dict().items()}
    tensors.update({name: getattr(model, name) for name in _buffers(det.settings)},
                   threshold=model.threshold.reshape(1))
    config = dict(det.config, fitted=det.fitted, fastmsfd_version=__version__)
    save_checkpoint(path, tensors, config, format_version_of(config))


def _networks(model) -> list[tuple[str, Any]]:
    return [("teacher", model.teacher), ("student", model.student)] + \
        ([("global_teacher", model.global_teacher)] if model.global_teacher is not None else [])


def load_detector(cls, path: str | os.PathLike, runtime):
    """A Detector of class cls from a file (see Detector.load); runtime: config.RuntimeSettings."""
    import warnings

    from .config import DetectorConfig

    tensors, config, version = load_checkpoint(path, with_version=True)
    missing = [k for k in REQUIRED_SETTINGS if k not in config]
    if missing:
        raise CheckpointError(f"{path}: configuration lacks {missing}")
    settings, info = migrate(config, version)
    try:
        cfg = DetectorConfig.from_dict(settings)
        with warnings.catch_warnings():  # random init is immediately overwritten by the file's weights
            warnings.simplefilter("ignore")
            det = cls(cfg.network.backbone, cfg.network.layers, cfg.geometry.image_size, geometry=cfg.geometry,
                      heatmap=cfg.map, score=cfg.score, runtime=runtime, precision=cfg.network.precision,
                      weights="random")
    except ValueError as exc:
        raise CheckpointError(f"{path}: configuration not usable by this fastmsfd ({exc})") from None
    model = det.model
    for name, module in _networks(model):
        state = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            backbone = (config["global_backbone"], config["global_layer"]) if name == "global_teacher" else \
                (config["backbone"], config["layers"])
            raise CheckpointError(f"{path}: {name} weights do not match backbone "
                                  f"{backbone[0]} {backbone[1]} ({str(exc)[:200]})") from None
    for name in _buffers(det.settings):
        want = getattr(model, name).shape
        got = tensors[name].shape if name in tensors else None
        if name == MEMORY and got is not None and len(got) == 2 and got[0] >= 1 and got[1] == want[1]:
            setattr(model, name, tensors[name].float().clone())
            continue
        if got != want:
            raise CheckpointError(f"{path}: {name} missing or of the wrong shape")
        getattr(model, name).copy_(tensors[name])
    model.threshold.fill_(float(tensors["threshold"][0]) if "threshold" in tensors else float("nan"))
    det.info.update(info)
    model.config = model.config.replace(random_teacher=bool(config.get("random_teacher", False)))
    det.requested = model.config
    det.fitted = bool(config.get("fitted", True))
    return det
