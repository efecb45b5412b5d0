"""One process per GPU (`torchrun`): the process group, each rank's device and share of the data, and the sums.

`torchrun --nproc-per-node N -m resnet_lab <command>` sets RANK, WORLD_SIZE and LOCAL_RANK in every process;
`setup()` reads them, binds the process to cuda:LOCAL_RANK (`devices.resolve_device`) or the CPU and joins the
group (NCCL on CUDA, Gloo on the CPU). Without torchrun (or with one process) it returns a single-process `Dist`
and touches nothing, so every helper here is a no-op there and the code that uses them runs exactly as before.
Counts (correct, seen) are summed over ranks rather than averaged, so a sharded evaluation gives exactly the
single-process accuracy whatever the shares' sizes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .devices import resolve_device
from .scoring import Score
from .torchrun import env_int, launched


@dataclass(frozen=True)
class Dist:
    """Where this process stands: its rank among `world_size` processes, its GPU index on the node, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # setup() created the process group, so cleanup() destroys it

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, shows progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | torch.device | None = None) -> Dist:
    """Join torchrun's process group (NCCL on CUDA, Gloo on the CPU) and return this process's `Dist`.

    The device is `devices.resolve_device`'s (cuda:LOCAL_RANK under torchrun; a `DeviceError` says what to pass
    where it cannot be used). Not launched by torchrun: a single-process `Dist` on it, nothing initialized.
    A process group that already exists (the caller made it) is used as it is and left to its owner.
    """
    dev = resolve_device(device)
    if not launched():
        return Dist(device=dev)
    rank, world, local_rank = env_int("RANK"), env_int("WORLD_SIZE"), env_int("LOCAL_RANK")
    owns = not dist.is_initialized()
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if owns:
        if dev.type == "cuda":
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
    return Dist(rank, world, local_rank, dev, owns)


def cleanup(d: Dist) -> None:
    """Leave the process group `setup` made (a no-op for a single process or a group someone else made), every rank
    together: a rank that left while rank 0 still wrote its files once aborted at exit under load ("terminate called
    without an active exception", SIGABRT, seen in `evaluate`'s torchrun test). Called from a `finally` while an
    exception propagates, no barrier: the failed rank leaves at once and torchrun ends the others."""
    if d.owns_group and dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    """Wait for every rank (e.g. until rank 0 has written a file the others read)."""
    if d.distributed:
        dist.barrier()


def gather_objects(obj: Any, d: Dist) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank; `[obj]` for a single process."""
    if not d.distributed:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """The sum of `t` over all ranks (a new tensor on t's device; `t` itself for a single process)."""
    if not d.distributed:
        return t
    out = t.detach().to(d.device, copy=True)  # NCCL sums tensors on the GPU, Gloo on the CPU
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def all_reduce_score(s: Score, d: Dist) -> Score:
    """`s` (this rank's share of a set) summed over all ranks: the single-process score, whatever the shares."""
    if not d.distributed:
        return s
    loss, correct, seen = all_reduce_sum(torch.tensor([s.loss_sum, s.correct, s.seen], dtype=torch.float64), d)
    return Score(float(loss), int(correct), int(seen))


def shard_indices(n: int, d: Dist) -> list[int]:
    """This rank's strided share of range(n): rank, rank + world, ... The shares are disjoint, cover range(n)
    and differ in size by at most one; nothing is padded or repeated, so summed counts are exact."""
    return list(range(d.rank, n, d.world_size))


def rank_seed(seed: int, d: Dist) -> int:
    """A seed of this rank's own, for random streams that must differ between ranks (augmentation in workers)."""
    return seed + 1000 * d.rank


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) with a gradient: every rank used the sum, so each input's gradient is the sum of theirs."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """SyncBatchNorm for Gloo on the CPU, where torch's refuses to run: in training, batch statistics over every
    rank's share (one differentiable all-reduce of per-channel sums, in float64), so the gradient flows through
    the global mean and variance as in one process with the whole batch. Eval, or outside a group, is BatchNorm2d.
    On CUDA `wrap` uses torch's nn.SyncBatchNorm (fused kernels, NCCL) instead."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        c, xd = x.shape[1], x.double()
        local = torch.cat([xd.sum((0, 2, 3)), (xd * xd).sum((0, 2, 3)), xd.new_full((1,), xd.numel() / c)])
        total = _SumOverRanks.apply(local)
        n = total[-1]
        mean = total[:c] / n
        var = total[c:2 * c] / n - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean), m)
                self.running_var.lerp_((var * n / (n - 1)).to(self.running_var), m)
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale, shift = scale * self.weight, shift * self.weight + self.bias
        return x * scale.to(x.dtype).view(1, c, 1, 1) + shift.to(x.dtype).view(1, c, 1, 1)


def _swap_batchnorm(module: nn.Module, old: tuple[type, ...], new: type) -> nn.Module:
    """Replace every `old` norm layer under `module` by a `new` one sharing its parameters and buffers."""
    for name, child in module.named_children():
        if isinstance(child, old) and type(child) is not new:
            bn = new(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            if child.affine:
                bn.weight, bn.bias = child.weight, child.bias
            if child.track_running_stats:
                bn.running_mean, bn.running_var = child.running_mean, child.running_var
                bn.num_batches_tracked = child.num_batches_tracked
            bn.train(child.training)
            setattr(module, name, bn)
        else:
            _swap_batchnorm(child, old, new)
    return module


def wrap(model: nn.Module, d: Dist, sync_bn: bool = False) -> nn.Module:
    """`model` for training on `d`: as it is for a single process, else in DistributedDataParallel (gradients
    averaged over ranks at each backward), its BatchNorms synchronized first when `sync_bn` (torch's
    SyncBatchNorm on CUDA, `CpuSyncBatchNorm` on the CPU). The BatchNorms are swapped in place.

    DDP broadcasts rank 0's weights when it wraps, so the ranks start equal whatever each built.
    """
    if not d.distributed:
        return model
    if sync_bn and d.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif sync_bn:
        model = _swap_batchnorm(model, (nn.BatchNorm2d,), CpuSyncBatchNorm)
    return nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def inner(model: nn.Module) -> nn.Module:
    """The module DDP wraps (the model itself outside DDP), BatchNorms left as they train: for saving and
    restoring state mid-run (`unwrap` would swap synchronized BatchNorms back to per-rank ones)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP (its state_dict has no `module.` prefix) with plain BatchNorm2d again
    (in place, same parameters): `fuse_bn` and type checks expect nn.BatchNorm2d."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return _swap_batchnorm(model, (nn.SyncBatchNorm, CpuSyncBatchNorm), nn.BatchNorm2d)
