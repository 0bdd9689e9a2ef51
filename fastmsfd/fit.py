"""The fit recipe behind Detector.fit: split off held-out normal images, distil the student, then measure the
layer weights, the border statistics and the threshold on normal images only."""
from __future__ import annotations

import math

import torch

from . import calibration
from .backbones import build_student
from .datasets import normal_images_u8
from .distributed import data_parallel, init_from_env, rank_device
from .errors import DataError
from .ops import reference
from .train import TrainConfig, auto_epochs, distill

MAP_NORM_MAX_IMAGES = 256  # normal images whose heatmaps give the border statistics (an even subsample beyond)


def split_held_out(images: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(train, held_out, n_held_out): a seeded share for early stopping and calibration; with fewer than 5
    images every image is both (n_held_out 0)."""
    n = len(images)
    if n < 2:
        raise DataError(f"fit needs at least 2 normal images, got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(max(1, round(n * val_fraction)), n - 2) if n >= 5 else 0
    return images[order[n_val:]], (images[order[:n_val]] if n_val else images), n_val


def fit_detector(det, source, epochs: int | None, batch_size: int, lr: float, val_fraction: float, seed: int,
                 progress: bool, calibrate_quantile: float, **train_kwargs) -> None:
    """Detector.fit's work (its docstring says what the arguments mean)."""
    if det.settings.network.precision == "float16":
        raise ValueError(
            "fit: precision='float16' would need loss scaling, which fastmsfd's training does not do (small "
            "float16 gradients underflow to zero). Fit with precision='float32' or 'bfloat16' (bfloat16 needs no "
            "scaling), save, then Detector.load(path, precision='float16') to infer in float16.")
    train, val, n_val = split_held_out(normal_images_u8(source, det.image_size, progress), val_fraction, seed)
    # A fresh student initialised from the seed: fit is reproducible across processes and a second fit starts
    # from scratch instead of continuing the first.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = build_student(det.settings.network.backbone, det.layers)
    device = rank_device(det.device)  # torchrun on GPUs: this rank's own GPU
    if device != det.device:
        det.to(device)
    det.student = student.to(device, memory_format=torch.channels_last)
    rank, world = init_from_env(device)  # torchrun: one shard of every global batch per process
    maps = det.settings.map
    cfg = TrainConfig(epochs=auto_epochs(len(train)) if epochs is None else epochs, batch_size=batch_size, lr=lr,
                      alpha=maps.alpha, beta=maps.beta, seed=seed, progress=progress and rank == 0, rank=rank,
                      world_size=world, ops_backend=det.ops_backend, **train_kwargs)
    det.layer_weights.fill_(1.0)
    det.map_mean.zero_()
    det.map_std.fill_(1.0)
    det.teacher.fit_statistics(det._prepare(train[i:i + 32]) for i in range(0, len(train), 32))
    det._fitting = True
    try:
        with data_parallel(det.student, device, world) as ddp_student:  # torchrun: DDP + global-batch BatchNorm
            features = det.features if world == 1 else (lambda x: det._features(x, ddp_student))
            det.history = distill(det.teacher, det.student, features, train, val, det._prepare, cfg)
    finally:
        det._fitting = False
    det.eval()
    set_layer_weights(det, val)
    if maps.map_norm:
        set_border_statistics(det, train)
    det.fitted = True
    det.reset_runtime()
    det.calibrate(val, quantile=calibrate_quantile)
    det.info.update(n_train=len(train), n_val=n_val, epochs_run=len(det.history.val_loss),
                    fit_seconds=round(det.history.seconds, 2))


def _batched_features(det, images_u8: torch.Tensor, batch_size: int = 16):
    """Teacher and student features of uint8 images at image_size, one batch at a time."""
    for i in range(0, len(images_u8), batch_size):
        yield det.features(det._prepare(images_u8[i:i + batch_size]))


@torch.no_grad()
def set_layer_weights(det, images_u8: torch.Tensor) -> None:
    """det.layer_weights from held-out normal images (calibration.layer_weights)."""
    per_layer: list[list[torch.Tensor]] = [[] for _ in det.layers]
    for t, s in _batched_features(det, images_u8):
        for layer, (tl, sl) in enumerate(zip(t, s)):
            per_layer[layer].append(reference.combined_distance(tl, sl, det.settings.map.alpha,
                                                                det.settings.map.beta).flatten())
    det.layer_weights.copy_(calibration.layer_weights([torch.cat(d) for d in per_layer]))


@torch.no_grad()
def set_border_statistics(det, images_u8: torch.Tensor) -> None:
    """det.map_mean / map_std from the raw heatmaps of normal images, pooled by distance to the border. fit()
    passes the training images, not the small held-out part: the ring statistics need many images (the demo's
    8 held-out crops were too noisy). The student fits its training images more closely, but a shift or scale
    shared by all pixels changes no ranking, and the threshold is calibrated afterwards on held-out images."""
    step = max(1, math.ceil(len(images_u8) / MAP_NORM_MAX_IMAGES))
    heat = torch.cat([det.maps_from_features(t, s, standardize=False)[0]
                      for t, s in _batched_features(det, images_u8[::step])])
    mean, std = calibration.border_statistics(heat)
    det.map_mean.copy_(mean)
    det.map_std.copy_(std)
