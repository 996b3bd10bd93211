"""Pretraining's clips: the video list, the clip dataset that decodes and augments views, and the sampler
that splits each global batch into equal rank slices.

Determinism. A video's views depend only on (seed, epoch, video index): the sampler yields
``(epoch, index)`` pairs and the dataset seeds a generator with them, so any number of workers or ranks,
and a resumed run, cut the same clips. The sampler splits every *global* batch into equal rank slices in
rank order, so one process with batch B and two with B/2 each see the same batches.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vcache.data.records import Reason
from vcache.data.video import VideoError, decode_frames, probe
from vcache.models import Preprocessing
from vcache.pretrain.augment import AugParams, apply_aug

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")


def list_videos(
    root: str | Path,
    fmt: str = "folder",
    annotations: str | Path | None = None,
    split: int = 1,
    subset: str = "train",
) -> list[str]:
    """Absolute paths of the videos to pretrain on (labels are not used).

    ``folder``: every video file under ``root`` (recursively; no class folders needed). Other formats go
    through :func:`vcache.data.datasets.load_manifest` (e.g. ``ucf101`` with its split lists).
    """
    root = Path(root).expanduser()
    if fmt == "folder":
        paths = sorted(
            str(p) for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTS and not p.name.startswith(".")
        )
    else:
        from vcache.data.datasets import load_manifest

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

    def __init__(
        self,
        paths: Sequence[str],
        plan: PlanFn,
        preprocessing: Preprocessing,
        seed: int,
        timeout_s: float = 300.0,
    ) -> None:
        self.paths = list(paths)
        self.timeout_s = float(timeout_s)
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
                return with_deadline(lambda i=i: self._views(epoch, i), self.timeout_s, self.paths[i])
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


def with_deadline(fn: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """fn() in a helper thread; a VideoError when it has not returned within `timeout_s` (a video whose
    decoder hangs, e.g. on a named pipe or a stalled network file, is then skipped as unreadable instead of
    stalling this rank until the collective's watchdog aborts every rank). The hung thread is a daemon and
    is abandoned: Python cannot stop a thread blocked in C code."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["out"] = fn()
        except BaseException as e:  # noqa: BLE001  (handed to the caller)
            box["err"] = e

    t = threading.Thread(target=run, daemon=True, name=f"decode {what}")
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise VideoError(Reason.TIMED_OUT, f"no result after {timeout_s:g} s")
    if "err" in box:
        raise box["err"]
    return box["out"]


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
