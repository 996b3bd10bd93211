"""End-to-end STiCA pretraining: feature crops + temporal transformer pooling with the trunk trainable.

The paper's setting (STiCA Sec. 3.2-3.4), video only: per video and step, two large input crops L_1, L_2
sharing one temporal extent (`vcache.data.crops` mode `pairs`, one pair drawn per video and epoch), the trunk
gives their T' x H' x W' maps, and `vcache.learn.stica` crops them into the view sets T_1, T_2, pools each
view with the temporal transformer and applies the within-video loss (eq. 6). With `audio` the run adds the
paper's cross-modal term (eq. 7): a ResNet-9 on each video's 1-s log-mel spectrogram
(`vcache.pretrain.stica_audio`), L = lambda_vv L_vv + lambda_va L_va (both 0.5); without it the loss is L_vv
alone, as before (weight 1, so video-only runs are unchanged).

The trunk is written with `vcache.models.save_checkpoint`, so `vcache extract --checkpoint` loads it
like the other pretraining methods. The checkpoint's preprocessing is the one the trunk was trained with
(frames per clip, frame stride, crop side and the short side scaled with it, :func:`trained_preprocessing`),
so extraction with it cuts the same clips and yields the trained map (4 x 7 x 7 for 32 frames at 112 px).
The head and optimizer go to `<out>.state` for `--resume`.

Deviations, all where the paper (Sec. 6.1) says what it does and we do less:
- Input augmentation is the random-resized crop and flip of the `pairs` sampling only: no colour jitter,
  grey-scale or Gaussian blur.
- The optimiser is the paper's SGD (momentum 0.9, weight decay 1e-5) with its learning rate 0.64 at batch
  512 scaled linearly to our batch, linear warm-up over the first epochs (10 in the paper), then constant
  (the paper gives no decay schedule).

Added (our choice, issue 17): before the last save the batch-norm statistics of the trunk and of the audio
encoder are recomputed for their final weights over `bn_batches` batches of training crops (precise BN,
`vcache.learn.precise_bn`); the running averages of a short run at a high learning rate made eval-mode
features overflow.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vcache.data.crops import CropSettings
from vcache.extract.workers import DecodePool
from vcache.learn.precise_bn import recompute_bn_stats
from vcache.learn.stica import HeadConfig, TemporalHead, ViewConfig, train_step
from vcache.models import Preprocessing, build_backbone, save_checkpoint
from vcache.pretrain.loop import graceful_stop, stop_here
from vcache.pretrain.losses import stica_total
from vcache.pretrain.stica_audio import AudioSide
from vcache.pretrain.stica_batches import local_batches
from vcache.runtime.distributed import (
    DistContext,
    all_gather_grad,
    average_gradients,
    broadcast_object,
    convert_batchnorm,
    mean_over_ranks,
    sum_over_ranks,
    union_over_ranks,
)

METHOD = "stica"
MODE_NAME = "end-to-end STiCA (trunk trainable, video only)"
AV_MODE_NAME = "end-to-end STiCA (trunk trainable, audio-visual)"


@dataclass
class PretrainSticaConfig:
    """Everything that shapes an end-to-end STiCA run; saved in the checkpoint's config."""

    backbone: str = "r2plus1d_18"
    clip_frames: int = 32  # 32 frames give R(2+1)D-18 a 4 x 7 x 7 map at 112 px (paper: 30 frames)
    frame_stride: int | None = None  # None: the backbone's
    input_size: int | None = None  # None: the backbone's (112 for R(2+1)D-18, Sec. 4.2)
    views: ViewConfig = field(default_factory=ViewConfig)
    width: int = 512
    depth: int = 2
    heads: int = 4
    proj_dim: int = 256
    temperature: float = 0.5  # within-modal temperature (Sec. 6.1)
    batch_size: int = 8  # videos per step (paper: 8 per GPU)
    lr: float | None = None  # None: 0.64 * batch_size / 512 (Sec. 6.1, scaled linearly)
    momentum: float = 0.9
    weight_decay: float = 1e-5
    warmup_epochs: int = 10
    epochs: int = 100
    seed: int = 0
    workers: int = 2  # decoding processes (0: decode in this process)
    timeout_s: float = 300.0
    audio: bool = False  # add the cross-modal term (eq. 7); videos without audio are counted and skipped
    require_audio: bool = False  # with audio: a video without an audio stream fails the run instead
    audio_base: int = 64  # ResNet-9 channels of its first stage (paper: 64; 8 for CPU tests)
    lambda_vv: float = 0.5  # eq. 7 weights (official code: cross_modal_alpha 0.5); used with audio only
    lambda_va: float = 0.5
    cross_temperature: float = 0.1  # cross-modal temperature (appendix)
    # issue 17: batches of train-mode forward passes that recompute the trunk's batch-norm statistics
    # for its final weights before the last save (vcache.learn.precise_bn); 0 keeps the running averages
    bn_batches: int = 16

    def base_lr(self) -> float:
        return self.lr if self.lr is not None else 0.64 * self.batch_size / 512

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_AUDIO_KEYS = (
    "audio",
    "audio_base",
    "lambda_vv",
    "lambda_va",
    "cross_temperature",
    "require_audio",
    "bn_batches",
)  # settings added after the first state files (issue 17): a state file without them still resumes


