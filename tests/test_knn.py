"""FAISS k-NN against a brute-force numpy reference: same neighbours, votes and recalls."""

from __future__ import annotations

import numpy as np
import pytest

from vcache.learn.knn import (
    center_normalize,
    knn_classify,
    retrieval_recall,
    search,
    video_vectors,
    weighted_vote,
)


def _data(seed: int = 0, n_train: int = 300, n_test: int = 40, d: int = 24, c: int = 7):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((c, d))
    ytr, yte = rng.integers(0, c, n_train), rng.integers(0, c, n_test)
    tr = centers[ytr] + rng.standard_normal((n_train, d))
    te = centers[yte] + rng.standard_normal((n_test, d))
    tr, te = center_normalize(tr, te)
    return tr, ytr, te, yte, c


def _ref_knn(tr, ytr, te, c, k, t):
    """DINO's eval_knn vote written with numpy: full similarity matrix, argsort, exp(sim / T) per class."""
    sims = te.astype(np.float64) @ tr.astype(np.float64).T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    scores = np.zeros((len(te), c))
    for q in range(len(te)):
        for j in idx[q]:
            scores[q, ytr[j]] += np.exp(sims[q, j] / t)
    return scores, idx


def test_faiss_knn_equals_numpy_brute_force():
    tr, ytr, te, _, c = _data()
    scores, sims, idx = knn_classify(tr, ytr, te, c, k=20, temperature=0.07)
    ref_scores, ref_idx = _ref_knn(tr, ytr, te, c, 20, 0.07)
    assert idx.shape == (len(te), 20)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, np.take_along_axis(te @ tr.T, ref_idx, 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4)
    np.testing.assert_array_equal(scores.argmax(1), ref_scores.argmax(1))


def test_weighted_vote_by_hand():
    sims = np.array([[0.9, 0.5, 0.1]])
    idx = np.array([[2, 0, 1]])
    labels = np.array([1, 0, 1])
    got = weighted_vote(sims, idx, labels, 3, temperature=0.5)
    want = np.array([[np.exp(0.2), np.exp(1.8) + np.exp(1.0), 0.0]])  # train 2, 0 are class 1; 1 is class 0
    np.testing.assert_allclose(got, want)


def test_retrieval_recall_equals_reference():
    tr, ytr, te, yte, _ = _data(seed=1)
    got = retrieval_recall(tr, ytr, te, yte, ks=(1, 5, 20))
    order = np.argsort(-(te @ tr.T), axis=1)
    for k in (1, 5, 20):
        want = np.mean([(ytr[order[q, :k]] == yte[q]).any() for q in range(len(te))])
        assert got[f"R@{k}"] == pytest.approx(want)
    assert got["R@1"] <= got["R@5"] <= got["R@20"]


def test_video_vectors_and_centering():
    rng = np.random.default_rng(2)
    f = rng.standard_normal((10, 4, 6)) + 5.0
    np.testing.assert_allclose(video_vectors(f, "mean"), f.mean(1))
    np.testing.assert_allclose(video_vectors(f, "max"), f.max(1))
    with pytest.raises(ValueError):
        video_vectors(f, "median")
    tr, te = center_normalize(f.mean(1), f[:3].mean(1))
    np.testing.assert_allclose(np.linalg.norm(tr, axis=1), 1.0, rtol=1e-5)
    # centring removes the shared +5 offset: the raw vectors are all nearly parallel, the centred ones not
    assert np.abs(tr @ tr.T - np.eye(10)).max() < 0.99


def test_search_caps_k_at_train_size():
    tr, _, te, _, _ = _data(n_train=5)
    sims, idx = search(tr, te, 20)
    assert idx.shape == (len(te), 5)
