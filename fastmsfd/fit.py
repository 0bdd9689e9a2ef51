"""The fit recipe behind Detector.fit: split off held-out normal images, distil the student, then measure the
layer weights, the border statistics and the threshold on normal images only."""
from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterator

import torch

from . import calibration, geometry, global_score, tiling
from .backbones import build_student
from .config import resolve
from .data import as_hw
from .datasets import normal_image_sizes, normal_images_u8, source_paths
from .distributed import data_parallel, init_from_env, rank_device
from .errors import DataError
from .ops import reference
from .train import TrainConfig, auto_epochs, distill, recipe

MIN_NORMAL_IMAGES = 10  # fewer: the border statistics and the threshold rest on a handful of heatmaps
MIN_HELD_OUT_FOR_SCALES = 3  # held-out images that measure the fused scores' mean and std; fewer: all images
MAP_NORM_MAX_IMAGES = 256  # normal images whose heatmaps give the border statistics (an even subsample beyond)


def held_out_order(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, int]:
    """A seeded order of n images and how many of its first are held out (0 with fewer than 5: none held out,
    every image is both)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order, (min(max(1, round(n * val_fraction)), n - 2) if n >= 5 else 0)


def split_held_out(images: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(train, held_out, n_held_out): a seeded share for early stopping and calibration; with fewer than 5
    images every image is both (n_held_out 0)."""
    n = len(images)
    if n < 2:
        raise DataError(f"fit needs at least 2 normal images, got {n}")
    order, n_val = held_out_order(n, val_fraction, seed)
    return images[order[n_val:]], (images[order[:n_val]] if n_val else images), n_val


def fit_detector(det, source, epochs: int | None, batch_size: int, lr: float, val_fraction: float, seed: int,
                 progress: bool, calibrate_quantile: float, **train_kwargs) -> None:
    """Detector.fit's work (its docstring says what the arguments mean)."""
    if det.settings.network.precision == "float16":
        raise ValueError(
            "fit: precision='float16' would need loss scaling, which fastmsfd's training does not do (small "
            "float16 gradients underflow to zero). Fit with precision='float32' or 'bfloat16' (bfloat16 needs no "
            "scaling), save, then Detector.load(path, precision='float16') to infer in float16.")
    # unknown, bad or fit-owned training settings fail before any image is read
    owned = sorted({"alpha", "beta", "ops_backend", "rank", "world_size"} & set(train_kwargs))
    if owned:
        raise TypeError(f"fit() sets {owned} itself (alpha, beta and ops_backend are Detector(...) settings; "
                        "rank and world_size come from torchrun)")
    TrainConfig(**train_kwargs)
    clock = Laps()
    if isinstance(source, Iterator):  # a generator: image_size="auto" reads the images before loading them
        source = list(source)
    paths = source_paths(source)
    if paths is not None:  # a folder is walked once: the geometry, the loading and the held-out names read this
        source = paths
    choose_geometry(det, source, progress)
    model = det.model
    images = normal_images_u8(source, det.input_hw, progress, det.settings.geometry.resize)
    if 2 <= len(images) < MIN_NORMAL_IMAGES:
        warnings.warn(f"fit: {len(images)} normal images; the localisation statistics (layer weights, border "
                      f"statistics) and the threshold are unreliable with fewer than {MIN_NORMAL_IMAGES}. "
                      f"{MIN_NORMAL_IMAGES} or more would do, 30 or more (3 held out at val_fraction 0.1) better.",
                      stacklevel=3)
    train, val, n_val = split_held_out(images, val_fraction, seed)
    clock.lap("load")
    # tiles: the student learns from random tiles of the training images; the held-out images are cut into the
    # grid's tiles for early stopping and the layer weights, and scored whole for the threshold
    crops = torch.Generator().manual_seed(seed)
    val_net = val if model.grid is None else held_out_tiles(val, model.grid, seed)
    # A fresh student initialised from the seed: fit is reproducible across processes and a second fit starts
    # from scratch instead of continuing the first.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = build_student(det.settings.network.backbone, model.map_layers)
    device = rank_device(det.device)  # torchrun on GPUs: this rank's own GPU
    if device != det.device:
        det.to(device)
    model.student = student.to(device, memory_format=torch.channels_last)
    rank, world = init_from_env(device)  # torchrun: one shard of every global batch per process
    maps = det.settings.map
    cfg = TrainConfig(epochs=auto_epochs(len(train)) if epochs is None else epochs, batch_size=batch_size, lr=lr,
                      alpha=maps.alpha, beta=maps.beta, seed=seed, progress=progress and rank == 0, rank=rank,
                      world_size=world, ops_backend=model.ops_backend, **train_kwargs)
    model.layer_weights.fill_(1.0)
    model.reset_border_statistics()
    net_hw = model.network_hw
    model.teacher.fit_statistics(model.normalize(tiling.random_crops(train[i:i + 32], net_hw, crops))
                                 for i in range(0, len(train), 32))
    if model.global_teacher is not None:  # its own feature statistics, of what it sees: whole images
        model.global_teacher.fit_statistics(
            model.global_teacher_input(model.whole_image(model.normalize(train[i:i + 32])))
            for i in range(0, len(train), 32))
    clock.lap("teacher_statistics")
    det.set_compute_precision(training=True)
    try:
        with data_parallel(model.student, device, world) as ddp_student:  # torchrun: DDP + global-batch BatchNorm
            features = model.features if world == 1 else \
                (lambda x, teacher=True: model.features(x, ddp_student, teacher))
            cached = teacher_cache(model, train, val_net) if model.grid is None and not cfg.augment and \
                not cfg.crop_scale else None
            clock.lap("teacher_cache")
            det.history = distill(model.teacher, model.student, features, train, val_net,
                                  lambda u8: model.normalize(tiling.random_crops(u8, net_hw, crops)), cfg, cached)
    finally:
        det.set_compute_precision()
    clock.lap("distill")
    det.eval()
    set_layer_weights(model, val_net)
    clock.lap("layer_weights")
    if maps.map_norm:
        set_border_statistics(model, train if model.grid is None else tiling.random_crops(train, net_hw, crops))
        clock.lap("border_statistics")
    if model.has_global:
        set_global_statistics(model, train, val, n_val)
        if det.requested.score.global_weight == "auto":
            det.info["global_weight_choice"] = choose_global_weight(model, val, seed)
        clock.lap("global_statistics")
    det.fitted = True
    det.reset_runtime()
    det.calibrate(val, quantile=calibrate_quantile, names=held_out_names(source, len(images), val_fraction, seed))
    clock.lap("calibration")
    det.info.update(n_train=len(train), n_val=n_val, epochs_run=len(det.history.val_loss),
                    fit_seconds=round(det.history.seconds, 2), training=recipe(cfg), fit_timing=clock.seconds)
    if progress and rank == 0:
        print(f"fastmsfd fit: settings {json.dumps(det.settings.to_dict())}")
        print(f"fastmsfd fit: seconds {json.dumps(clock.seconds)}")


