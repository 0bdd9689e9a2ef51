"""Distributed training with torchrun: `torchrun --nproc_per_node=N -m fastmsfd fit ...`.

Each process takes a 1/N shard of every global batch (the same seeded order on every process); gradients are
averaged by DistributedDataParallel and BatchNorm uses the statistics of the whole global batch (SyncBatchNorm2d
below, which, unlike torch.nn.SyncBatchNorm, also runs on CPU tensors with gloo). The student therefore follows
the same trajectory as one process with the same global batch and seed, up to floating-point summation order.
Backend: gloo on CPU, NCCL on GPU. Multi-node: torchrun's usual --nnodes/--node_rank/--rdzv_endpoint flags.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
from torch import nn


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_device(device: torch.device) -> torch.device:
    """The device this process trains on. Under torchrun on GPUs every rank takes its own: cuda:LOCAL_RANK (one
    process per GPU of the node, torchrun's convention), whatever index the caller gave; otherwise `device`."""
    device = torch.device(device)
    if device.type != "cuda" or not launched_by_torchrun():
        return device
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def ddp_kwargs(device: torch.device) -> dict:
    """DistributedDataParallel arguments for a module on `device`: one GPU per process on CUDA."""
    return {"device_ids": [device.index], "output_device": device.index} if device.type == "cuda" else {}


def init_from_env(device: torch.device) -> tuple[int, int]:
    """(rank, world size); initialises the default process group from torchrun's environment if needed. On CUDA
    the rank's GPU (rank_device) becomes the current device first, so NCCL binds each rank to its own GPU."""
    if not launched_by_torchrun():
        return 0, 1
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def local_moments(x: torch.Tensor) -> torch.Tensor:
    """[sum over (B, h, w) per channel, sum of squares, count] in float64 on x's device (NCCL reduces only
    tensors on the process's GPU)."""
    dims = (0, 2, 3)
    count = torch.full((1,), x.numel() / x.shape[1], dtype=torch.float64, device=x.device)
    return torch.cat([x.double().sum(dims), x.double().pow(2).sum(dims), count])


class _SyncBN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, training):
        stats = local_moments(x)
        dist.all_reduce(stats)
        C = x.shape[1]
        n = stats[-1]
        mean = stats[:C] / n
        var = (stats[C:2 * C] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(momentum * mean.to(running_mean.dtype))
            running_var.mul_(1 - momentum).add_(momentum * (var * n / max(float(n) - 1, 1)).to(running_var.dtype))
        invstd = (var + eps).rsqrt().to(x.dtype)
        xhat = (x - mean.to(x.dtype).view(1, C, 1, 1)) * invstd.view(1, C, 1, 1)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.n = float(n)
        return xhat * weight.view(1, C, 1, 1) + bias.view(1, C, 1, 1)

    @staticmethod
    def backward(ctx, g):
        xhat, weight, invstd = ctx.saved_tensors
        C = g.shape[1]
        dims = (0, 2, 3)
        local = torch.cat([g.double().sum(dims), (g * xhat).double().sum(dims)])
        grad_bias, grad_weight = local[:C].to(g.dtype), local[C:].to(g.dtype)
        total = local.clone()
        dist.all_reduce(total)
        sum_g, sum_gx = total[:C].to(g.dtype).view(1, C, 1, 1), total[C:].to(g.dtype).view(1, C, 1, 1)
        scale = (weight * invstd).view(1, C, 1, 1) / ctx.n
        grad_x = scale * (ctx.n * g - sum_g - xhat * sum_gx)
        return grad_x, grad_weight, grad_bias, None, None, None, None, None


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over the global batch of all processes (CPU/gloo or CUDA/NCCL); same state_dict keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        return _SyncBN.apply(x, self.weight, self.bias, self.running_mean, self.running_var, self.eps,
                             self.momentum, True)


def _swap_bn(module: nn.Module, to_cls) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and type(child) is not to_cls:
            new = to_cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(device=child.weight.device)
            setattr(module, name, new)
        else:
            _swap_bn(child, to_cls)
    return module


def to_sync_bn(module: nn.Module) -> nn.Module:
    return _swap_bn(module, SyncBatchNorm2d)


def to_plain_bn(module: nn.Module) -> nn.Module:
    return _swap_bn(module, nn.BatchNorm2d)


@contextlib.contextmanager
def data_parallel(student: nn.Module, device: torch.device, world: int):
    """The student to train with: itself in one process; under torchrun, a DistributedDataParallel wrapper on
    this rank's device with global-batch BatchNorm, which is swapped back to plain BatchNorm afterwards."""
    if world == 1:
        yield student
        return
    to_sync_bn(student)
    try:
        yield torch.nn.parallel.DistributedDataParallel(student, **ddp_kwargs(device))
    finally:
        to_plain_bn(student)


def shard(idx: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This process's part of a global batch: every world-th index starting at rank."""
    return idx[rank::world]
