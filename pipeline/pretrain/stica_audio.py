"""The audio side of end-to-end STiCA (`vcache pretrain stica --audio`): per step, each video's audio
window, its spectrogram, the ResNet-9 embedding and the cross-modal term L_va of eq. 7.

The audio window starts with the pair's visual clip (both large crops share one temporal extent, so one
window per video): start = first frame / fps. Each video's volume gain is drawn once per epoch from a
generator of (seed, epoch, video) ("an audio augmentation a" per video, Sec. 3.4), so any number of ranks
draws the same gains. A video without an audio stream is left out of the cross-modal term (its visual
terms stay) and counted once per video in `missing`, or, with ``require``, fails the run on every rank
with its name; a step whose global batch has fewer than 2 videos with audio has no cross-modal term (the
others are the negatives). Spectrograms are made in the training process, after the decode workers
(about 0.05 s a video on one core).

Under torchrun each rank embeds its own videos; the embeddings are gathered with gradient and a video's
missing audio is a mask, so every rank's tensors keep one shape and the loss equals one process's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vcache.data.audio import AudioConfig, clip_spectrogram, volume_gain
from vcache.models.audio_resnet import AudioEncoder
from vcache.pretrain.losses import cross_modal_loss
from vcache.runtime.distributed import all_gather_grad, gather_rows, sum_over_ranks, world_size

__all__ = ["AudioSide", "clip_start_s"]


def clip_start_s(result: Any) -> float:
    """Time (s) of the first frame of a decoded pair: box t0 (first / N) x frames / fps."""
    meta = result.meta
    if not meta.fps or not meta.num_frames:
        return 0.0
    return float(result.boxes[0, 0]) * meta.num_frames / meta.fps


class AudioSide(nn.Module):
    """The audio encoder and the cross-modal term of a STiCA run."""

    def __init__(
        self,
        root: str | Path,
        paths: list[str],
        base: int = 64,
        temperature: float = 0.1,
        require: bool = False,
    ):
        super().__init__()
        self.encoder = AudioEncoder(base=base)
        self.root, self.paths = Path(root), list(paths)
        self.temperature = temperature
        self.require = require
        self.cfg = AudioConfig()
        self.missing: set[int] = set()  # videos without an audio stream seen by this rank (and resumed)

    def spectrograms(
        self, videos: list[int], results: list[Any], seed: list[int]
    ) -> tuple[np.ndarray, list[int]]:
        """(k, 257, 199) spectrograms of the videos that have audio, and their rows; `seed` + [video]
        seeds each video's volume gain."""
        specs, rows = [], []
        for row, (video, res) in enumerate(zip(videos, results, strict=True)):
            gain = volume_gain(np.random.default_rng([*seed, video]), self.cfg)
            spec = clip_spectrogram(str(self.root / self.paths[video]), clip_start_s(res), gain, self.cfg)
            if spec is None:
                self.missing.add(int(video))
                continue
            specs.append(spec)
            rows.append(row)
        shape = specs[0].shape if specs else (self.cfg.n_mels, self.cfg.frames())
        return (np.stack(specs) if specs else np.zeros((0, *shape), np.float32)), rows

    def loss(
        self,
        head: Any,
        fmap1: Tensor,
        fmap2: Tensor,
        videos: list[int],
        results: list[Any],
        seed: list[int],
    ) -> Tensor | None:
        """L_va of the global batch (None when fewer than 2 of its videos have audio): the head's
        embeddings of the uncropped large crops against the audio embeddings. Under torchrun this rank's
        share, scaled so that the mean over ranks is the loss of the whole batch."""
        spec, rows = self.spectrograms(videos, results, seed)
        n, dev = len(videos), fmap1.device
        mute = [v for i, v in enumerate(videos) if i not in rows]
        have, worst = sum_over_ranks([len(rows), max(mute, default=-1) + 1])
        if self.require and worst:
            raise ValueError(
                f"{self.paths[worst - 1]} has no audio stream (--require-audio); remove it or run without "
                "--require-audio to leave such videos out of the cross-modal term"
            )
        if have < 2:
            return None
        dtype = fmap1.dtype
        a_have = self.encoder(torch.from_numpy(spec).to(dev, dtype).unsqueeze(1))  # every rank runs it
        idx = torch.tensor(rows, device=dev, dtype=torch.long)
        a = a_have.new_zeros(n, a_have.shape[1]).index_copy(0, idx, a_have)
        valid = torch.zeros(n, device=dev, dtype=dtype).index_fill(0, idx, 1.0)
        v1 = head.project(head.embed(fmap1))
        v2 = head.project(head.embed(fmap2))
        all_valid = gather_rows(valid) > 0
        gathered = [all_gather_grad(x) for x in (v1, v2, a)]
        rank = 0 if world_size() == 1 else torch.distributed.get_rank()
        loss = cross_modal_loss(
            v1, v2, a, self.temperature, *gathered, offset=rank * n, valid=valid > 0,
            all_valid=all_valid, denominator=have,
        )  # fmt: skip
        return loss * world_size()