CACHE_BYTES = 2 * 1024 ** 3  # the teacher's cached features stay under this; beyond, it runs every epoch


@torch.no_grad()
def teacher_cache(model, train_u8: torch.Tensor, val_u8: torch.Tensor, batch_size: int = 32):
    """The frozen teacher's map-layer features of the training and the held-out images, computed once for the
    whole distillation (it sees each image unchanged every epoch), or None beyond CACHE_BYTES."""
    per_image = sum(f[0].numel() * 4 for f in model.teacher_features(model.normalize(train_u8[:1])))
    if per_image * (len(train_u8) + len(val_u8)) > CACHE_BYTES:
        return None
    return tuple([torch.cat(layer) for layer in zip(*(model.teacher_features(model.normalize(u8[i:i + batch_size]))
                                                       for i in range(0, len(u8), batch_size)))]
                 for u8 in (train_u8, val_u8))


class Laps:
    """Where a fit's time goes: seconds per step, in order, and their total."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        total = self.seconds.pop("total", 0.0) + now - self._last
        self.seconds[step] = round(now - self._last, 2)
        self.seconds["total"] = round(total, 2)  # last
        self._last = now


def held_out_names(source, n: int, val_fraction: float, seed: int) -> list[str]:
    """What calibrate calls the held-out images (split_held_out's order) when it names far-out ones: their
    files, else their positions among the n images fit was given."""
    order, n_val = held_out_order(n, val_fraction, seed)
    positions = order[:n_val].tolist() if n_val else list(range(n))
    paths = source_paths(source)
    return [str(paths[i]) if paths is not None else f"fit image {i}" for i in positions]


MAX_HELD_OUT_TILES = 256  # early stopping and the layer weights need a sample of tiles, not every one


def held_out_tiles(images_u8: torch.Tensor, grid, seed: int) -> torch.Tensor:
    """The grid's tiles of the held-out images; beyond MAX_HELD_OUT_TILES a seeded sample of them (every epoch
    scores these for early stopping, so their number is paid once per epoch)."""
    tiles = tiling.cut(images_u8, grid)
    if len(tiles) <= MAX_HELD_OUT_TILES:
        return tiles
    keep = torch.randperm(len(tiles), generator=torch.Generator().manual_seed(seed))[:MAX_HELD_OUT_TILES]
    return tiles[keep.sort().values]


def choose_geometry(det, source, progress: bool) -> None:
    """image_size="auto": the training images' aspect at about geometry.AUTO_AREA pixels (said when progress is
    on, and kept in det.info["geometry"]); any size: each side rounded to the map layers' stride, with a
    warning naming the size used. The networks' input is the tile when there are tiles, so that is rounded."""
    model = det.model
    hw, tile = model.input_hw, det.settings.geometry.tile
    if det.requested.geometry.image_size == "auto":
        sizes = normal_image_sizes(source)
        hw = as_hw(resolve(det.requested, sizes, model.stride).geometry.image_size)
        det.info["geometry"] = {"image_size": list(hw), "how": "median aspect of the training images",
                                "n_images": len(sizes)}
        if progress:
            print(f"fastmsfd fit: image_size auto -> {hw[0]}x{hw[1]} (height x width; median aspect of "
                  f"{len(sizes)} training images)")
    elif tile is None:
        hw = geometry.round_to_stride(hw, model.stride)
    else:
        tile = geometry.round_to_stride(model.network_hw, model.stride, "tile")
    if tuple(hw) != model.input_hw or (tile is not None and as_hw(tile) != model.network_hw):
        model.set_geometry(hw, tile)
        det.reset_runtime()
    if det.settings.score.global_image_size is not None and model.has_global and progress:
        h, w = model.global_hw
        print(f"fastmsfd fit: the global branch sees the whole image at {h}x{w} (height x width)")


