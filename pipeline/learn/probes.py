"""Probes on cached features: Linear, MLP, Transformer, k-NN, and their SCALE variants (SCALE Sec. 4.1).

Readouts (SCALE Sec. 4.1, "Evaluation" and "Nonlinear baselines"):
- linear: a softmax classifier per clip; a video's prediction is the mean of its clips' softmax.
- mlp: the same with an MLP on the clip feature.
- transformer: the SCALE architecture, randomly initialised, trained supervised on all of a video's clips in
  one sequence, read out as SCALE's probes: a linear head per clip on concat(C_i, CLS), cross-entropy per
  clip, softmax averaged over the clips (Sec. 4.1; the official code's LinearOnTop).
- scale_linear (linear + aggregator): the same readout on the frozen aggregator.
- scale_ft (transformer + aggregator): the transformer probe started from the SCALE weights.

Training data: on an eval-mode train store every step sees all of a video's clips; on a train-mode store
(SCALE's 16 random crops) every step sees a random `views` of them (official protocol: 8), and testing uses
all the test store's clips. Videos labelled -1 (unknown) are left out of training and scoring and counted.
A test video that is also a train video, or that the aggregator was trained on, is refused unless
`allow_overlap`.
- knn / scale_knn: DINO-style weighted vote (see vcache.learn.knn); scale_knn uses concat(C_i, CLS)
  averaged over the clips, as the official code.

Hyper-parameters (learning rate, weight decay, epochs) are chosen on a validation part of the train split
(a stratified 20 % of the train videos by default), never on the test split; the probe is then retrained on
the whole train split with the chosen values and tested once. Cost of the selection: len(lrs) * len(wds)
runs of `epochs` epochs on 80 % of the train videos, plus one final run of the chosen number of epochs;
`selection.runs` and `selection.seconds` in the results say what it cost.
"""

from __future__ import annotations

import copy
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
from vcache.learn.probe_data import (  # noqa: F401  (load_pair: part of this module's API)
    check_overlap,
    labelled,
    load_pair,
    low_shot_indices,
    num_classes,
    protocol_warnings,
    run_name,
    train_val_split,
)
from vcache.learn.scale import encode_videos
from vcache.runtime.devices import resolve_device
from vcache.store import Cache, check_compatible, store_provenance

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
    # None: 8 random views per video per step on a train-mode train store (official protocol), all clips on
    # an eval-mode one; 0: always all clips.
    views: int | None = None
    allow_overlap: bool = False
    allow_mismatch: bool = False  # stores or aggregator of other weights / clips (never another feature dim)
    features: str = "video"  # video, audio (crops/audio of `extract --audio-backbone`) or both, concatenated

    def __post_init__(self) -> None:
        if self.features not in ("video", "audio", "both"):
            raise ValueError(f"--features {self.features!r}: choose video, audio or both")
        if self.low_shot is not None and not 0 < self.low_shot <= 1:
            raise ValueError(f"--low-shot {self.low_shot}: a fraction in (0, 1]")
        if self.views is not None and self.views < 0:
            raise ValueError(f"--views {self.views}: 0 (all) or a positive count")

    def train_views(self, train: Cache) -> int | None:
        mode = (train.attrs.get("sampling") or {}).get("mode")
        if self.views is None:
            return 8 if mode == "train" else None
        return self.views or None


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
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def run(self) -> str:
        return run_name(self.name, self.settings, self.provenance)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("predictions")
        return {"run": self.run, **d}


