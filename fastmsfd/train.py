"""The distillation loop: the student learns to reproduce the frozen teacher's features on normal images.

Adam with a cosine schedule, gradient clipping, early stopping on held-out normal images (never test labels),
and a divergence guard that rolls back to the last good state and halves the learning rate.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from . import ops
from .config import one_of
from .distributed import shard
from .errors import CheckpointError, TrainingDivergedError

STATE_FORMAT = 1
# Settings that must match for a saved state to continue the same run.
_RUN_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "grad_clip", "patience", "alpha", "beta", "seed", "augment",
             "optimizer", "schedule")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")


# Default training length, in training images seen (epochs = budget / training images, 1..MAX_AUTO_EPOCHS).
# Longer training makes the student good at reproducing the teacher on defects too, so every shorter run beat
# the longest on the real parts; the measurements and commands are in docs/defaults.md.
TRAIN_IMAGES_BUDGET = 3000
MAX_AUTO_EPOCHS = 40


def auto_epochs(n_train: int) -> int:
    """Epochs for `n_train` training images when the caller does not say: about TRAIN_IMAGES_BUDGET images seen."""
    return int(min(MAX_AUTO_EPOCHS, max(1, round(TRAIN_IMAGES_BUDGET / max(1, n_train)))))


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-5
    grad_clip: float = 5.0
    patience: int = 8           # epochs without a better held-out loss before stopping
    alpha: float = 1.0
    beta: float = 1.0
    seed: int = 0
    augment: str | None = None  # None, "flip" (horizontal + vertical) or "dihedral" (flips and 90-degree turns)
    crop_scale: float | None = None  # random crops of at least this share of each side, resized back (None: off)
    optimizer: str = "adam"     # "adam" (default, docs/training.md compares), "adamw", "sgd" (momentum 0.9, STPM)
    ops_backend: str = "auto"   # the loss's backend (fastmsfd.ops), the detector's ops_backend
    schedule: str = "cosine"    # "cosine" over the planned steps, or "constant"
    progress: bool = True
    max_rollbacks: int = 3
    rank: int = 0                  # torchrun: this process's rank and the number of processes
    world_size: int = 1
    state_path: str | None = None  # resumable training state, rewritten (atomically) after every epoch
    resume: bool = False           # continue from state_path when it exists

    def __post_init__(self):
        if self.crop_scale is not None and not 0 < self.crop_scale <= 1:
            raise ValueError(f"crop_scale must be in (0, 1] (the smallest crop's share of each side), "
                             f"got {self.crop_scale}")


@dataclass
class TrainHistory:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    rollbacks: int = 0
    seconds: float = 0.0
    stopped_early: bool = False


AUGMENTATIONS = (None, "flip", "dihedral")


def augment_batch(x: torch.Tensor, mode: str | None, gen: torch.Generator) -> torch.Tensor:
    """Random flips (and 90-degree turns for "dihedral") of a uint8 batch, one draw per image. Only for parts
    whose normal appearance is symmetric that way (textures, round parts): elsewhere it teaches the student
    that a mirrored part is normal."""
    if mode is None:
        return x
    out = x.clone()
    draws = torch.randint(0, 8 if mode == "dihedral" else 4, (len(x),), generator=gen)
    for i, d in enumerate(draws.tolist()):
        img = out[i]
        if d & 1:
            img = img.flip(-1)
        if d & 2:
            img = img.flip(-2)
        if d & 4:
            img = img.transpose(-1, -2)
        out[i] = img.clone()
    return out


def random_resized_crops(x: torch.Tensor, min_side: float | None, gen: torch.Generator) -> torch.Tensor:
    """Each uint8 image of a batch (B, C, H, W): a random crop whose sides are the same random share in
    [min_side, 1] of the image's (its aspect kept), resized back to (H, W) (bilinear). The student then sees
    the parts a little shifted and enlarged instead of the same pixels every epoch."""
    if min_side is None:
        return x
    H, W = x.shape[-2:]
    shares = min_side + (1 - min_side) * torch.rand(len(x), generator=gen)
    spots = torch.rand(len(x), 2, generator=gen)
    out = torch.empty_like(x)
    for i, (share, (u, v)) in enumerate(zip(shares.tolist(), spots.tolist())):
        h, w = max(1, round(H * share)), max(1, round(W * share))
        top, left = round(u * (H - h)), round(v * (W - w))
        crop = x[i:i + 1, :, top:top + h, left:left + w].float()
        out[i] = F.interpolate(crop, size=(H, W), mode="bilinear", align_corners=False)[0].round().clamp(0, 255)
    return out


def _batches(n: int, batch_size: int, generator: torch.Generator | None):
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def _pair(features: Callable, x: torch.Tensor, cached: list[torch.Tensor] | None, rows: torch.Tensor):
    """(teacher, student) features of a normalised batch: the teacher's from the cache (its rows) when given."""
    if cached is None:
        return features(x)
    s = features(x, teacher=False)
    return [c[rows].to(b.dtype) for c, b in zip(cached, s)], s


