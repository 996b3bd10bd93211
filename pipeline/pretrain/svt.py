"""SVT pretraining (Ranasinghe et al., "Self-supervised Video Transformer").

Views (Sec. 3.1): 2 global views, each sampled uniformly over a random 90 % of the video's time axis at
its own frame count (different frame rates: 8 and 16 in the paper), and several local views over a random
1/8 of the time axis with smaller crops and fewer frames (T in {2, 4, 8, 16} at 96 px in the paper). The
video ViT (:mod:`vcache.models.vit`, divided space-time attention) interpolates its spatial and temporal
position embeddings to each view (Sec. 3.2.3).

Self-distillation (Sec. 3.2-3.3, DINO): the teacher is an EMA of the student whose momentum rises from
0.996 to 1 on a cosine; only the global views go through the teacher (official code: both globals); its
outputs are centred (momentum 0.9, centre averaged over every rank) and sharpened (teacher 0.04, student
0.1). Loss = cross-view (local -> global) + motion (global -> global at another frame rate), each with a
switch (Table 4). DINO head: 3-layer MLP (GELU) to a bottleneck, L2-normalised, then a weight-normalised
linear layer to K prototypes; AdamW, cosine learning rate with warm-up, weight decay rising 0.04 -> 0.1
(Sec. 4.1), per-parameter gradient clipping at 3.0 and the last layer frozen for the first epoch
(official code).

The paper starts the spatial attention from ImageNet DINO weights: ``init_image`` loads a DINO / timm
image-ViT state dict (:mod:`vcache.pretrain.vit_image`); without one we start from random initialisation.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from vcache.models import VideoBackbone, build_backbone, save_checkpoint
from vcache.pretrain.augment import dino_settings, draw_aug
from vcache.pretrain.data import ClipDataset, GlobalBatchSampler, ViewPlan, make_loader
from vcache.pretrain.loop import (
    TrainProgress,
    cosine_schedule,
    finish_run,
    finite_or_raise,
    graceful_stop,
    param_groups,
    resume_state,
    save_state,
    state_path,
    stop_here,
    student_path,
)
from vcache.pretrain.losses import dino_loss, ema_update, svt_pairs, update_center
from vcache.runtime.distributed import DistContext, mean_over_ranks

__all__ = ["PRESETS", "DINOHead", "SVTConfig", "segment_frames", "train_svt"]


@dataclass
class SVTConfig:
    """Every setting of an SVT run (recorded in the checkpoint)."""

    backbone: str = "vit_video_tiny"
    backbone_kwargs: dict = field(default_factory=dict)  # e.g. depth, dim for a smaller ViT
    global_size: int = 64
    global_frames: tuple[int, ...] = (8, 4)  # one per global view: different frame rates (Sec. 3.2.1)
    local_size: int = 32
    local_frames: tuple[int, ...] = (2, 4, 8)  # local view i gets local_frames[i % len] (same shape per view)
    n_local: int = 4
    global_span: float = 0.9  # fraction of the time axis a global view covers (Sec. 3.1)
    local_span: float = 1 / 8
    global_area: tuple[float, float] = (0.4, 1.0)  # DINO's global / local crop scales (official code)
    local_area: tuple[float, float] = (0.05, 0.4)
    motion: bool = True  # global -> global (Sec. 3.2.1)
    cross_view: bool = True  # local -> global (Sec. 3.2.2)
    out_dim: int = 4096
    head_hidden: int = 512
    head_bottleneck: int = 128
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    momentum_teacher: float = 0.996
    batch_size: int = 8
    epochs: float = 10.0
    steps: int | None = None
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.1
    clip_grad: float = 3.0
    freeze_last_layer_epochs: float = 1.0
    workers: int = 2
    timeout_s: float = 300.0  # a video that decodes longer is skipped as unreadable
    seed: int = 0
    device: str = "auto"
    save_every: int = 200
    # A DINO / timm image-ViT state dict to start from (SVT Sec. 4.1; pipeline/pretrain/vit_image.py).
    init_image: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# Paper scale (Sec. 3.1, 4.1): globals 224 px at 8 and 16 frames, 8 locals at 96 px with T in {2,4,8,16},
# K = 65536, batch 32, 20 epochs, lr 5e-4, 5 warm-up epochs. SVT uses ViT-B; vit_video_small (ViT-S) is the
# largest registry ViT, with its embeddings sized for 16 frames. Hidden 2048 / bottleneck 256: DINO's head.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        backbone="vit_video_small",
        global_size=224,
        global_frames=(8, 16),
        local_size=96,
        local_frames=(2, 4, 8, 16),
        n_local=8,
        out_dim=65536,
        head_hidden=2048,
        head_bottleneck=256,
        batch_size=32,
        epochs=20,
        warmup_epochs=5,
    ),
    "cpu": dict(
        backbone="vit_video_tiny",
        global_size=64,
        global_frames=(8, 4),
        local_size=32,
        local_frames=(2, 4, 8),
        n_local=4,
        out_dim=4096,
        head_hidden=512,
        head_bottleneck=128,
        batch_size=8,
        epochs=6,
        warmup_epochs=0.5,
        freeze_last_layer_epochs=0.5,
    ),
}


class DINOHead(nn.Module):
    """DINO's projection head: 3-layer MLP (GELU) -> bottleneck -> L2 norm -> weight-normalised linear.

    The last layer's weight rows are normalised to unit length with the norm fixed at 1 (DINO's
    ``norm_last_layer=True``, SVT's default).
    """

    def __init__(self, dim: int, out_dim: int, hidden: int = 2048, bottleneck: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )
        self.last_layer = nn.Linear(bottleneck, out_dim, bias=False)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.last_layer.weight, dim=1))


class MultiViewNet(nn.Module):
    """Backbone + head over a list of views of different shapes (DINO's MultiCropWrapper).

    Views of equal shape run through the backbone in one pass; the CLS features of all views then go
    through the head at once. Returns one (B, K) logit matrix per view, in input order.
    """

    def __init__(self, backbone: VideoBackbone, head: DINOHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, views: list[Tensor]) -> list[Tensor]:
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, v in enumerate(views):
            groups.setdefault(tuple(v.shape), []).append(i)
        feats: list[Tensor | None] = [None] * len(views)
        for idx in groups.values():
            pooled, _ = self.backbone(torch.cat([views[i] for i in idx]))
            for j, part in zip(idx, pooled.chunk(len(idx)), strict=True):
                feats[j] = part
        b = views[0].shape[0]
        return list(self.head(torch.cat(feats)).split(b))  # type: ignore[arg-type]


def segment_frames(rng: np.random.Generator, n: int, span: float, frames: int) -> np.ndarray:
    """``frames`` indices spread uniformly over a random segment covering ``span`` of n frames (Sec. 3.1)."""
    length = max(1, round(span * n))
    start = int(rng.integers(0, n - length + 1))
    return np.round(np.linspace(start, start + length - 1, frames)).astype(np.int64)


def make_plan(cfg: SVTConfig):
    """Per video: the global views, then the locals, each with one augmentation draw for all its frames
    (:func:`dino_settings`: blur p 1.0 on the first global, 0.1 + solarisation 0.2 on the second, 0.5 on
    the locals; crop scales ``cfg.global_area`` / ``cfg.local_area``)."""
    g_aug = [dino_settings(cfg.global_area, 1.0), dino_settings(cfg.global_area, 0.1, 0.2)]
    l_aug = dino_settings(cfg.local_area, 0.5)

    def plan(rng: np.random.Generator, n: int, h: int, w: int) -> list[ViewPlan]:
        views = []
        for i, t in enumerate(cfg.global_frames):
            aug = g_aug[min(i, 1)]
            views.append(
                ViewPlan(
                    segment_frames(rng, n, cfg.global_span, t), [draw_aug(rng, aug, h, w)], cfg.global_size
                )
            )
        for i in range(cfg.n_local):
            t = cfg.local_frames[i % len(cfg.local_frames)]
            views.append(
                ViewPlan(
                    segment_frames(rng, n, cfg.local_span, t), [draw_aug(rng, l_aug, h, w)], cfg.local_size
                )
            )
        return views

    return plan


def build_student(cfg: SVTConfig) -> MultiViewNet:
    """The ViT sized for the largest view (its embeddings are interpolated for the others, Sec. 3.2.3)."""
    backbone = build_backbone(
        cfg.backbone,
        **{**cfg.backbone_kwargs, "img_size": cfg.global_size, "num_frames": max(cfg.global_frames)},
    )
    if cfg.init_image:  # the video model starts as the image model on every frame (vit_image.py)
        from vcache.pretrain.vit_image import load_image_vit

        load_image_vit(backbone, cfg.init_image)  # type: ignore[arg-type]
    return MultiViewNet(
        backbone.train(), DINOHead(backbone.feature_dim, cfg.out_dim, cfg.head_hidden, cfg.head_bottleneck)
    )


def train_svt(
    paths: list[str],
    out: str | Path,
    cfg: SVTConfig,
    ctx: DistContext,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Pretrain a video ViT with SVT on ``paths``; write the *teacher* backbone (DINO's evaluated network)
    as a vcache checkpoint at ``out``. Training state beside it (``out.train``); ``resume`` continues."""
    if len(cfg.global_frames) < 1 or (cfg.motion and len(cfg.global_frames) < 2):
        raise ValueError("SVT needs 2 global views for the motion loss")
    out = Path(out)
    torch.manual_seed(cfg.seed)
    student = build_student(cfg).to(ctx.device)
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    n_global, n_local = len(cfg.global_frames), cfg.n_local if cfg.cross_view else 0
    pairs = svt_pairs(n_global, n_local, cfg.motion, cfg.cross_view)

    spe = GlobalBatchSampler(len(paths), cfg.batch_size, 1, 0, ctx.rank, ctx.world, cfg.seed).steps_per_epoch
    total = cfg.steps if cfg.steps is not None else max(1, round(cfg.epochs * spe))
    lrs = cosine_schedule(cfg.lr, cfg.min_lr, total, round(cfg.warmup_epochs * spe))
    wds = cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, total)
    moms = cosine_schedule(cfg.momentum_teacher, 1.0, total)
    freeze_steps = round(cfg.freeze_last_layer_epochs * spe)
    opt = torch.optim.AdamW(param_groups(student, cfg.weight_decay))
    center = torch.zeros(1, cfg.out_dim, device=ctx.device)

    start, losses = 0, []
    spath = state_path(out)
    st = resume_state(spath, resume, ctx)  # rank 0 decides and sends it (node-local disks)
    if st is not None:
        student.load_state_dict(st["student"])
        teacher.load_state_dict(st["teacher"])
        opt.load_state_dict(st["optimizer"])
        center = st["center"].to(ctx.device)
        start, losses = int(st["step"]), list(st["losses"])

    net: nn.Module = student
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(
            student,
            device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
        )
    dataset = ClipDataset(paths, make_plan(cfg), student.backbone.preprocessing, cfg.seed, cfg.timeout_s)
    loader = make_loader(
        dataset,
        GlobalBatchSampler(len(paths), cfg.batch_size, total, start, ctx.rank, ctx.world, cfg.seed),
        cfg.workers,
    )

    def state(step: int) -> dict:
        return {
            "step": step,
            "student": student.state_dict(),
            "teacher": teacher.state_dict(),
            "optimizer": opt.state_dict(),
            "center": center.cpu(),
            "losses": losses,
            "config": cfg.to_dict(),
        }

    n_views = n_global + n_local
    dtype = next(student.parameters()).dtype  # inputs follow the weights (float64 in the tests)
    bar = TrainProgress("svt", total, start, cfg.batch_size * n_views, progress and ctx.is_main)
    with bar, graceful_stop(ctx) as stop:
        for step, views in enumerate(loader, start=start):
            for i, g in enumerate(opt.param_groups):
                g["lr"] = float(lrs[step])
                if i == 0:  # only the decayed group follows the weight-decay schedule
                    g["weight_decay"] = float(wds[step])
            views = [v.to(ctx.device, dtype, non_blocking=True) for v in views[:n_views]]
            student_out = net(views)
            with torch.no_grad():
                teacher_out = teacher(views[:n_global])  # only the global views pass through the teacher
            loss = dino_loss(student_out, teacher_out, center, pairs, cfg.student_temp, cfg.teacher_temp)
            finite_or_raise(loss, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                for p in student.parameters():  # DINO clips each parameter's gradient norm on its own
                    if p.grad is not None:
                        norm = p.grad.norm()
                        p.grad.mul_(torch.clamp(cfg.clip_grad / (norm + 1e-6), max=1.0))
            if step < freeze_steps:
                student.head.last_layer.weight.grad = None
            opt.step()
            ema_update(teacher, student, float(moms[step]))
            with torch.no_grad():  # centre: mean teacher output over both globals of every rank's batch
                tsum = torch.cat(teacher_out).sum(0, keepdim=True)
                if ctx.distributed:
                    dist.all_reduce(tsum)
                count = len(teacher_out) * views[0].shape[0] * ctx.world  # equal batches on every rank
                center = update_center(center, tsum / count, cfg.center_momentum)
            losses.append(mean_over_ranks(float(loss.detach())))
            bar.update(losses[-1])
            if ctx.is_main and cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
                save_state(spath, state(step + 1))
            stop_here(stop, ctx, spath, partial(state, step + 1), step + 1, total)
        clips_per_s = bar.clips_per_s
    summary = finish_run(
        ctx, "svt", out, teacher.backbone, cfg, losses, total, clips_per_s, state(total), weights="teacher"
    )
    if ctx.is_main:  # the student beside the teacher (issue 14): the tables evaluate both
        meta = {**summary, "config": cfg.to_dict(), "losses": losses, "weights": "student"}
        save_checkpoint(student_path(out), student.backbone, {"pretrain": meta})
    return summary