# -- data ------------------------------------------------------------------------------------------------
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
    mismatch = check_compatible(train.attrs, test.attrs, "train store", "test store", s.allow_mismatch)
    dev = resolve_device(s.device)
    n_cls = num_classes(train, test)
    views = s.train_views(train)
    agg_model = agg_meta = None
    name = kind
    tr_f, tr_b, te_f, te_b = train.features, train.boxes, test.features, test.boxes
    if aggregator is not None:
        agg_model, agg_meta = load_aggregator(aggregator)  # read once; every model below copies it
        mismatch += check_compatible(
            agg_meta["provenance"], train.attrs, "the aggregator's store", "the train store", s.allow_mismatch
        )
        name = "scale_linear" if kind == "linear" else "scale_ft"
    overlap = check_overlap(train, test, agg_meta, s.allow_overlap)
    precomputed = name == "scale_linear" and views is None
    if precomputed:  # the frozen readout does not change during training: compute concat(C_i, CLS) once
        tr_f = _concat_cls(agg_model, tr_f, tr_b, s.device)
        te_f = _concat_cls(agg_model, te_f, te_b, s.device)
    lrs, wds, max_ep = DEFAULT_GRIDS[kind]
    lrs, wds, max_ep = s.lrs or lrs, s.wds or wds, s.epochs or max_ep
    eval_at = tuple(sorted({max(1, round(max_ep * (i + 1) / s.eval_points)) for i in range(s.eval_points)}))

    def make_model() -> nn.Module:
        return build_head(name, tr_f.shape[-1], n_cls, s, agg_model, precomputed)

    idx = labelled(train.labels)
    if len(idx) == 0:
        raise ValueError("the train store has no labelled video (every label is -1)")
    if s.low_shot:
        idx = idx[low_shot_indices(train.labels[idx], s.low_shot, s.seed)]
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
                (fva, bva, train.labels[va_idx]), eval_at, views,
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
    fit(
        model, ftr, btr, y_all[idx], chosen["lr"], chosen["wd"], chosen["epochs"], s.batch_size, s.seed,
        views=views,
    )  # fmt: skip
    fte, bte = tensors(te_f, te_b, np.arange(len(test.labels)))
    probs = predict_proba(model, fte, bte)
    metrics, per_family, per_class = score(probs, test, train)
    metrics["n_unlabelled_train"] = int(len(train.labels) - len(labelled(train.labels)))
    selection = {
        "grid": {"lr": list(lrs), "wd": list(wds), "epochs": list(eval_at)},
        "val_videos": int(len(va_idx)),
        "train_videos": int(len(idx)),
        "train_views": views or "all",
        "table": table,
        "chosen": chosen,
        "runs": len(lrs) * len(wds) if table else 0,
        "seconds": sel_seconds,
    }
    prov = _provenance(train, test, train_path, test_path, agg_meta, aggregator)
    prov["overlap"], prov["mismatch"], prov["warnings"] = overlap, mismatch, protocol_warnings(train, test)
    if table and len(va_idx) < max(2, len(np.unique(train.labels[idx]))):
        prov["warnings"].append(
            f"the validation part holds {len(va_idx)} videos, fewer than the classes: the choice of lr, wd, "
            "epochs is noise; give one value each (--lr, --wd, --epochs)"
        )
    return ProbeResult(
        name=name,
        metrics=metrics,
        per_family=per_family,
        per_class=per_class,
        settings={**asdict(s), "probe": kind},
        selection=selection,
        provenance=prov,
        seed=s.seed,
        seconds=time.perf_counter() - t_start,
        predictions=prediction_rows(test, probs),
    )


