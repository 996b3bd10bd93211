"""Issue 14 diagnostic: does a short CVRL run teach `cvrl_r3d_narrow` anything a k-NN / linear probe can read,
beyond random init and beyond the batch-norm control (the same run at lr 0)? With a supervised upper bound.

In memory, to try many settings in minutes: every video of a `vcache synth` set is decoded once (cached
beside it as frames.npz), then each step cuts clips with the project's own CVRL pieces (clip_starts,
draw_aug / apply_aug, ProjectionHead, info_nce, AdamW with a cosine schedule as the cpu preset). Evaluation:
5 uniform clips a video at the full frame, eval-mode BN, features averaged over the clips; scikit-learn
logistic regression on standardised features, and the project's weighted k-NN (`vcache.learn.knn`: k 20,
T 0.07, cosine).

    python benchmarks/ssl_signal.py DATA --mode rand|cvrl|sup [--eval-data DATA2] [--steps 160] [--lr 1e-3]

One JSON line a run goes to benchmarks/results/ssl_signal.jsonl (--log). `--lr 0` in cvrl mode is the
batch-norm control (only the running statistics move). Figures and conclusions: docs/synth.md.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import decord
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from vcache.learn.knn import knn_classify
from vcache.models import build_backbone
from vcache.pretrain.augment import apply_aug, cvrl_settings, draw_aug
from vcache.pretrain.cvrl import ProjectionHead, clip_starts
from vcache.pretrain.losses import info_nce


def load_frames(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train videos, train labels, test videos, test labels); videos (N, T, H, W, 3) uint8."""
    cache = root / "frames.npz"
    if not cache.exists():
        lines = (root / "splits" / "classInd.txt").read_text().split("\n")
        label = {x.split()[1]: int(x.split()[0]) - 1 for x in lines if x.strip()}

        def read(name: str) -> tuple[np.ndarray, np.ndarray]:
            xs, ys = [], []
            for line in (root / "splits" / name).read_text().split("\n"):
                if line.strip():
                    rel = line.split()[0]
                    vr = decord.VideoReader(str(root / "videos" / rel))
                    xs.append(vr.get_batch(list(range(len(vr)))).asnumpy())
                    ys.append(label[rel.split("/")[0]])
            return np.stack(xs), np.array(ys)

        xtr, ytr = read("trainlist01.txt")
        xte, yte = read("testlist01.txt")
        np.savez(cache, Xtr=xtr, Ytr=ytr, Xte=xte, Yte=yte)
    d = np.load(cache)
    return d["Xtr"], d["Ytr"], d["Xte"], d["Yte"]


