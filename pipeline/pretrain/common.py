"""What CVRL and SVT pretraining share: the clip dataset, the batch sampler, distributed helpers,
schedules, the training state (resume) and the progress bar.

Determinism. A video's views depend only on (seed, epoch, video index): the sampler yields
``(epoch, index)`` pairs and the dataset seeds a generator with them, so any number of workers or ranks,
and a resumed run, cut the same clips. The sampler splits every *global* batch into equal rank slices in
rank order, so one process with batch B and two with B/2 each see the same batches.

Distributed. ``torchrun`` sets RANK / WORLD_SIZE; :func:`init_distributed` starts gloo on the CPU and
NCCL on GPUs. Cross-rank math that must carry gradients (CVRL's negatives, batch-norm statistics) goes
through :func:`all_gather_grad` / :func:`all_reduce_grad`, whose backward passes sum the gradients of every
rank. torch's SyncBatchNorm runs only on GPUs, so on the CPU :class:`DistBatchNorm` all-reduces the
statistics itself.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from vcache.backbones import Preprocessing
from vcache.pretrain.augment import AugParams, apply_aug
from vcache.video import VideoError, decode_frames, probe

__all__ = [
    "ClipDataset",
    "DistBatchNorm",
    "DistContext",
    "GlobalBatchSampler",
    "TrainProgress",
    "ViewPlan",
    "all_gather_grad",
    "all_reduce_grad",
    "convert_batchnorm",
    "cosine_schedule",
    "init_distributed",
    "list_videos",
    "load_state",
    "make_loader",
    "save_state",
]

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")


# ------------------------------------------------------------------------------------------ distributed


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
    from vcache.devices import resolve_device

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


def _world() -> int:
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
    return _AllGather.apply(x) if _world() > 1 else x


def all_reduce_grad(x: Tensor) -> Tensor:
    """Sum ``x`` over ranks; the gradient of each rank's copy is the sum of every rank's gradient."""
    return _AllReduce.apply(x) if _world() > 1 else x


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
        return nn.SyncBatchNorm.convert_sync_batchnorm(module) if _world() > 1 else module
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


# ---------------------------------------------------------------------------------------------- data


def list_videos(
    root: str | Path,
    fmt: str = "folder",
    annotations: str | Path | None = None,
    split: int = 1,
    subset: str = "train",
) -> list[str]:
    """Absolute paths of the videos to pretrain on (labels are not used).

    ``folder``: every video file under ``root`` (recursively; no class folders needed). Other formats go
    through :func:`vcache.datasets.load_manifest` (e.g. ``ucf101`` with its split lists).
    """
    root = Path(root).expanduser()
    if fmt == "folder":
        paths = sorted(
            str(p) for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTS and not p.name.startswith(".")
        )
    else:
        from vcache.datasets import load_manifest

        m = load_manifest(fmt, root, annotations, split=split, subset=subset)
        paths = [str(Path(m.root) / p) for p in m.paths]
    if not paths:
        raise ValueError(f"no videos found under {root} (format {fmt})")
    return paths


@dataclass
class ViewPlan:
    """One view of a video: the frame indices to show, one or T augmentation draws, the output side."""

    frames: np.ndarray
    params: list[AugParams]
    size: int


# plan(rng, n_frames, height, width) -> the views of one video
PlanFn = Callable[[np.random.Generator, int, int, int], list[ViewPlan]]


class ClipDataset(torch.utils.data.Dataset):
    """Decodes the views a method plans for a video: item ``(epoch, index)`` -> tuple of (3, T, S, S).

    Each video is probed (trusted frame count) once per worker, decoded once per item at the smallest size
    that still gives every view its pixels, and its views are augmented and normalised with the backbone's
    mean / std. A video that cannot be read is replaced by the next one (deterministically) and reported
    once on stderr, so one corrupt file does not stop a run.
    """

    def __init__(self, paths: Sequence[str], plan: PlanFn, preprocessing: Preprocessing, seed: int) -> None:
        self.paths = list(paths)
        self.plan = plan
        self.mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
        self.seed = int(seed)
        self._info: dict[int, Any] = {}
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, ...]:
        epoch, index = item
        last: Exception | None = None
        for k in range(10):
            i = (index + k) % len(self.paths)
            if i in self._bad:
                continue
            try:
                return self._views(epoch, i)
            except VideoError as e:
                self._bad.add(i)
                last = e
                print(f"vcache pretrain: skipping {self.paths[i]}: {e}", file=sys.stderr)
        raise RuntimeError(f"no readable video near index {index}: {last}")

    def _views(self, epoch: int, i: int) -> tuple[Tensor, ...]:
        if i not in self._info:
            self._info[i] = probe(self.paths[i])
        info = self._info[i]
        rng = np.random.default_rng([self.seed, epoch, i])
        plans = self.plan(rng, info.num_frames, info.height, info.width)
        # decode at the smallest size that leaves every box at least its output side (never upscale)
        scale = 1e-6
        for v in plans:
            for p in v.params:
                side = min((p.box[4] - p.box[2]) * info.height, (p.box[5] - p.box[3]) * info.width)
                scale = max(scale, v.size / max(side, 1e-6))
        scale = min(1.0, scale)
        h, w = max(1, round(info.height * scale)), max(1, round(info.width * scale))
        wanted = np.unique(np.concatenate([v.frames for v in plans]))
        frames, _ = decode_frames(self.paths[i], wanted, h, w, info.num_frames)
        out = []
        for v in plans:
            clip = np.stack([frames[int(f)] for f in v.frames])
            x = (apply_aug(clip, v.params, v.size) - self.mean) / self.std  # (T, 3, S, S)
            out.append(x.permute(1, 0, 2, 3).contiguous())
        return tuple(out)


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's slice of every global batch for steps ``start .. total-1``.

    Epoch e shuffles the videos with (seed, e); step s is global batch s % steps_per_epoch of epoch
    s // steps_per_epoch (the tail that does not fill a batch is dropped); rank r takes items
    ``[r * B/W, (r + 1) * B/W)`` of it, as ``(epoch, index)`` pairs.
    """

    def __init__(
        self, n_items: int, global_batch: int, total: int, start: int, rank: int, world: int, seed: int
    ):
        if global_batch % world:
            raise ValueError(f"batch size {global_batch} is not divisible by {world} processes")
        if n_items < global_batch:
            raise ValueError(f"{n_items} videos cannot fill one batch of {global_batch}")
        self.n, self.batch, self.total, self.start = n_items, global_batch, total, start
        self.rank, self.world, self.seed = rank, world, seed
        self.steps_per_epoch = n_items // global_batch

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        local = self.batch // self.world
        perm, perm_epoch = None, -1
        for step in range(self.start, self.total):
            epoch, b = divmod(step, self.steps_per_epoch)
            if epoch != perm_epoch:
                perm, perm_epoch = np.random.default_rng([self.seed, epoch]).permutation(self.n), epoch
            batch = perm[b * self.batch : (b + 1) * self.batch]
            yield [(epoch, int(i)) for i in batch[self.rank * local : (self.rank + 1) * local]]