def _batched_features(model, images_u8: torch.Tensor, batch_size: int = 16):
    """Teacher and student features of uint8 network inputs (images, or tiles), one batch at a time."""
    for i in range(0, len(images_u8), batch_size):
        yield model.features(model.normalize(images_u8[i:i + batch_size]))


def _pooled_global(model, images_u8: torch.Tensor, batch_size: int = 16):
    """The global layer's pooled features of whole uint8 images, one batch at a time, as inference computes
    them (Detector.whole_image_features); the teacher alone runs."""
    for i in range(0, len(images_u8), batch_size):
        yield model.whole_image_features(model.normalize(images_u8[i:i + batch_size]))


@torch.no_grad()
def set_layer_weights(model, images_u8: torch.Tensor) -> None:
    """model.layer_weights from held-out normal images (calibration.layer_weights)."""
    per_layer: list[list[torch.Tensor]] = [[] for _ in model.layer_weights]
    for t, s in _batched_features(model, images_u8):
        for layer, (tl, sl) in enumerate(zip(t, s)):
            per_layer[layer].append(reference.combined_distance(tl, sl, model.config.map.alpha,
                                                                model.config.map.beta).flatten())
    model.layer_weights.copy_(calibration.layer_weights([torch.cat(d) for d in per_layer]))


@torch.no_grad()
def set_border_statistics(model, images_u8: torch.Tensor) -> None:
    """model.map_mean / map_std from the raw heatmaps of normal images, pooled by distance to the border (and
    score_map_mean / score_map_std from the score's map where it has layers of its own). fit()
    passes the training images, not the small held-out part: the ring statistics need many images (the demo's
    8 held-out crops were too noisy). The student fits its training images more closely, but a shift or scale
    shared by all pixels changes no ranking, and the threshold is calibrated afterwards on held-out images."""
    step = max(1, math.ceil(len(images_u8) / MAP_NORM_MAX_IMAGES))
    maps = {"map": model.heat_index, "score_map": model.score_index}
    raw: dict[str, list[torch.Tensor]] = {name: [] for name, index in maps.items() if index is not None}
    for t, s in _batched_features(model, images_u8[::step]):
        for name in raw:
            raw[name].append(model.raw_maps(t, s, maps[name])[0])
    for name, heat in raw.items():
        mean, std = calibration.border_statistics(torch.cat(heat))
        getattr(model, f"{name}_mean").copy_(mean)
        getattr(model, f"{name}_std").copy_(std)


def _scale_images(train: torch.Tensor, val: torch.Tensor, n_val: int) -> tuple[torch.Tensor, bool]:
    """(the normal images whose scores set the fusion's scales, whether the training images are among them,
    listed last): the held-out ones, or all of them (with a warning) when too few are held out to have a
    spread (one image's std would blow the fused scores up)."""
    if n_val == 0:  # every image is already both
        return val, True
    if n_val >= MIN_HELD_OUT_FOR_SCALES:
        return val, False
    warnings.warn(f"the global branch: {n_val} held-out normal image(s) cannot measure the spread of the scores it "
                  f"fuses; using all {n_val + len(train)} normal images (the training ones score a little low). "
                  "About 30 or more normal images (10% held out) would avoid this.", stacklevel=4)
    return torch.cat([val, train]), True