def knn_accuracy(ftr: np.ndarray, ytr: np.ndarray, fte: np.ndarray, yte: np.ndarray, k: int = 20) -> float:
    """The project's weighted k-NN (FAISS, DINO's vote, T 0.07) on L2-normalised vectors."""
    a = (ftr / np.linalg.norm(ftr, axis=1, keepdims=True)).astype(np.float32)
    b = (fte / np.linalg.norm(fte, axis=1, keepdims=True)).astype(np.float32)
    scores, _, _ = knn_classify(a, ytr, b, int(ytr.max()) + 1, k=k)
    return float((scores.argmax(1) == yte).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="a `vcache synth` folder to train on")
    p.add_argument("--mode", default="cvrl", help="rand (no training), cvrl, sup (supervised) [cvrl]")
    p.add_argument("--eval-data", type=Path, default=None, help="another synth folder to probe [DATA]")
    p.add_argument("--steps", type=int, default=160, help="optimiser steps [160]")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW peak lr, cosine to 0 [1e-3]")
    p.add_argument("--size", type=int, default=32, help="crop side [32]")
    p.add_argument("--frames", type=int, default=8, help="clip frames [8]")
    p.add_argument("--stride", type=int, default=2, help="frame stride [2]")
    p.add_argument("--batch", type=int, default=16, help="videos a step [16]")
    p.add_argument("--seed", type=int, default=0, help="weights and sampling seed [0]")
    p.add_argument("--jitter", type=float, default=0.5, help="colour-jitter strength [0.5, the cpu preset]")
    p.add_argument("--gray", type=float, default=0.2, help="greyscale probability [0.2]")
    p.add_argument("--area", type=float, default=0.3, help="smallest crop area [0.3]")
    p.add_argument("--noblur", action="store_true", help="no Gaussian blur")
    p.add_argument("--temp", type=float, default=0.1, help="InfoNCE temperature [0.1]")
    p.add_argument("--threads", type=int, default=1, help="torch threads [1]")
    p.add_argument("--backbone", default="cvrl_r3d_narrow", help="registry backbone [cvrl_r3d_narrow]")
    p.add_argument("--log", type=Path, default=Path(__file__).parent / "results" / "ssl_signal.jsonl")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    xtr, ytr, xte, yte = load_frames(a.data)
    n_frames = xtr.shape[1]
    torch.manual_seed(a.seed)
    bb = build_backbone(a.backbone, clip_frames=a.frames, input_size=a.size, frame_stride=a.stride)
    bb = bb.drop_unused()
    pre = bb.preprocessing
    mean = torch.tensor(pre.mean).view(3, 1, 1, 1)
    std = torch.tensor(pre.std).view(3, 1, 1, 1)
    dim = bb.feature_dim
    n_cls = int(ytr.max()) + 1
    head = ProjectionHead(dim, dim, 128, 3) if a.mode == "cvrl" else torch.nn.Linear(dim, n_cls)
    aug = cvrl_settings()
    aug = replace(
        aug,
        area=(a.area, 1.0),
        jitter=tuple(j * a.jitter for j in aug.jitter),
        blur_prob=0.0 if a.noblur else 1.0,
        gray_prob=a.gray,
    )
    span = (a.frames - 1) * a.stride + 1
    rng = np.random.default_rng(a.seed)

    def view(x: np.ndarray, start: int) -> torch.Tensor:
        idx = (start + np.arange(a.frames) * a.stride) % n_frames
        v = apply_aug(x[idx], [draw_aug(rng, aug, x.shape[1], x.shape[2])], a.size)  # (T, 3, S, S)
        return (v.permute(1, 0, 2, 3) - mean) / std

    losses: list[float] = []
    t0 = time.time()
    if a.mode in ("cvrl", "sup") and a.steps > 0:
        opt = torch.optim.AdamW([*bb.parameters(), *head.parameters()], lr=a.lr, weight_decay=1e-4)
        bb.train()
        head.train()
        for step in range(a.steps):
            for g in opt.param_groups:
                g["lr"] = a.lr * 0.5 * (1 + np.cos(np.pi * step / a.steps))
            ids = rng.choice(len(xtr), a.batch, replace=False)
            if a.mode == "cvrl":
                v1, v2 = [], []
                for i in ids:
                    s1, s2 = clip_starts(rng, n_frames, span, "decreasing")
                    v1.append(view(xtr[i], s1))
                    v2.append(view(xtr[i], s2))
                z = head(bb(torch.stack(v1 + v2))[0])
                loss = info_nce(z[: a.batch], z[a.batch :], a.temp)
            else:
                x = torch.stack([view(xtr[i], int(rng.integers(0, n_frames - span + 1))) for i in ids])
                loss = F.cross_entropy(head(bb(x)[0]), torch.from_numpy(ytr[ids]).long())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    train_s = time.time() - t0

    if a.eval_data:
        xtr, ytr, xte, yte = load_frames(a.eval_data)
        n_frames = xtr.shape[1]
    bb.eval()

    def features(videos: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for x in videos:
                clips = []
                for s in np.linspace(0, n_frames - span, 5).round().astype(int):
                    v = (
                        torch.from_numpy(x[s + np.arange(a.frames) * a.stride]).permute(3, 0, 1, 2).float()
                        / 255
                    )
                    v = F.interpolate(
                        v, size=(a.size, a.size), mode="bilinear", antialias=True, align_corners=False
                    )
                    clips.append((v - mean) / std)
                out.append(bb(torch.stack(clips))[0].mean(0))
        return torch.stack(out).numpy()

    ftr, fte = features(xtr), features(xte)
    res = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k != "log"}
    res["data"] = a.data.name
    res["eval_data"] = a.eval_data.name if a.eval_data else None
    res.update(
        loss_first=float(np.mean(losses[:10])) if losses else None,
        loss_last=float(np.mean(losses[-10:])) if losses else None,
        train_s=round(train_s, 1),
    )
    sc = StandardScaler().fit(ftr)
    lin = LogisticRegression(max_iter=2000).fit(sc.transform(ftr), ytr)
    res["linear"] = float((lin.predict(sc.transform(fte)) == yte).mean())
    res["knn"] = knn_accuracy(ftr, ytr, fte, yte)
    print(json.dumps(res), flush=True)
    a.log.parent.mkdir(parents=True, exist_ok=True)
    with a.log.open("a") as f:
        f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