def make_loader(
    dataset: ClipDataset, sampler: GlobalBatchSampler, workers: int
) -> torch.utils.data.DataLoader:
    """A DataLoader over the sampler's batches; views are stacked per view into (B, 3, T, S, S)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
    )


# ------------------------------------------------------------------------------------------- training


def cosine_schedule(
    base: float, final: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """Per-step values: linear warm-up from ``warmup_start`` to ``base``, then a half cosine to ``final``
    (CVRL Sec. 4.1, SVT Sec. 4.1; DINO's cosine_scheduler)."""
    warmup_steps = min(warmup_steps, total_steps)
    warm = np.linspace(warmup_start, base, warmup_steps, endpoint=False) if warmup_steps else np.zeros(0)
    rest = total_steps - warmup_steps
    i = np.arange(rest)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / max(1, rest)))
    return np.concatenate([warm, cos])


def save_state(path: Path, state: dict) -> None:
    """Write the training state atomically (temporary file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def state_path(out: Path) -> Path:
    """Where the resumable training state of the checkpoint ``out`` lives."""
    return out.with_name(out.name + ".train")


def mean_over_ranks(value: float) -> float:
    if _world() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / _world()


class TrainProgress:
    """A rich progress bar with the loss and clips/s (rank 0 only; ``enabled=False`` prints nothing)."""

    def __init__(self, method: str, total: int, start: int, clips_per_step: int, enabled: bool) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.enabled = enabled
        self.clips_per_step = clips_per_step
        self.progress = Progress(
            TextColumn(f"[bold]pretrain {method}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self.task = self.progress.add_task("pretrain", total=total, completed=start, info="")
        self._t0, self._steps = time.perf_counter(), 0

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def update(self, loss: float) -> None:
        self._steps += 1
        rate = self._steps * self.clips_per_step / max(1e-9, time.perf_counter() - self._t0)
        self.progress.update(self.task, advance=1, info=f"loss {loss:.4f}  {rate:.1f} clips/s")

    @property
    def clips_per_s(self) -> float:
        return self._steps * self.clips_per_step / max(1e-9, time.perf_counter() - self._t0)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and kernels only, not on biases and norm parameters (DINO's groups)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def finite_or_raise(loss: Tensor, step: int) -> None:
    if not math.isfinite(float(loss.detach())):
        raise FloatingPointError(f"loss is {float(loss)} at step {step}: lower the learning rate")


def finish_run(
    ctx: DistContext,
    method: str,
    out: Path,
    backbone: nn.Module,
    cfg: Any,
    losses: list[float],
    total: int,
    clips_per_s: float,
    final_state: dict,
    **extra: Any,
) -> dict:
    """Summarise a pretraining run; rank 0 writes the final resumable state and the backbone checkpoint."""
    from vcache.backbones import save_checkpoint

    summary = {
        "method": method,
        "steps": total,
        "final_loss": losses[-1] if losses else None,
        "first_loss": losses[0] if losses else None,
        "clips_per_s": clips_per_s,
    }
    if ctx.is_main:
        save_state(state_path(out), final_state)
        save_checkpoint(
            out, backbone, {"pretrain": {**summary, **extra, "config": cfg.to_dict(), "losses": losses}}
        )
    return summary