def build_head(
    name: str,
    in_dim: int,
    n_cls: int,
    s: ProbeSettings,
    aggregator: ScaleAggregator | None,
    precomputed: bool,
) -> nn.Module:
    """The model a probe trains: per-clip heads for linear / mlp (and SCALE_linear on precomputed
    concat(C_i, CLS) rows), a SequenceHead for transformer, SCALE_ft (a copy of the loaded checkpoint's
    aggregator, so each grid run starts from its weights) and SCALE_linear on sampled views (frozen)."""
    if name == "linear" or (name == "scale_linear" and precomputed):
        return ClipHead(in_dim, n_cls, 0, s.bn)
    if name == "mlp":
        return ClipHead(in_dim, n_cls, s.hidden, s.bn)
    if name in ("scale_ft", "scale_linear"):
        agg = copy.deepcopy(aggregator)  # the self-supervised weights (and dropout, as official)
        return SequenceHead(agg, n_cls, s.bn, freeze=name == "scale_linear")
    agg = ScaleAggregator(ScaleConfig(feature_dim=in_dim, width=s.width, depth=s.depth))
    return SequenceHead(agg, n_cls, s.bn)


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
    mismatch = check_compatible(train.attrs, test.attrs, "train store", "test store", s.allow_mismatch)
    tr_f, te_f, agg_meta, name = train.features, test.features, None, "knn"
    if aggregator is not None:
        agg_model, agg_meta = load_aggregator(aggregator)
        mismatch += check_compatible(
            agg_meta["provenance"], train.attrs, "the aggregator's store", "the train store", s.allow_mismatch
        )
        name = "scale_knn"
    overlap = check_overlap(train, test, agg_meta, s.allow_overlap)
    if aggregator is not None:
        tr_f = _concat_cls(agg_model, train.features, train.boxes, s.device)
        te_f = _concat_cls(agg_model, test.features, test.boxes, s.device)
    idx = labelled(train.labels)  # unlabelled train videos cannot vote
    if len(idx) == 0:
        raise ValueError("the train store has no labelled video (every label is -1)")
    if s.low_shot:
        idx = idx[low_shot_indices(train.labels[idx], s.low_shot, s.seed)]
    use_gpu = None if s.device == "auto" else s.device == "cuda"
    # Classification always uses the mean (SCALE's code); --pool only changes the retrieval vectors.
    tr_v, te_v = center_normalize(video_vectors(tr_f[idx], "mean"), video_vectors(te_f, "mean"))
    n_cls = num_classes(train, test)
    scores, _, _ = knn_classify(tr_v, train.labels[idx], te_v, n_cls, s.k, s.temperature, use_gpu)
    probs = scores / np.maximum(scores.sum(1, keepdims=True), 1e-300)
    metrics, per_family, per_class = score(probs, test, train)
    metrics["n_unlabelled_train"] = int(len(train.labels) - len(labelled(train.labels)))
    if s.retrieval:
        q = labelled(test.labels)  # a query without a label can be neither hit nor missed
        rv_tr, rv_te = center_normalize(video_vectors(tr_f[idx], s.pool), video_vectors(te_f[q], s.pool))
        metrics.update(retrieval_recall(rv_tr, train.labels[idx], rv_te, test.labels[q], use_gpu=use_gpu))
    prov = _provenance(train, test, train_path, test_path, agg_meta, aggregator)
    prov["overlap"], prov["mismatch"], prov["warnings"] = overlap, mismatch, protocol_warnings(train, test)
    if len(idx) <= s.k:
        prov["warnings"].append(
            f"k = {s.k} neighbours but {len(idx)} labelled train videos: every query votes over all of them"
        )
    return ProbeResult(
        name=name,
        metrics=metrics,
        per_family=per_family,
        per_class=per_class,
        settings={**asdict(s), "probe": "knn"},
        selection={"note": "k-NN has no trained parameters; k and T are fixed (DINO / SCALE: 20, 0.07)"},
        provenance=prov,
        seed=s.seed,
        seconds=time.perf_counter() - t_start,
        predictions=prediction_rows(test, probs),
    )


def write_results(result: ProbeResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write `<run>.json` (metrics, settings, selection, provenance, seed) and `<run>_predictions.csv`, where
    <run> is `<name>-s<seed>-<hash of the settings, stores and aggregator>` (probe_data.run_name)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath, cpath = out / f"{result.run}.json", out / f"{result.run}_predictions.csv"
    jpath.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    with cpath.open("w", newline="") as fh:
        fields = ["path", "label", "pred", "pred_name", "score", "top5"]
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(result.predictions)
    return jpath, cpath
