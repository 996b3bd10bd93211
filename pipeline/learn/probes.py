"""Probes on cached features: Linear, MLP, Transformer, k-NN, and their SCALE variants (SCALE Sec. 4.1).

Readouts (SCALE Sec. 4.1, "Evaluation" and "Nonlinear baselines"):
- linear: a softmax classifier per clip; a video's prediction is the mean of its clips' softmax.
- mlp: the same with an MLP on the clip feature.
- transformer: the SCALE architecture, randomly initialised, trained supervised on all of a video's clips in
  one sequence, with a linear head on the CLS output (the paper does not say which output the head reads;
  CLS is our choice).
- scale_linear (linear + aggregator): linear head on concat(clip feature C_i, CLS), softmax averaged.
- scale_ft (transformer + aggregator): the transformer probe started from the SCALE weights.
- knn / scale_knn: DINO-style weighted vote (see vcache.learn.knn); scale_knn uses concat(C_i, CLS)
  averaged over the clips, as the official code.

Hyper-parameters (learning rate, weight decay, epochs) are chosen on a validation part of the train split
(a stratified 20 % of the train videos by default), never on the test split; the probe is then retrained on
the whole train split with the chosen values and tested once. Cost of the selection: len(lrs) * len(wds)
runs of `epochs` epochs on 80 % of the train videos, plus one final run of the chosen number of epochs;
`selection.runs` and `selection.seconds` in the results say what it cost.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vcache.learn.aggregator import ScaleAggregator, ScaleConfig
from vcache.learn.checkpoints import load_aggregator
from vcache.learn.heads import ClipHead, SequenceHead, fit, predict_proba
from vcache.learn.knn import center_normalize, knn_classify, retrieval_recall, video_vectors
from vcache.learn.metrics import prediction_rows, score
from vcache.learn.scale import encode_videos
from vcache.runtime.devices import resolve_device
from vcache.store import Cache, StoreError, check_compatible, load_cache, store_provenance

# Default grids per probe: (learning rates, weight decays, max epochs). Our choice; the paper grid-searched
# lr, wd, batch size and optimizer without listing the values. We fix AdamW and 128 videos a batch.
DEFAULT_GRIDS: dict[str, tuple[tuple[float, ...], tuple[float, ...], int]] = {
    "linear": ((1e-3, 1e-2), (0.0, 1e-4), 100),
    "mlp": ((3e-4, 1e-3), (1e-4, 1e-2), 100),
    "transformer": ((1e-4, 3e-4), (0.05,), 100),
}


@dataclass
class ProbeSettings:
    """Everything that shapes a probe's result; saved with it."""

    bn: bool = False  # BatchNorm without affine parameters before the head (SCALE: for VideoMAE features)
    low_shot: float | None = None  # train on a class-balanced fraction of the train videos (SCALE Table 7)
    seed: int = 0
    lrs: tuple[float, ...] | None = None  # None: DEFAULT_GRIDS
    wds: tuple[float, ...] | None = None
    epochs: int | None = None  # the largest epoch count tried; checked every `epochs // eval_points`
    eval_points: int = 10
    val_fraction: float = 0.2
    batch_size: int = 128  # videos a step
    hidden: int = 512  # MLP hidden width (paper silent)
    width: int = 256  # transformer baseline width / depth (the SCALE default, Table 10)
    depth: int = 2
    device: str = "auto"
    # k-NN
    k: int = 20
    temperature: float = 0.07
    pool: str = "mean"
    retrieval: bool = False


@dataclass
class ProbeResult:
    name: str
    metrics: dict[str, float]
    per_family: dict[str, dict[str, float]]
    settings: dict[str, Any]
    selection: dict[str, Any]
    provenance: dict[str, Any]
    seed: int
    seconds: float
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("predictions")
        return d


# -- data ------------------------------------------------------------------------------------------------
def load_pair(train_path: str | Path, test_path: str | Path) -> tuple[Cache, Cache]:
    """Load a train and a test store, refusing features of different backbones or preprocessing."""
    train, test = load_cache(train_path), load_cache(test_path)
    check_compatible(train.attrs, test.attrs, f"train store {train_path}", f"test store {test_path}")
    if train.class_names and test.class_names and train.class_names != test.class_names:
        raise StoreError("train and test stores have different class_names")
    return train, test


def num_classes(train: Cache, test: Cache) -> int:
    names = train.class_names or test.class_names
    top = int(max(train.labels.max(), test.labels.max())) + 1
    return max(len(names), top)


def low_shot_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A class-balanced subset: round(fraction * n_c) videos of each class c, at least one (SCALE Table 7)."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.append(rng.choice(idx, size=max(1, round(fraction * len(idx))), replace=False))
    return np.sort(np.concatenate(keep))