@dataclass
class PretrainResult:
    checkpoint: Path
    epochs_done: int
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    failed_videos: int = 0
    seconds: float = 0.0
    no_audio_videos: int = 0  # with audio: videos without an audio stream, left out of L_va
    bn_batches: int = 0  # batches that recomputed the trunk's batch-norm statistics at the end (0: none)


def _state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state")


def trained_preprocessing(cfg: PretrainSticaConfig, pre: Preprocessing) -> Preprocessing:
    """The backbone's preprocessing with the clip length, stride and crop side of this run: what the
    checkpoint records, so that `vcache extract --checkpoint` cuts the clips the trunk was trained on."""
    size = cfg.input_size or pre.input_size
    return replace(
        pre,
        clip_frames=cfg.clip_frames,
        frame_stride=cfg.frame_stride or pre.frame_stride,
        input_size=size,
        resize_short=round(size * pre.resize_short / pre.input_size),
    )


def _epoch_settings(cfg: PretrainSticaConfig, pre: Preprocessing, epoch: int) -> CropSettings:
    """One pair per video and epoch; a new draw every epoch (the crops depend on the seed)."""
    digest = hashlib.sha256(f"stica|{cfg.seed}|{epoch}".encode()).digest()
    return CropSettings(
        mode="pairs",
        clip_frames=pre.clip_frames,
        frame_stride=pre.frame_stride,
        input_size=pre.input_size,
        resize_short=pre.resize_short,
        pairs=1,
        seed=int.from_bytes(digest[:4], "little"),
    )


def _resume(out: Path, cfg: PretrainSticaConfig, ctx: DistContext) -> tuple[dict | None, dict | None]:
    """(training state, trunk weights) to continue from, read on rank 0 and sent to every rank (the other
    ranks' disks may not hold them); (None, None) for a fresh run."""
    state = trunk = None
    if ctx.is_main and out.exists():
        state_file = _state_path(out)
        if not state_file.exists():
            state = {"error": f"--resume: {state_file} (head and optimizer state) is missing"}
        else:
            state = torch.load(state_file, map_location="cpu", weights_only=False)
            added = {k: v for k, v in PretrainSticaConfig().to_dict().items() if k in _AUDIO_KEYS}
            if added | state["config"] != cfg.to_dict() | {"epochs": state["config"]["epochs"]}:
                state = {"error": "--resume: settings differ from the checkpoint's"}
            else:
                trunk = build_backbone(cfg.backbone, checkpoint=out).state_dict()
    state, trunk = broadcast_object((state, trunk)) if ctx.distributed else (state, trunk)
    if state is not None and "error" in state:
        raise ValueError(state["error"])
    return state, trunk


