"""Distributed plumbing every multi-process stage shares: the process group, collectives that carry
gradients, and batch norm synchronised across ranks.

``torchrun`` sets RANK / WORLD_SIZE; :func:`init_distributed` starts gloo on the CPU and NCCL on GPUs.
Cross-rank math that must carry gradients (CVRL's negatives, batch-norm statistics) goes through
:func:`all_gather_grad` / :func:`all_reduce_grad`, whose backward passes sum the gradients of every rank.
torch's SyncBatchNorm runs only on GPUs, so on the CPU :class:`DistBatchNorm` all-reduces the statistics
itself.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from vcache.runtime.devices import resolve_device, use_device


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


def init_distributed(device: str = "auto", timeout_s: float | None = None) -> DistContext:
    """One process, or one rank of a ``torchrun`` job (gloo on the CPU, NCCL on CUDA).

    The device is :func:`vcache.runtime.devices.resolve_device`'s, the one rule every command uses; it is
    made the current CUDA device before the process group starts. ``timeout_s``: how long a collective
    may wait for the other ranks (torch's default, 30 minutes for gloo, 10 for NCCL, when None).
    """
    dev = resolve_device(device)
    use_device(dev)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistContext(0, 1, dev)
    rank = int(os.environ["RANK"])
    if not dist.is_initialized():
        kw = {"timeout": datetime.timedelta(seconds=timeout_s)} if timeout_s else {}
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", **kw)
    return DistContext(rank, world, dev)


def end_distributed() -> None:
    """Leave the process group at the end of a run (torch warns, and NCCL may hang at exit, without it)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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
            self.num_batches_tracked.add_(1)
            # momentum None: a cumulative average, as torch's BatchNorm (vcache.learn.precise_bn uses it)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
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


def collective_device(backend: str | None = None) -> torch.device:
    """Where a tensor handed to a collective must live: this rank's current GPU under NCCL, which only
    takes CUDA tensors, and the CPU under gloo. Every collective of vcache on host values (the loss, the
    replica check, broadcast objects) places its tensors here, so gloo runs the same code as NCCL."""
    backend = backend or str(dist.get_backend())
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_over_ranks(value: float) -> float:
    """The mean of ``value`` over every rank (``value`` itself outside a process group). A group of one
    still runs the collective, so a one-GPU check exercises NCCL's path."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable; tensors inside come back on the CPU as they went).
    What every rank must agree on -- resume or not, the step, a run id -- is decided on rank 0 and sent."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=collective_device())
    return box[0]


def replica_fingerprint(module: nn.Module) -> Tensor:
    """Per-parameter float64 sums and sums of squares: equal on every rank when the replicas are equal."""
    with torch.no_grad():
        rows = [
            torch.stack([p.detach().double().sum(), p.detach().double().pow(2).sum()])
            for p in module.parameters()
        ]
    return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.float64)


def check_replicas(module: nn.Module, rtol: float = 1e-6) -> float:
    """Raise when the replicas of ``module`` differ between ranks (a DDP run whose gradients were not
    all reduced); returns the largest relative difference of the fingerprints (0.0 in one process).

    DDP gives every rank the same averaged gradients, so the replicas stay bitwise equal on the CPU; on
    CUDA ``rtol`` leaves room for kernels that are not bitwise reproducible."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0.0
    mine = replica_fingerprint(module).to(collective_device())
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine)
    ref = parts[0]
    spread = (
        max(float(((p - ref).abs() / ref.abs().clamp_min(1e-12)).max()) for p in parts) if len(ref) else 0.0
    )
    if spread > rtol:
        raise RuntimeError(
            f"the model replicas differ between ranks (relative difference {spread:.3g}): gradients were "
            "not all reduced; the run is not valid"
        )
    return spread


def average_gradients(params: list[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over ranks in one flat all-reduce: DDP's arithmetic, for a step
    that runs several modules outside one wrapped forward (end-to-end STiCA). Parameters without a gradient
    are skipped; every rank must have the same such set (the steps decide what enters the loss together)."""
    if world_size() <= 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    start = 0
    for g in grads:
        g.copy_(flat[start : start + g.numel()].view_as(g))
        start += g.numel()


def gather_rows(x: Tensor) -> Tensor:
    """Every rank's ``x`` (equal shapes) concatenated in rank order, without gradient (masks, counts)."""
    if world_size() <= 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def sum_over_ranks(values: list[int]) -> list[int]:
    """Element-wise sum of integer ``values`` over every rank (``values`` itself outside a process group)."""
    if world_size() <= 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.int64, device=collective_device())
    dist.all_reduce(t)
    return [int(v) for v in t.tolist()]


def union_over_ranks(items: set[int]) -> set[int]:
    """The union of every rank's set (the set itself outside a process group)."""
    if world_size() <= 1:
        return set(items)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, sorted(items))
    return {int(v) for p in parts for v in p}
