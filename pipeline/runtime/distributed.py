"""Distributed plumbing every multi-process stage shares: the process group, collectives that carry
gradients, and batch norm synchronised across ranks.

``torchrun`` sets RANK / WORLD_SIZE; :func:`init_distributed` starts gloo on the CPU and NCCL on GPUs.
Cross-rank math that must carry gradients (CVRL's negatives, batch-norm statistics) goes through
:func:`all_gather_grad` / :func:`all_reduce_grad`, whose backward passes sum the gradients of every rank.
torch's SyncBatchNorm runs only on GPUs, so on the CPU :class:`DistBatchNorm` all-reduces the statistics
itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from vcache.runtime.devices import resolve_device


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto") -> DistContext:
    """One process, or one rank of a ``torchrun`` job (gloo on the CPU, NCCL on CUDA)."""
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistContext(0, 1, dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank, world, dev)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss depends on this rank's rows
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


class _AllReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def all_gather_grad(x: Tensor) -> Tensor:
    """Concatenate every rank's ``x`` (equal shapes) in rank order; gradients flow back to each rank."""
    return _AllGather.apply(x) if world_size() > 1 else x


def all_reduce_grad(x: Tensor) -> Tensor:
    """Sum ``x`` over ranks; the gradient of each rank's copy is the sum of every rank's gradient."""
    return _AllReduce.apply(x) if world_size() > 1 else x


class DistBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the batch of every rank (SyncBatchNorm for the CPU).

    In training it all-reduces (with gradient) the per-channel sums of x, then of (x - mean)^2, so the
    normalisation, its gradient and the running statistics equal those of one process holding the whole
    batch (CVRL Sec. 4.1 uses synchronised BN "to avoid information leakage"). In one process it uses the
    same sums, so one and several processes run the same arithmetic. Eval mode uses the running
    statistics like any BatchNorm; the state dict keys are BatchNorm's, so checkpoints load unchanged.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not self.track_running_stats:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        # two passes (sum, then squared deviations): E[x^2] - E[x]^2 loses digits when |mean| >> std
        count = x.new_full((1,), x.numel() / c)
        stats = all_reduce_grad(torch.cat([x.sum(dims), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = all_reduce_grad(((x - mean.view([1, c] + [1] * (x.dim() - 2))) ** 2).sum(dims)) / n
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
            self.num_batches_tracked.add_(1)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm of ``module`` synchronise across ranks, in place (returns the module).

    CUDA under torchrun: torch's SyncBatchNorm. Otherwise (the CPU, or one GPU): :class:`DistBatchNorm`,
    which is plain batch norm in one process; keeping it there too makes one and several processes
    compute alike.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module) if world_size() > 1 else module
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, DistBatchNorm):
            new = DistBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_batchnorm(child, device)
    return module


def mean_over_ranks(value: float) -> float:
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world_size()
