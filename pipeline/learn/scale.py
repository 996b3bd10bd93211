"""SCALE (Spatio-temporal Crop Aggregation, Sec. 3.3 of the paper): a small transformer over sets of cached
clip features, trained self-supervised with masked clip modelling (MCM) and a set-level contrastive loss
(SET).

It reads a `train`-mode store (16 augmented crops per video) through `vcache.store.load_cache`, never video.
Training and encoding are here; the model is in `vcache.learn.aggregator`, checkpoints in
`vcache.learn.checkpoints`.
"""

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from vcache.learn.aggregator import ScaleAggregator, ScaleConfig, ScaleSSL, gather_rows, sample_sets
from vcache.learn.checkpoints import CKPT_FORMAT, atomic_save, load_checkpoint
from vcache.learn.probe_data import video_ids
from vcache.runtime.devices import resolve_device
from vcache.store import Cache, StoreError, check_compatible, store_provenance


# -- training -------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    checkpoint: Path
    epochs_done: int
    history: list[dict[str, float]] = field(default_factory=list)
    samples_per_s: float = 0.0
    data_share: float = 0.0  # share of step time spent sampling and gathering the batch


class ShardStream:
    """A train store too large for memory, read a group of shards at a time (each group under `max_bytes`).

    Every epoch visits the groups in an order drawn from (seed, epoch) and shuffles videos within a group,
    so a batch's negatives come from one group (consecutive shards: a random slice of the videos).
    """

    def __init__(self, path: str | Path, max_bytes: float):
        from vcache.store import open_store

        st = open_store(path)
        self.path, self.attrs = Path(path), st.attrs
        from vcache.store.cache import dense_k

        k = dense_k(st) if st.variable else st.crops_per_video  # dense: K rows spread over each video's
        per_shard = st.videos_per_shard * k * (st.feature_dim + 6) * 4
        size = max(1, int(max_bytes // max(1, per_shard)))
        self.groups = [list(range(i, min(st.n_shards, i + size))) for i in range(0, st.n_shards, size)]
        done = st.status() == 1
        self.group_videos = [
            sum(int(done[r.start : r.stop].sum()) for r in map(st.shard_videos, g)) for g in self.groups
        ]
        self.n_videos = int(done.sum())
        self.paths = [p for p, d in zip(st.paths(), done, strict=True) if d]
        self.crops_per_video, self.feature_dim = k, st.feature_dim

    def blocks(self, epoch: int, seed: int) -> Iterator[Cache]:
        from vcache.store import load_cache

        order = np.random.default_rng([seed, epoch]).permutation(len(self.groups))
        for g in order:
            yield load_cache(self.path, shards=self.groups[g])


def memory_budget(host_free: float, gpu_free: float | None, memory_gb: float | None = None) -> float:
    """Bytes of features SCALE may hold at once. The loaded cache (or a stream's group of shards) sits on the
    training device, so on a GPU the budget is half of its free memory as well as half of the host's free
    memory (the host reads it first); `memory_gb` overrides both."""
    if memory_gb:
        return memory_gb * 1e9
    budget = 0.5 * host_free
    return min(budget, 0.5 * gpu_free) if gpu_free is not None else budget


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as the official code: no decay on biases, 1-d parameters (norms) or learned tokens."""
    plain, decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias") or name.endswith("_token")
        (plain if no_decay else decay).append(p)
    return [{"params": plain, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def warmup_cosine(step: int, total: int, warmup: float) -> float:
    """lr factor at optimiser step `step` of `total`: linear from 0 over the first `warmup` share of the
    steps, then half a cosine down to 0 (the official code's schedule, stepped every iteration)."""
    w = warmup * total
    if step <= w and w > 0:
        return step / w
    return 0.5 * (math.cos(math.pi * (step - w) / max(total - w, 1e-9)) + 1.0)


def steps_per_epoch(cache: Cache | ShardStream, batch_size: int, drop_last: bool) -> int:
    """Optimiser steps in one epoch of `train_scale`: batches within each group of shards (the whole store
    when it is loaded), of at most `batch_size` videos capped by the number of videos."""
    if isinstance(cache, ShardStream):
        n, sizes = cache.n_videos, cache.group_videos
    else:
        n = len(cache.features)
        sizes = [n]
    return sum(len(batch_bounds(g, min(batch_size, n), drop_last)) for g in sizes)


def batch_bounds(n: int, batch: int, drop_last: bool) -> list[tuple[int, int]]:
    """(start, stop) of the batches over n shuffled videos; a batch of one video is never used (SET needs
    another video as its negative), and with drop_last a partial last batch is dropped (official code)."""
    batch = min(batch, n)
    out = [(i, min(n, i + batch)) for i in range(0, n, batch)]
    return [(a, b) for a, b in out if b - a >= 2 and (b - a == batch or not drop_last)]


def train_scale(
    cache: Cache | ShardStream,
    cfg: ScaleConfig,
    out: str | Path,
    *,
    store_path: str | Path | None = None,
    resume: bool = False,
    device: str = "auto",
    progress: Callable[[dict[str, float]], None] | None = None,
    max_steps: int | None = None,
) -> TrainResult:
    """Train SCALE on a loaded cache (or a ShardStream) and write a checkpoint to `out` after every epoch.

    A loaded cache is moved to the device once (a stream, a group of shards at a time); each step samples
    two disjoint sets of K crops per video and their masks (`cfg.masking`). AdamW with the official
    parameter groups and a per-step warm-up + cosine schedule over all epochs. Sampling uses a generator
    seeded from (seed, epoch) and the checkpoint keeps torch's RNG (dropout), so a run resumed from an
    epoch's checkpoint gives exactly the weights of an uninterrupted run.
    `progress` gets a dict (epoch, step, steps, loss, mcm, set, samples_per_s) after every step.
    `max_steps` stops early (benchmarks); the checkpoint then holds the last completed epoch only.
    """
    out = Path(out)
    if isinstance(cache, ShardStream):
        n, n_crops, d = cache.n_videos, cache.crops_per_video, cache.feature_dim
    else:
        n, n_crops, d = cache.features.shape
    if d != cfg.feature_dim:
        raise StoreError(f"store feature dim {d} != config feature dim {cfg.feature_dim}")
    if 2 * cfg.k > n_crops:
        raise StoreError(
            f"K={cfg.k}: two disjoint sets need {2 * cfg.k} crops per video, the store has {n_crops}"
        )
    if cfg.use_mcm and cfg.mask_ratio <= 0:
        raise ValueError("the MCM loss needs a mask ratio > 0")
    if not (cfg.use_mcm or cfg.use_set):
        raise ValueError("switch on at least one of the MCM and SET losses")
    if n < 2:
        raise StoreError("SCALE needs at least 2 videos (the other videos are the negatives)")
    dev = resolve_device(device)
    provenance = store_provenance(cache.attrs, store_path)

    bsz = min(cfg.batch_size, n)
    steps = steps_per_epoch(cache, cfg.batch_size, cfg.drop_last)
    if steps == 0:
        raise StoreError(f"no batch of at least 2 videos: {n} videos, batch size {cfg.batch_size}")
    torch.manual_seed(cfg.seed)
    model = ScaleSSL(cfg).to(dev)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    total_steps = steps * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: warmup_cosine(i, total_steps, cfg.warmup))
    start_epoch, history = 0, []
    if resume and out.exists():
        ckpt = load_checkpoint(out)
        saved = dict(ckpt["config"])
        now = asdict(cfg)
        diff = [f.name for f in fields(cfg) if saved.get(f.name) != now[f.name]]
        if diff:
            raise ValueError(
                f"--resume: settings differ from the checkpoint's: {', '.join(diff)} (the learning-rate "
                "schedule spans all epochs, so --epochs must match too)"
            )
        check_compatible(ckpt["provenance"], cache.attrs, "the checkpoint's store", "the train store")
        if ckpt["provenance"].get("manifest_hash") != cache.attrs.get("manifest_hash"):
            raise StoreError(
                "--resume: the checkpoint was trained on a different store (manifest hash differs)"
            )
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"])
        start_epoch, history = int(ckpt["epochs_done"]), list(ckpt["history"])

    def blocks(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(cache, ShardStream):
            for c in cache.blocks(epoch, cfg.seed):
                yield torch.as_tensor(c.features, device=dev), torch.as_tensor(c.boxes, device=dev)
        else:
            yield whole

    if not isinstance(cache, ShardStream):
        whole = (torch.as_tensor(cache.features, device=dev), torch.as_tensor(cache.boxes, device=dev))
    done_steps, t_data, t_total, seen = 0, 0.0, 0.0, 0
    epoch = start_epoch
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        sums = {"total": 0.0, "mcm": 0.0, "set": 0.0}
        s, n_seen = 0, 0
        for feats, boxes in blocks(epoch):
            nb = len(feats)
            order = torch.randperm(nb, generator=gen)
            idx1, idx2, m1, m2 = sample_sets(nb, n_crops, cfg.k, cfg.mask_ratio, gen, cfg.masking)
            for first, stop in batch_bounds(nb, bsz, cfg.drop_last):
                t0 = time.perf_counter()
                vids = order[first:stop]
                vd = vids.to(dev)
                f_all, b_all = feats[vd], boxes[vd]
                i1, i2 = idx1[vids].to(dev), idx2[vids].to(dev)
                batch_f = (gather_rows(f_all, i1), gather_rows(f_all, i2))
                batch_b = (gather_rows(b_all, i1), gather_rows(b_all, i2))
                batch_m = (m1[vids].to(dev), m2[vids].to(dev))
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t1 = time.perf_counter()
                losses = model.losses(batch_f, batch_b, batch_m)
                opt.zero_grad(set_to_none=True)
                losses["total"].backward()
                opt.step()
                sched.step()
                vals = {k: float(v.detach()) for k, v in losses.items()}  # float() syncs the device
                t2 = time.perf_counter()
                t_data += t1 - t0
                t_total += t2 - t0
                seen += len(vids)
                n_seen += len(vids)
                for key in sums:
                    sums[key] += vals[key] * len(vids)
                done_steps += 1
                s += 1
                if progress is not None:
                    progress(
                        {
                            "epoch": epoch,
                            "step": s - 1,
                            "steps": steps,
                            "loss": vals["total"],
                            "mcm": vals["mcm"],
                            "set": vals["set"],
                            "samples_per_s": seen / max(t_total, 1e-9),
                        }
                    )
                if max_steps is not None and done_steps >= max_steps:
                    break
            if max_steps is not None and done_steps >= max_steps:
                break
        if max_steps is not None and done_steps >= max_steps:
            break
        history.append(
            {
                "epoch": epoch + 1,
                "lr": sched.get_last_lr()[0],
                **{k: v / max(n_seen, 1) for k, v in sums.items()},
            }
        )
        atomic_save(
            {
                "format": CKPT_FORMAT,
                "config": asdict(cfg),
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": torch.get_rng_state(),
                "epochs_done": epoch + 1,
                "history": history,
                "provenance": provenance,
                "class_names": list(cache.attrs.get("class_names") or []),
                "video_ids": video_ids(cache.paths),
            },
            out,
        )
    return TrainResult(
        checkpoint=out,
        epochs_done=len(history),
        history=history,
        samples_per_s=seen / max(t_total, 1e-9),
        data_share=t_data / max(t_total, 1e-9),
    )


def encode_videos(
    aggregator: ScaleAggregator,
    features: np.ndarray,
    boxes: np.ndarray,
    device: str = "auto",
    batch: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Run a frozen aggregator over all of each video's clips in one sequence (test-time use, Sec. 4.1).

    Returns tokens (n, K, W) and cls (n, W) as float32 numpy arrays."""
    dev = resolve_device(device)
    aggregator = aggregator.to(dev).eval()
    toks, clss = [], []
    with torch.no_grad():
        for i in range(0, len(features), batch):
            f = torch.as_tensor(features[i : i + batch], device=dev)
            b = torch.as_tensor(boxes[i : i + batch], device=dev)
            t, c = aggregator(f, b)
            toks.append(t.cpu().numpy())
            clss.append(c.cpu().numpy())
    return np.concatenate(toks), np.concatenate(clss)
