"""Scores of a probe's video-level class probabilities: top-k, per family of classes, per video."""

from __future__ import annotations

from typing import Any

import numpy as np

from vcache.store import Cache


def topk_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def family_accuracy(
    probs: np.ndarray, labels: np.ndarray, class_names: list[str], families: dict[str, str] | None
) -> dict[str, dict[str, float]]:
    """Top-1 per family of classes (e.g. the synthetic set's appearance / order / motion)."""
    if not families or not class_names:
        return {}
    fam_of = np.array([families.get(name, "other") for name in class_names])
    pred = probs.argmax(1)
    out = {}
    for fam in sorted(set(fam_of.tolist())):
        sel = fam_of[labels] == fam
        if sel.any():
            out[fam] = {"top1": float((pred[sel] == labels[sel]).mean()), "n": int(sel.sum())}
    return out


def prediction_rows(cache: Cache, probs: np.ndarray) -> list[dict[str, Any]]:
    names = cache.class_names
    top = np.argsort(-probs, axis=1)[:, : min(5, probs.shape[1])]
    rows = []
    for i, path in enumerate(cache.paths):
        rows.append(
            {
                "path": path,
                "label": int(cache.labels[i]),
                "pred": int(top[i, 0]),
                "pred_name": names[top[i, 0]] if names else "",
                "score": float(probs[i, top[i, 0]]),
                "top5": " ".join(str(int(c)) for c in top[i]),
            }
        )
    return rows


def per_class_accuracy(probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, dict]:
    """Top-1 and count per class present among `labels` (keys: class names, or indices without names)."""
    pred = probs.argmax(1)
    out = {}
    for c in np.unique(labels):
        sel = labels == c
        key = class_names[c] if c < len(class_names) else str(int(c))
        out[key] = {"top1": float((pred[sel] == c).mean()), "n": int(sel.sum())}
    return out


def confusion(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(true class, predicted class) counts over the labelled videos."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (labels, probs.argmax(1)), 1)
    return m


def score(
    probs: np.ndarray, test: Cache, train: Cache
) -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
    """Top-1 / top-5 / mean-class top-1 over the labelled test videos (label -1, unknown, is predicted but not
    scored); returns (metrics, per family, per class)."""
    keep = test.labels >= 0
    p, y = probs[keep], test.labels[keep]
    metrics: dict[str, Any] = {"n_test": int(keep.sum()), "n_unlabelled_test": int((~keep).sum())}
    per_class: dict[str, Any] = {}
    if keep.any():
        names = test.class_names or train.class_names
        per_class = per_class_accuracy(p, y, names)
        top = {"top1": topk_accuracy(p, y, 1)}
        top["mean_class_top1"] = float(np.mean([v["top1"] for v in per_class.values()]))
        if probs.shape[1] > 5:  # with 5 classes or fewer top-5 is 1 by construction: not reported
            top["top5"] = topk_accuracy(p, y, 5)
        metrics = {**top, **metrics}
    families = test.attrs.get("class_families") or train.attrs.get("class_families")
    return metrics, family_accuracy(p, y, test.class_names or train.class_names, families), per_class
