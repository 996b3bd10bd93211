"""What CVRL and SVT training loops share: schedules, the resumable training state, the progress bar,
parameter groups and the end of a run."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vcache.extract.stop import EXIT_CODES, GracefulStop
from vcache.runtime.distributed import DistContext, broadcast_object, check_replicas, mean_over_ranks


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


def resume_state(spath: Path, resume: bool, ctx: DistContext) -> dict | None:
    """The training state to continue from, decided and read on rank 0 and sent to every rank.

    Only rank 0 writes the state, and the other ranks may run on nodes whose disks do not hold it: a
    rank deciding alone would restart at step 0 with a fresh optimizer while rank 0 continues. None when
    there is nothing to resume (every rank then starts at step 0)."""
    st = load_state(spath) if resume and ctx.is_main and spath.exists() else None
    return broadcast_object(st) if ctx.distributed else st


def state_path(out: Path) -> Path:
    """Where the resumable training state of the checkpoint ``out`` lives."""
    return out.with_name(out.name + ".train")


def student_path(out: Path) -> Path:
    """Where SVT writes its student backbone beside the teacher checkpoint ``out`` (``x.pt`` ->
    ``x.student.pt``), so that the student can be evaluated beside the teacher (issue 14)."""
    return out.with_name(out.stem + ".student" + out.suffix)


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
    from vcache.models import save_checkpoint

    summary = {
        "method": method,
        "steps": total,
        "final_loss": losses[-1] if losses else None,
        "first_loss": losses[0] if losses else None,
        "clips_per_s": clips_per_s,
        # every rank must hold the same weights; a DDP that reduced no gradient fails here, loudly
        "replica_spread": check_replicas(backbone),
    }
    if ctx.is_main:
        save_state(state_path(out), final_state)
        save_checkpoint(
            out, backbone, {"pretrain": {**summary, **extra, "config": cfg.to_dict(), "losses": losses}}
        )
    return summary


class Stopped(Exception):
    """A pretraining run stopped by SIGINT / SIGTERM after ``step`` of ``total`` steps, its resumable state
    saved (rank 0) so that ``--resume`` continues from that step."""

    def __init__(self, signal_name: str, step: int, total: int, state_file: Path, unit: str = "step") -> None:
        kept = (
            f"the training state is in {state_file}"
            if unit == "step"
            else (f"the state of the last finished epoch is in {state_file} (the epoch in hand starts again)")
        )
        super().__init__(
            f"{signal_name}: stopped after {unit} {step} of {total}; {kept}: "
            "rerun the same command with --resume to continue"
        )
        self.signal_name, self.step, self.total = signal_name, step, total

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signal_name, 130)


def graceful_stop(ctx: DistContext) -> GracefulStop:
    """SIGINT / SIGTERM become a request that the loop honours after the step in hand (rank 0 says so)."""
    return GracefulStop(announce=ctx.is_main, message="stopping after this step; the training state is saved")


def stop_now(stop: GracefulStop) -> bool:
    """True on every rank once any rank was asked to stop: all ranks leave at the same step (a collective,
    so every rank calls it every step)."""
    return mean_over_ranks(1.0 if stop.requested else 0.0) > 0.0


def stop_here(
    stop: GracefulStop,
    ctx: DistContext,
    spath: Path,
    state: Callable[[], dict] | None,
    step: int,
    total: int,
    unit: str = "step",
) -> None:
    """Raise Stopped if a stop was asked for on any rank, after rank 0 saved ``state()`` (None: the state
    already saved at ``spath`` stays, as STiCA's per-epoch one); else return. A rank that got no signal
    itself reports SIGTERM."""
    if step >= total or not stop_now(stop):
        return
    if ctx.is_main and state is not None:
        save_state(spath, state())
    raise Stopped(stop.signal_name or "SIGTERM", step, total, spath, unit)