def pretrain_stica(
    manifest: Any,
    out: str | Path,
    cfg: PretrainSticaConfig,
    *,
    resume: bool = False,
    device: str = "auto",
    progress: Callable[[dict[str, float]], None] | None = None,
    max_steps: int | None = None,
    ctx: DistContext | None = None,
) -> PretrainResult:
    """Pretrain `cfg.backbone` with STiCA on the videos of `manifest`; write `out` after every epoch
    (and at the end of a run cut short by `max_steps`). Returns the run's summary.

    Under torchrun (``ctx`` from `init_distributed`) each rank decodes and trains on its share of every
    global batch of `cfg.batch_size` videos; embeddings are gathered with gradient, batch norms are
    synchronised, gradients averaged, and only rank 0 writes: one process equals several."""
    from vcache.runtime.devices import resolve_device

    t_start = time.perf_counter()
    out = Path(out)
    ctx = ctx or DistContext(0, 1, resolve_device(device))
    dev = ctx.device
    torch.manual_seed(cfg.seed)
    state_file = _state_path(out)
    start_epoch, history = 0, []
    state, trunk = _resume(out, cfg, ctx) if resume else (None, None)
    model = build_backbone(cfg.backbone)
    if trunk is not None:
        model.load_state_dict(trunk)
        start_epoch, history = int(state["epochs_done"]), list(state["history"])
    model = convert_batchnorm(model, dev).to(dev)
    model.preprocessing = pre = trained_preprocessing(cfg, model.preprocessing)
    settings0 = _epoch_settings(cfg, pre, 0)
    t, h, w, c = model.map_shape(settings0.clip_frames, settings0.input_size)
    cfg.views.check((t, h, w))
    head = TemporalHead(
        HeadConfig(in_dim=c, width=cfg.width, depth=cfg.depth, heads=cfg.heads, proj_dim=cfg.proj_dim)
    )
    head = convert_batchnorm(head, dev).to(dev)
    params = list(model.parameters()) + list(head.parameters())
    audio = None
    if cfg.audio or cfg.require_audio:
        audio = AudioSide(
            manifest.root, manifest.paths, cfg.audio_base, cfg.cross_temperature, cfg.require_audio
        )
        audio = convert_batchnorm(audio, dev).to(dev)
        params += list(audio.parameters())
    opt = torch.optim.SGD(params, lr=cfg.base_lr(), momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if state is not None:
        head.load_state_dict(state["head"])
        if audio is not None:
            audio.load_state_dict(state["audio"])
            audio.missing = set(state.get("no_audio", []))
        opt.load_state_dict(state["optimizer"])
    dtype = next(model.parameters()).dtype  # inputs follow the weights (float64 in the tests)
    mean = torch.tensor(pre.mean, device=dev, dtype=dtype).view(1, 3, 1, 1, 1) * 255
    std = torch.tensor(pre.std, device=dev, dtype=dtype).view(1, 3, 1, 1, 1) * 255
    n = len(manifest.paths)
    if cfg.batch_size < 2 or n < cfg.batch_size or cfg.batch_size % ctx.world:
        raise ValueError(
            f"batch size {cfg.batch_size} with {n} videos and {ctx.world} processes: need 2 <= batch size "
            "<= videos (the other videos of a batch are the negatives), divisible by the processes"
        )
    local = cfg.batch_size // ctx.world
    steps_per_epoch = n // cfg.batch_size
    warmup_steps = max(1, min(cfg.warmup_epochs, cfg.epochs) * steps_per_epoch)
    stats = {"failed": 0}
    steps, step_global = 0, start_epoch * steps_per_epoch
    gather = all_gather_grad if ctx.distributed else None
    bn_used = 0

    def inputs(results: list[Any]) -> torch.Tensor:
        """The decoded pairs as the trunk's input: rows 2i, 2i+1 are L_1, L_2 of video i."""
        x = torch.from_numpy(np.stack([r.crops for r in results])).to(dev)  # (b, 2, T, S, S, 3)
        x = x.flatten(0, 1).permute(0, 4, 1, 2, 3).to(dtype)
        return (x - mean) / std

    def recalibrate(epoch: int) -> int:
        """Precise BN before the last save: the statistics of the trunk (and of the audio encoder) for
        their final weights, averaged over `cfg.bn_batches` batches of the training videos (the same crop
        sampling as training, a new draw; every rank takes the same number of batches and runs the audio
        encoder on each, so synchronised batch norm stays in step)."""
        if cfg.bn_batches <= 0:
            return 0
        order = np.random.default_rng([cfg.seed, epoch, 1]).permutation(n)
        settings = _epoch_settings(cfg, pre, cfg.epochs + epoch)  # crops no training epoch used
        spare = {"failed": 0}  # a video that fails here was counted by training already
        batches = local_batches(manifest, settings, order, cfg.batch_size, ctx.rank, ctx.world, pool, spare)

        def forward(batch: tuple[list[int], list[Any]]) -> None:
            model(inputs(batch[1]))
            if audio is not None:
                spec, rows = audio.spectrograms(batch[0], batch[1], [cfg.seed, cfg.epochs + epoch])
                (have,) = sum_over_ranks([len(rows)])
                if have:  # every rank runs the encoder, also on no rows, as in training
                    audio.encoder(torch.from_numpy(spec).to(dev, dtype).unsqueeze(1))

        both = torch.nn.ModuleList([model] + ([audio] if audio is not None else []))
        return recompute_bn_stats(both, itertools.islice(batches, cfg.bn_batches), forward)

    def save(epochs_done: int) -> None:
        no_audio = sorted(union_over_ranks(audio.missing)) if audio is not None else []
        if not ctx.is_main:
            return
        config = {
            "method": METHOD,
            "mode": AV_MODE_NAME if cfg.audio else MODE_NAME,
            "pretrain": cfg.to_dict(),
            "epochs_done": epochs_done,
            "history": history,
            "manifest": manifest.to_dict() if hasattr(manifest, "to_dict") else None,
            "map_shape": [t, h, w, c],
            "bn_batches": bn_used,  # batches of the precise-BN pass before this save (0: running averages)
        }
        save_checkpoint(out, model, config)
        tmp = state_file.with_name(state_file.name + f".tmp{os.getpid()}")
        torch.save(
            {
                "config": cfg.to_dict(),
                "head": head.state_dict(),
                "audio": None if audio is None else audio.state_dict(),
                "no_audio": no_audio,  # videos without audio seen so far: the count survives --resume
                "optimizer": opt.state_dict(),
                "epochs_done": epochs_done,
                "history": history,
            },
            tmp,
        )
        os.replace(tmp, state_file)

    with DecodePool(cfg.workers, cfg.timeout_s) as pool, graceful_stop(ctx) as stop:
        for epoch in range(start_epoch, cfg.epochs):
            for m in (model, head, audio):
                if m is not None:
                    m.train()
            settings = _epoch_settings(cfg, pre, epoch)
            rng = np.random.default_rng([cfg.seed, epoch])  # the same draws on every rank
            order = rng.permutation(n)
            total, count = 0.0, 0
            batches = local_batches(
                manifest, settings, order, cfg.batch_size, ctx.rank, ctx.world, pool, stats
            )
            for videos, results in batches:
                x = inputs(results)
                lr = cfg.base_lr() * min(1.0, (step_global + 1) / warmup_steps)
                for g in opt.param_groups:
                    g["lr"] = lr
                _, fmap = model(x)
                loss, _ = train_step(
                    head, fmap[0::2], fmap[1::2], cfg.views, cfg.temperature, rng, gather, ctx.rank * local
                )
                l_va = None
                if audio is not None:
                    l_va = audio.loss(head, fmap[0::2], fmap[1::2], videos, results, [cfg.seed, epoch])
                    loss = stica_total(loss, l_va, cfg.lambda_vv, cfg.lambda_va)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                average_gradients(params)
                opt.step()
                val = mean_over_ranks(float(loss.detach()))
                total, count = total + val, count + 1
                steps, step_global = steps + 1, step_global + 1
                # a collective: every rank, not only the one that reports
                va = None if l_va is None else mean_over_ranks(float(l_va.detach()))
                if progress is not None and ctx.is_main:
                    info = {"epoch": epoch, "step": steps, "loss": val, "lr": lr}
                    progress(info if va is None else info | {"loss_va": va})
                if max_steps is not None and steps >= max_steps:
                    break
                # the state of the last finished epoch stays; --resume redoes this one
                stop_here(stop, ctx, state_file, None, epoch, cfg.epochs, unit="epoch")
            last = epoch + 1 == cfg.epochs or (max_steps is not None and steps >= max_steps)
            if last:
                bn_used = recalibrate(epoch)
            if max_steps is not None and steps >= max_steps:
                history.append({"epoch": epoch + 1, "loss": total / max(count, 1), "partial": True})
                save(epoch)
                break
            history.append({"epoch": epoch + 1, "loss": total / max(count, 1)})
            save(epoch + 1)
    (failed,) = sum_over_ranks([stats["failed"]])
    return PretrainResult(
        checkpoint=out,
        epochs_done=len([h_ for h_ in history if not h_.get("partial")]),
        steps=steps,
        history=history,
        failed_videos=failed,
        seconds=time.perf_counter() - t_start,
        no_audio_videos=0 if audio is None else len(union_over_ranks(audio.missing)),
        bn_batches=bn_used,
    )
