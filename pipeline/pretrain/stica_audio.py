"""The audio side of end-to-end STiCA (`vcache pretrain stica --audio`): per step, each video's audio
window, its spectrogram, the ResNet-9 embedding and the cross-modal term L_va of eq. 7.

The audio window starts with the pair's visual clip (both large crops share one temporal extent, so one
window per video): start = first frame / fps. Each video's volume gain is drawn once per step from the
step's generator ("an audio augmentation a" per video, Sec. 3.4). A video without an audio stream is left
out of the cross-modal term (its visual terms stay) and counted once per video in `missing`; a step with
fewer than 2 videos with audio has no cross-modal term (the others are the negatives). Spectrograms are
made in the training process, after the decode workers (about 0.05 s a video on one core).
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

__all__ = ["AudioSide", "clip_start_s"]


def clip_start_s(result: Any) -> float:
    """Time (s) of the first frame of a decoded pair: box t0 (first / N) x frames / fps."""
    meta = result.meta
    if not meta.fps or not meta.num_frames:
        return 0.0
    return float(result.boxes[0, 0]) * meta.num_frames / meta.fps


class AudioSide(nn.Module):
    """The audio encoder and the cross-modal term of a STiCA run."""

    def __init__(self, root: str | Path, paths: list[str], base: int = 64, temperature: float = 0.1):
        super().__init__()
        self.encoder = AudioEncoder(base=base)
        self.root, self.paths = Path(root), list(paths)
        self.temperature = temperature
        self.cfg = AudioConfig()
        self.missing: set[int] = set()  # videos without an audio stream, seen so far

    def spectrograms(self, results: list[Any], rng: np.random.Generator) -> tuple[Tensor | None, list[int]]:
        """(n, 257, 199) spectrograms of the videos of `results` that have audio, and their rows."""
        specs, rows = [], []
        for row, res in enumerate(results):
            gain = volume_gain(rng, self.cfg)  # drawn for every video: the draws do not depend on audio
            spec = clip_spectrogram(str(self.root / self.paths[res.index]), clip_start_s(res), gain, self.cfg)
            if spec is None:
                self.missing.add(int(res.index))
                continue
            specs.append(spec)
            rows.append(row)
        return (torch.from_numpy(np.stack(specs)) if specs else None), rows

    def loss(
        self, head: Any, fmap1: Tensor, fmap2: Tensor, results: list[Any], rng: np.random.Generator
    ) -> Tensor | None:
        """L_va of the batch (None when fewer than 2 of its videos have audio): the head's embeddings of the
        uncropped large crops against the audio embeddings."""
        spec, rows = self.spectrograms(results, rng)
        if spec is None or len(rows) < 2:
            return None
        idx = torch.tensor(rows, device=fmap1.device)
        a = self.encoder(spec.to(fmap1.device).unsqueeze(1))
        v1 = head.project(head.embed(fmap1[idx]))
        v2 = head.project(head.embed(fmap2[idx]))
        return cross_modal_loss(v1, v2, a, self.temperature)