def train_val_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of the train videos (whole videos, so no clip of a val video is trained on)."""
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(fraction * len(idx))) if len(idx) > 1 else 0
        va.append(idx[:n_val])
        tr.append(idx[n_val:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


def _provenance(train: Cache, test: Cache, train_path, test_path, agg_meta, agg_path) -> dict[str, Any]:
    prov = {
        "train": store_provenance(train.attrs, train_path),
        "test": store_provenance(test.attrs, test_path),
    }
    if agg_meta is not None:
        prov["aggregator"] = {
            "path": str(agg_path) if agg_path else None,
            "config": agg_meta["config"],
            "epochs_done": agg_meta["epochs_done"],
            "store": agg_meta["provenance"],
        }
    return prov


# -- classifier probes ------------------------------------------------------------------------------------
def run_probe(
    kind: str,
    train: Cache,
    test: Cache,
    settings: ProbeSettings | None = None,
    aggregator: str | Path | None = None,
    train_path: str | Path | None = None,
    test_path: str | Path | None = None,
) -> ProbeResult:
    """Train and test one classifier probe: kind in linear, mlp, transformer (with `aggregator`: SCALE_linear
    for linear, SCALE_ft for transformer). Selection on a validation part of train, then one final run."""
    s = settings or ProbeSettings()
    if kind not in DEFAULT_GRIDS:
        raise ValueError(f"unknown probe {kind!r}; one of {', '.join(DEFAULT_GRIDS)}")
    if aggregator is not None and kind == "mlp":
        raise ValueError("--aggregator works with linear (SCALE_linear), transformer (SCALE_ft) and knn")
    t_start = time.perf_counter()
    check_compatible(train.attrs, test.attrs, "train store", "test store")
    dev = resolve_device(s.device)
    n_cls = num_classes(train, test)
    agg_meta = None
    name = kind
    tr_f, tr_b, te_f, te_b = train.features, train.boxes, test.features, test.boxes
    if aggregator is not None:
        agg_model, agg_meta = load_aggregator(aggregator)
        check_compatible(agg_meta["provenance"], train.attrs, "the aggregator's store", "the train store")
        if kind == "linear":  # SCALE_linear: frozen aggregator, linear head on concat(C_i, CLS)
            name = "scale_linear"
            tr_f = _concat_cls(agg_model, tr_f, tr_b, s.device)
            te_f = _concat_cls(agg_model, te_f, te_b, s.device)
        else:
            name = "scale_ft"
    lrs, wds, max_ep = DEFAULT_GRIDS[kind]
    lrs, wds, max_ep = s.lrs or lrs, s.wds or wds, s.epochs or max_ep
    eval_at = tuple(sorted({max(1, round(max_ep * (i + 1) / s.eval_points)) for i in range(s.eval_points)}))

    def make_model() -> nn.Module:
        d = tr_f.shape[-1]
        if kind == "linear":
            return ClipHead(d, n_cls, 0, s.bn)
        if kind == "mlp":
            return ClipHead(d, n_cls, s.hidden, s.bn)
        if agg_meta is not None:  # SCALE_ft: start from the self-supervised weights
            agg, _ = load_aggregator(aggregator)
        else:
            agg = ScaleAggregator(ScaleConfig(feature_dim=d, width=s.width, depth=s.depth))
        return SequenceHead(agg, n_cls, s.bn)

    idx = np.arange(len(train.labels))
    if s.low_shot:
        idx = low_shot_indices(train.labels, s.low_shot, s.seed)
    tr_idx, va_idx = train_val_split(train.labels[idx], s.val_fraction, s.seed)
    tr_idx, va_idx = idx[tr_idx], idx[va_idx]

    def tensors(f: np.ndarray, b: np.ndarray, rows: np.ndarray):
        return torch.as_tensor(f[rows], device=dev), torch.as_tensor(b[rows], device=dev)

    y_all = torch.as_tensor(train.labels, device=dev)
    t_sel = time.perf_counter()
    table: list[dict[str, float]] = []
    if len(va_idx) > 0 and len(lrs) * len(wds) * len(eval_at) > 1:
        ftr, btr = tensors(tr_f, tr_b, tr_idx)
        fva, bva = tensors(tr_f, tr_b, va_idx)
        for run, (lr, wd) in enumerate((lr, wd) for lr in lrs for wd in wds):
            torch.manual_seed(s.seed + run)
            accs = fit(
                make_model().to(dev), ftr, btr, y_all[tr_idx], lr, wd, max_ep, s.batch_size, s.seed,
                (fva, bva, train.labels[va_idx]), eval_at,
            )  # fmt: skip
            table += [{"lr": lr, "wd": wd, "epochs": ep, "val_top1": a} for ep, a in accs.items()]
        best = max(table, key=lambda r: (r["val_top1"], -r["epochs"]))  # ties: fewer epochs, earlier grid
        chosen = {"lr": best["lr"], "wd": best["wd"], "epochs": int(best["epochs"])}
    else:
        chosen = {"lr": lrs[0], "wd": wds[0], "epochs": max_ep}
    sel_seconds = time.perf_counter() - t_sel

    torch.manual_seed(s.seed)
    model = make_model().to(dev)
    ftr, btr = tensors(tr_f, tr_b, idx)
    fit(model, ftr, btr, y_all[idx], chosen["lr"], chosen["wd"], chosen["epochs"], s.batch_size, s.seed)
    fte, bte = tensors(te_f, te_b, np.arange(len(test.labels)))
    probs = predict_proba(model, fte, bte)
    metrics, per_family = score(probs, test, train)
    selection = {
        "grid": {"lr": list(lrs), "wd": list(wds), "epochs": list(eval_at)},
        "val_videos": int(len(va_idx)),
        "train_videos": int(len(idx)),
        "table": table,
        "chosen": chosen,
        "runs": len(lrs) * len(wds) if table else 0,
        "seconds": sel_seconds,
    }
    return ProbeResult(
        name=name,
        metrics=metrics,
        per_family=per_family,
        settings={**asdict(s), "probe": kind},
        selection=selection,
        provenance=_provenance(train, test, train_path, test_path, agg_meta, aggregator),
        seed=s.seed,
        seconds=time.perf_counter() - t_start,
        predictions=prediction_rows(test, probs),
    )


def _concat_cls(agg: ScaleAggregator, feats: np.ndarray, boxes: np.ndarray, device: str) -> np.ndarray:
    """concat(C_i, CLS) per clip: (n, K, D + W), the input of SCALE_linear and SCALE_k-NN (SCALE Sec. 4.1)."""
    _, cls = encode_videos(agg, feats, boxes, device)
    return np.concatenate(
        [feats, np.broadcast_to(cls[:, None, :], (*feats.shape[:2], cls.shape[1]))], axis=-1
    )


# -- k-NN ------------------------------------------------------------------------------------------------
def run_knn(
    train: Cache,
    test: Cache,
    settings: ProbeSettings | None = None,
    aggregator: str | Path | None = None,
    train_path: str | Path | None = None,
    test_path: str | Path | None = None,
) -> ProbeResult:
    """k-NN (or SCALE_k-NN with an aggregator) and, with settings.retrieval, Recall@1/5/20."""
    s = settings or ProbeSettings()
    t_start = time.perf_counter()
    check_compatible(train.attrs, test.attrs, "train store", "test store")
    tr_f, te_f, agg_meta, name = train.features, test.features, None, "knn"
    if aggregator is not None:
        agg_model, agg_meta = load_aggregator(aggregator)
        check_compatible(agg_meta["provenance"], train.attrs, "the aggregator's store", "the train store")
        tr_f = _concat_cls(agg_model, train.features, train.boxes, s.device)
        te_f = _concat_cls(agg_model, test.features, test.boxes, s.device)
        name = "scale_knn"
    idx = np.arange(len(train.labels))
    if s.low_shot:
        idx = low_shot_indices(train.labels, s.low_shot, s.seed)
    use_gpu = None if s.device == "auto" else s.device == "cuda"
    # Classification always uses the mean (SCALE's code); --pool only changes the retrieval vectors.
    tr_v, te_v = center_normalize(video_vectors(tr_f[idx], "mean"), video_vectors(te_f, "mean"))
    n_cls = num_classes(train, test)
    scores, _, _ = knn_classify(tr_v, train.labels[idx], te_v, n_cls, s.k, s.temperature, use_gpu)
    probs = scores / np.maximum(scores.sum(1, keepdims=True), 1e-300)
    metrics, per_family = score(probs, test, train)
    if s.retrieval:
        rv_tr, rv_te = center_normalize(video_vectors(tr_f[idx], s.pool), video_vectors(te_f, s.pool))
        metrics.update(retrieval_recall(rv_tr, train.labels[idx], rv_te, test.labels, use_gpu=use_gpu))
    return ProbeResult(
        name=name,
        metrics=metrics,
        per_family=per_family,
        settings={**asdict(s), "probe": "knn"},
        selection={"note": "k-NN has no trained parameters; k and T are fixed (DINO / SCALE: 20, 0.07)"},
        provenance=_provenance(train, test, train_path, test_path, agg_meta, aggregator),
        seed=s.seed,
        seconds=time.perf_counter() - t_start,
        predictions=prediction_rows(test, probs),
    )


def write_results(result: ProbeResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write `<name>.json` (metrics, settings, selection, provenance, seed) and `<name>_predictions.csv`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath, cpath = out / f"{result.name}.json", out / f"{result.name}_predictions.csv"
    jpath.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    with cpath.open("w", newline="") as fh:
        fields = ["path", "label", "pred", "pred_name", "score", "top5"]
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(result.predictions)
    return jpath, cpath
