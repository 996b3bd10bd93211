"""Audio features beside the video features (`vcache extract --audio-backbone`, issue 17).

After the video pass, each row of a store gets the embedding of its clip's audio: the 1-second window that
starts with the row's first frame (`crops/start_s`; the window STiCA trains on, `vcache.data.audio`) as a
257 x 199 log-mel spectrogram, through the ResNet-9 audio encoder of a `vcache pretrain stica --audio` run
(its `<checkpoint>.state` file, key ``audio``). The stored feature is the encoder's average-pooled
representation (512-d at the paper's width, ``8 x audio_base``), before the projection head, as the video
features are the trunk's pooled output. No volume jitter at extraction (gain 1).

Written to `crops/audio` (rows x D_a, the features' dtype) with the store attribute ``audio_backbone``
(the state file, its width, the rows without audio). A row of a video without an audio stream is NaN and
the video is counted. Rows of pending or failed videos stay NaN. The array is not part of a shard's digest
(`verify` checks its shape). Rerunning with the same state file rewrites the array.

`vcache probe ... --features audio|both` reads it (`vcache.store.cache.load_cache`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vcache.data.audio import AudioConfig, clip_audios, log_mel
from vcache.data.records import DONE
from vcache.store.format import open_store

__all__ = ["AUDIO_ARRAY", "add_audio_features", "load_audio_encoder"]

AUDIO_ARRAY = "crops/audio"


def load_audio_encoder(state_file: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The ResNet-9 (average-pooled trunk, no projection) of a `pretrain stica --audio` run's state file,
    in eval mode, and a description for the store's attributes."""
    from vcache.models.audio_resnet import AudioEncoder

    path = Path(state_file)
    if not path.exists():
        raise ValueError(
            f"--audio-backbone {path}: no such file (the .state file of `pretrain stica --audio`)"
        )
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or not state.get("audio"):
        raise ValueError(
            f"--audio-backbone {path}: holds no audio encoder (pass the .state file of a "
            "`vcache pretrain stica --audio` run)"
        )
    cfg = state.get("config", {})
    base = int(cfg.get("audio_base", 64))
    weights = {k[len("encoder.") :]: v for k, v in state["audio"].items() if k.startswith("encoder.")}
    encoder = AudioEncoder(base=base)
    encoder.load_state_dict(weights)
    encoder.eval()
    info = {
        "state_file": str(path),
        "audio_base": base,
        "dim": 8 * base,
        "epochs_done": int(state.get("epochs_done", 0)),
        "input": "log-mel 257 x 199 of the 1-s window starting at the row's first frame",
    }
    return encoder.trunk, info


def _row_starts(starts: np.ndarray | None, meta: tuple[float, int], boxes: np.ndarray) -> np.ndarray:
    """Start time (s) of each row's first frame: `crops/start_s` (`starts`), or from the box (schema 1)."""
    if starts is not None and np.isfinite(starts).all():
        return starts
    fps, n = meta
    return boxes[:, 0].astype(np.float64) * n / fps if fps else np.zeros(len(boxes))


@torch.no_grad()
def add_audio_features(
    store_path: str | Path,
    state_file: str | Path,
    device: str = "cpu",
    batch: int = 32,
    progress: Callable[[int], None] | None = None,
    encoder: tuple[torch.nn.Module, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write `crops/audio` for every done video of the store at `store_path`. Returns the attribute
    written under ``audio_backbone`` (with ``no_audio_videos``, the videos without an audio stream).
    ``encoder``: what `load_audio_encoder(state_file)` returned, when the caller already loaded it."""
    trunk, info = encoder if encoder is not None else load_audio_encoder(state_file)
    trunk = trunk.to(device)
    st = open_store(store_path, mode="r+")
    g = st.group
    n_rows = g["crops/features"].shape[0]
    dtype = g["crops/features"].dtype
    feats = g["crops/features"]
    if "audio" in g["crops"]:
        del g[AUDIO_ARRAY]
    out = g["crops"].create_array(
        "audio",
        shape=(n_rows, info["dim"]),
        dtype=dtype,
        chunks=(min(n_rows, max(1, feats.chunks[0])), info["dim"]),
        fill_value=float("nan"),
    )
    status = st.status()
    starts, counts = st.row_spans()
    paths = st.paths()
    root = Path(str(st.attrs.get("video_root", "")))
    fps = g["videos/fps"][:]
    num_frames = g["videos/num_frames"][:]
    cfg = AudioConfig()
    mute: list[str] = []
    for s in range(st.n_shards):
        vids = st.shard_videos(s)
        done = [i for i in vids if status[i] == DONE and counts[i] > 0]
        if not done:
            continue
        r0 = int(min(starts[i] for i in done))
        r1 = int(max(starts[i] + counts[i] for i in done))
        block = np.full((r1 - r0, info["dim"]), np.nan, dtype=np.float32)
        boxes = g["crops/boxes"][r0:r1]
        times_s = np.asarray(g["crops/start_s"][r0:r1], np.float64) if st.has_times else None  # one read
        specs, where = [], []
        for i in done:
            a, b = int(starts[i]), int(starts[i] + counts[i])
            own = None if times_s is None else times_s[a - r0 : b - r0]
            times = _row_starts(own, (float(fps[i]), int(num_frames[i])), boxes[a - r0 : b - r0])
            video = str(root / paths[i])
            windows = clip_audios(video, times, cfg)  # the track decoded once a video
            if windows is None:
                mute.append(paths[i])
            else:
                specs += [log_mel(w, cfg) for w in windows]
                where += list(range(a - r0, b - r0))
            if progress is not None:
                progress(1)
        for j in range(0, len(specs), batch):
            x = torch.from_numpy(np.stack(specs[j : j + batch])).unsqueeze(1).to(device)
            block[where[j : j + batch]] = trunk(x).float().cpu().numpy()
        out[r0:r1] = block.astype(dtype)
    info = {**info, "no_audio_videos": len(mute), "no_audio_examples": mute[:5]}
    st.update_attrs(audio_backbone=info)
    return info