@torch.no_grad()
def set_global_statistics(model, train_u8: torch.Tensor, held_out_u8: torch.Tensor, n_held_out: int) -> None:
    """The global branch: its density from the training images' pooled features (their nearest-neighbour
    memory, or a Gaussian), then the mean and std of the map score and of the global score on held-out normal
    images (_scale_images), which put both on one scale before they are fused (global_score.fuse)."""
    pooled = torch.cat([g.float().cpu() for g in _pooled_global(model, train_u8)])
    nearest = model.config.score.global_density == "nearest"
    if nearest:
        model.global_memory = global_score.memory_bank(pooled).to(model.global_memory.device)
    else:
        mean, precision = global_score.fit_density(pooled)
        model.global_mean.copy_(mean)
        model.global_precision.copy_(precision)
    scale_u8, with_train = _scale_images(train_u8, held_out_u8, n_held_out)
    map_scores, global_scores = _map_and_global_scores(model, scale_u8)
    if nearest and with_train:
        # training images among them (listed last) are in the memory and would score 0: each scores against
        # the others instead, as a new normal image would
        global_scores[-len(train_u8):] = global_score.leave_one_out_distance(pooled)
    stats = global_score.standardize_stats(map_scores) + global_score.standardize_stats(global_scores)
    model.score_stats.copy_(torch.tensor(stats))


@torch.no_grad()
def _map_and_global_scores(model, images_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The map score and the global score of each image, before fusion (float32, CPU)."""
    map_scores, global_scores = [], []
    for i in range(0, len(images_u8), 16):
        _, m, g = model.map_and_global(model.normalize(images_u8[i:i + 16]))
        map_scores.append(m.float().cpu())
        global_scores.append(g.float().cpu())
    return torch.cat(map_scores), torch.cat(global_scores)


SYNTHETIC_KINDS = ("scratch", "crack", "stain", "hole", "missing")
WEIGHT_GRID = tuple(round(0.1 * i, 1) for i in range(11))


def synthetic_anomalies(images_u8: torch.Tensor, seed: int, per_image: int = 2, strength: float = 1.0
                        ) -> torch.Tensor:
    """Each image with per_image synthetic defects of the demo's kinds (one defect per copy), uint8; strength
    < 1 blends them in fainter."""
    import numpy as np

    from .demo_data import add_defect

    rng = np.random.default_rng(seed)
    out = []
    for i, img in enumerate(images_u8):
        hwc = img.permute(1, 2, 0).float().numpy() / 255.0
        for k in range(per_image):
            bad, _ = add_defect(hwc, SYNTHETIC_KINDS[(i * per_image + k) % len(SYNTHETIC_KINDS)], rng, strength)
            out.append(torch.from_numpy((bad * 255).round().astype(np.uint8)).permute(2, 0, 1))
    return torch.stack(out)


def _standardized_scores(model, images_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(z map score, z global score) of uint8 images, standardised as the model's forward does."""
    m, glob = _map_and_global_scores(model, images_u8)
    return global_score.standardized(m, glob, model.score_stats.cpu())


def choose_global_weight(model, held_out_u8: torch.Tensor, seed: int) -> dict:
    """global_weight="auto": the weight of WEIGHT_GRID that best separates held-out normal images from the same
    images with synthetic defects pasted on (normal images only, no labels); ties go to the weight nearest the
    default (global_score.DEFAULT_WEIGHT).
    Sets the model's global_weight; returns the choice and its table (fit keeps it in info["global_weight_choice"])."""
    from .metrics import auroc

    normal = _standardized_scores(model, held_out_u8)
    anomalous = _standardized_scores(model, synthetic_anomalies(held_out_u8, seed))
    labels = torch.cat([torch.zeros(len(normal[0])), torch.ones(len(anomalous[0]))]).numpy()
    z_map, z_glob = torch.cat([normal[0], anomalous[0]]), torch.cat([normal[1], anomalous[1]])
    table = {w: auroc(labels, global_score.fuse_z(z_map, z_glob, w).numpy()) for w in WEIGHT_GRID}
    best = max(WEIGHT_GRID, key=lambda w: (round(table[w], 4), -abs(w - global_score.DEFAULT_WEIGHT)))
    model.config = model.config.replace(global_weight=best)
    return {"weight": best, "how": "synthetic defects on held-out normal images", "n_normal": len(normal[0]),
            "n_synthetic": len(anomalous[0]), "synthetic_auroc": {str(w): round(a, 4) for w, a in table.items()}}