@torch.no_grad()
def held_out_loss(student: nn.Module, features: Callable, images_u8: torch.Tensor, prepare: Callable,
                  cfg: TrainConfig, batch_size: int = 16, cached: list[torch.Tensor] | None = None) -> float:
    was_training = student.training
    student.eval()
    total, count = 0.0, 0
    for idx in _batches(len(images_u8), batch_size, None):
        loss = ops.distill_loss(*_pair(features, prepare(images_u8[idx]), cached, idx), cfg.alpha, cfg.beta,
                                backend=cfg.ops_backend)
        total += float(loss) * len(idx)
        count += len(idx)
    student.train(was_training)
    return total / max(count, 1)


def recipe(cfg: TrainConfig) -> dict:
    """The settings that make a training run what it is (a checkpoint keeps them as info["training"])."""
    run = {k: getattr(cfg, k) for k in _RUN_KEYS}
    if cfg.crop_scale is not None:  # only when set: states saved before the setting existed still resume
        run["crop_scale"] = cfg.crop_scale
    return run


def _fingerprint(cfg: TrainConfig, n_train: int, n_val: int) -> str:
    return json.dumps(dict(recipe(cfg), n_train=n_train, n_val=n_val), sort_keys=True)


def save_state(path: str | os.PathLike, state: dict) -> None:
    """Atomically write a training state (tensors and plain values only: loading it never runs code)."""
    from .checkpoint import atomic_path

    with atomic_path(path, suffix=".state.tmp") as tmp:
        torch.save(state, tmp)


def load_state(path: str | os.PathLike, fingerprint: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # no pickle code execution
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable fastmsfd training state ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a fastmsfd training state of format {STATE_FORMAT}")
    if state.get("run") != fingerprint:
        raise CheckpointError(f"{path}: written by a run with other settings or data ({state.get('run')}); "
                              f"this run is {fingerprint}. Delete it to start afresh")
    return state


def _optimizer(student: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = student.parameters()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def distill(teacher: nn.Module, student: nn.Module, features: Callable, train_u8: torch.Tensor,
            val_u8: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor], cfg: TrainConfig,
            cached: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None) -> TrainHistory:
    """Train `student` in place; on return it holds the state with the best held-out loss.

    features(x) -> (teacher feats, student feats) of a normalised batch, features(x, teacher=False) -> student
    feats; prepare(uint8 batch) -> normalised. cached: the teacher's features of train_u8 and of val_u8 (rows
    in order), computed once, when the teacher sees each image unchanged every epoch (no augmentation, no
    random crops)."""
    if cached is not None and (cfg.augment or cfg.crop_scale):
        raise ValueError("distill: cached teacher features need images the teacher sees unchanged (no augment, "
                         "no crop_scale)")
    from tqdm.auto import tqdm

    one_of("augment", cfg.augment, AUGMENTATIONS)
    one_of("optimizer", cfg.optimizer, OPTIMIZERS)
    one_of("schedule", cfg.schedule, SCHEDULES)
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    teacher.eval()
    student.train()
    opt = _optimizer(student, cfg)
    steps_per_epoch = math.ceil(len(train_u8) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * steps_per_epoch)) \
        if cfg.schedule == "cosine" else torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    hist = TrainHistory()
    best_state, best_val = copy.deepcopy(student.state_dict()), math.inf
    epoch = 0
    fingerprint = _fingerprint(cfg, len(train_u8), len(val_u8))
    if cfg.resume and cfg.state_path and Path(cfg.state_path).is_file():
        st = load_state(cfg.state_path, fingerprint)
        student.load_state_dict(st["student"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        gen.set_state(st["gen"])
        torch.set_rng_state(st["torch_rng"])
        best_state, best_val, epoch = st["best"], float(st["best_val"]), int(st["epoch"])
        hist = TrainHistory(**st["hist"])
        start -= hist.seconds
    good_state = (copy.deepcopy(student.state_dict()), copy.deepcopy(opt.state_dict()))
    bar = tqdm(total=cfg.epochs, initial=epoch, desc="fitting", unit="epoch", disable=not cfg.progress)
    stop = epoch > 0 and epoch - 1 - hist.best_epoch >= cfg.patience
    while epoch < cfg.epochs and not stop:
        running, seen, diverged = 0.0, 0, False
        for idx in _batches(len(train_u8), cfg.batch_size, gen):
            if len(idx) < max(2, cfg.world_size) and len(train_u8) > 1:
                continue  # BatchNorm needs two samples (every process one); the images are seen in other epochs
            batch = augment_batch(train_u8[idx], cfg.augment, gen)  # same draws on every process
            batch = random_resized_crops(batch, cfg.crop_scale, gen)
            rows = idx
            if cfg.world_size > 1:
                local = shard(torch.arange(len(idx)), cfg.rank, cfg.world_size)
                batch, rows = batch[local], idx[local]
            t_feats, s_feats = _pair(features, prepare(batch), None if cached is None else cached[0], rows)
            loss = ops.distill_loss(t_feats, s_feats, cfg.alpha, cfg.beta, backend=cfg.ops_backend)
            if cfg.world_size > 1:
                # weight this shard by its share of the global batch: DDP's gradient average then equals the
                # gradient of the global-batch mean, as in one process
                loss = loss * (len(batch) * cfg.world_size / len(idx))
                total = loss.detach().clone()
                dist.all_reduce(total)
                value = float(total) / cfg.world_size
            else:
                value = float(loss.detach())
            if not math.isfinite(value) or (hist.train_loss and value > 1e3 * max(hist.train_loss[0], 1e-3)):
                diverged = True
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            running += value * len(idx)
            seen += len(idx)
        if diverged:
            hist.rollbacks += 1
            if hist.rollbacks > cfg.max_rollbacks:
                bar.close()
                raise TrainingDivergedError(f"distillation loss diverged {hist.rollbacks} times even after "
                                            "rolling back and halving the learning rate; try a lower lr")
            student.load_state_dict(good_state[0])
            opt.load_state_dict(good_state[1])
            for group in opt.param_groups:
                group["lr"] *= 0.5
            continue  # redo this epoch from the last good state
        hist.train_loss.append(running / max(seen, 1))
        val = held_out_loss(student, features, val_u8, prepare, cfg, cached=None if cached is None else cached[1])
        hist.val_loss.append(val)
        good_state = (copy.deepcopy(student.state_dict()), copy.deepcopy(opt.state_dict()))
        if val < best_val:
            best_val, hist.best_epoch = val, epoch
            best_state = copy.deepcopy(student.state_dict())
        bar.set_postfix(loss=f"{hist.train_loss[-1]:.4f}", val=f"{val:.4f}")
        bar.update(1)
        epoch += 1
        if epoch - 1 - hist.best_epoch >= cfg.patience:
            hist.stopped_early = stop = True
        if cfg.state_path and cfg.rank == 0:
            hist.seconds = time.perf_counter() - start
            save_state(cfg.state_path, dict(
                format=STATE_FORMAT, run=fingerprint, epoch=epoch, student=student.state_dict(), best=best_state,
                best_val=best_val, opt=opt.state_dict(), sched=sched.state_dict(), gen=gen.get_state(),
                torch_rng=torch.get_rng_state(), hist=dataclasses.asdict(hist)))
    bar.close()
    student.load_state_dict(best_state)
    student.eval()
    hist.seconds = time.perf_counter() - start
    return hist
