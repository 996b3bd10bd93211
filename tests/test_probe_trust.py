"""Tests that fail when a probe's method breaks: the SCALE readouts, checkpoint loading, k-NN centring and
retrieval scoring, unlabelled videos, overlap refusal, per-run result names and the train-mode protocol."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from stage2_helpers import TINY_SCALE, make_store

from vcache.learn.aggregator import ScaleConfig
from vcache.learn.checkpoints import load_aggregator, load_checkpoint
from vcache.learn.heads import SequenceHead, sample_views
from vcache.learn.knn import center_normalize, knn_classify, retrieval_recall
from vcache.learn.metrics import topk_accuracy
from vcache.learn.probes import ProbeSettings, _concat_cls, build_head, run_knn, run_probe, write_results
from vcache.learn.scale import train_scale
from vcache.store import StoreError, load_cache

SMALL = TINY_SCALE
FAST = {"width": 32, "depth": 2, "device": "cpu", "batch_size": 16, "eval_points": 1}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("trust")
    paths = {
        "ssl": make_store(d / "ssl.zarr", n_videos=32, crops=16, mode="train", seed=0),
        "train": make_store(d / "train.zarr", n_videos=48, crops=6, mode="eval", seed=2),
        "test": make_store(d / "test.zarr", n_videos=24, crops=6, mode="eval", seed=1),
    }
    train_scale(
        load_cache(paths["ssl"]), ScaleConfig(feature_dim=16, epochs=2, **SMALL), d / "a.pt", device="cpu"
    )
    paths["ckpt"] = d / "a.pt"
    return paths


def test_load_aggregator_returns_the_trained_weights(stores):
    ckpt = load_checkpoint(stores["ckpt"])
    agg, meta = load_aggregator(stores["ckpt"])
    saved = {k[len("aggregator.") :]: v for k, v in ckpt["model"].items() if k.startswith("aggregator.")}
    state = agg.state_dict()
    assert set(saved) == set(state)
    for k, v in saved.items():
        assert torch.equal(state[k], v), k
    assert meta["epochs_done"] == 2 and len(meta["video_ids"]) == 32


def test_scale_ft_starts_from_the_checkpoint_and_reads_out_clip_and_cls(stores):
    ckpt = load_checkpoint(stores["ckpt"])
    loaded, _ = load_aggregator(stores["ckpt"])
    first = build_head("scale_ft", 16, 4, ProbeSettings(), loaded, precomputed=False)
    with torch.no_grad():  # fine-tuning one grid run's model must not move the next run's start
        for p in first.aggregator.parameters():
            p.add_(1.0)
    head = build_head("scale_ft", 16, 4, ProbeSettings(), loaded, precomputed=False)
    assert isinstance(head, SequenceHead) and not head.freeze
    for k, v in head.aggregator.state_dict().items():
        assert torch.equal(v, ckpt["model"][f"aggregator.{k}"]), k
    assert head.head.in_features == 16 + 32  # concat(C_i, CLS)
    f, b = torch.randn(3, 5, 16), torch.rand(3, 5, 6)
    assert head.eval()(f, b).shape == (3, 5, 4)  # one row of logits per clip, softmax averaged later
    rand = build_head("transformer", 16, 4, ProbeSettings(width=32), None, precomputed=False)
    assert rand.head.in_features == 16 + 32 and not rand.freeze


def test_scale_linear_reads_the_clip_feature_and_the_cls_token(stores):
    """The frozen readout is concat(C_i, CLS) with CLS from the aggregator over all of the video's clips;
    the precomputed path (_concat_cls) and the on-the-fly path (SequenceHead, freeze) agree."""
    agg, _ = load_aggregator(stores["ckpt"])
    cache = load_cache(stores["test"])
    f, b = torch.as_tensor(cache.features[:4]), torch.as_tensor(cache.boxes[:4])
    with torch.no_grad():
        _, cls = agg.eval()(f, b)
    expect = torch.cat([f, cls[:, None].expand(-1, f.shape[1], -1)], dim=-1)
    pre = _concat_cls(agg, cache.features[:4], cache.boxes[:4], "cpu")
    assert np.allclose(pre, expect.numpy(), atol=1e-5)
    assert np.abs(pre[..., 16:]).min() > 0  # the CLS half carries the token, not zeros
    frozen = build_head("scale_linear", 16, 4, ProbeSettings(), agg, precomputed=False)
    assert frozen.freeze and not any(p.requires_grad for p in frozen.aggregator.parameters())
    assert torch.allclose(frozen.train().readout(f, b), expect, atol=1e-5)  # train(): aggregator stays eval


def test_sampled_views_come_from_each_videos_own_crops():
    f = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 16, 1).expand(-1, -1, 3).contiguous()
    b = f[..., :1].expand(-1, -1, 6).contiguous()
    sf, sb = sample_views(f, b, 8, torch.Generator().manual_seed(0))
    assert sf.shape == (2, 8, 3) and sb.shape == (2, 8, 6)
    for v in range(2):
        rows = sf[v, :, 0].long().tolist()
        assert len(set(rows)) == 8 and all(16 * v <= r < 16 * (v + 1) for r in rows)
        assert torch.equal(sb[v, :, 0], sf[v, :, 0])  # boxes follow their features


def test_a_train_mode_store_trains_on_8_random_views(stores):
    ssl, test = load_cache(stores["ssl"]), load_cache(stores["test"])
    s = ProbeSettings(lrs=(3e-3,), wds=(0.0,), epochs=2, **FAST)
    res = run_probe("transformer", ssl, test, s)
    assert res.selection["train_views"] == 8
    res = run_probe("linear", ssl, test, dataclasses.replace(s, views=0))
    assert res.selection["train_views"] == "all"
    assert run_probe("linear", load_cache(stores["train"]), test, s).selection["train_views"] == "all"


def test_knn_centres_train_and_test_on_the_train_mean():
    rng = np.random.default_rng(0)
    tr, te = rng.normal(3.0, 1.0, (10, 4)), rng.normal(3.0, 1.0, (5, 4))
    a, b = center_normalize(tr, te)
    mu = tr.mean(0)
    ref = (te - mu) / np.linalg.norm(te - mu, axis=1, keepdims=True)
    assert np.allclose(b, ref, atol=1e-6) and np.allclose(a[0], (tr[0] - mu) / np.linalg.norm(tr[0] - mu))


def test_retrieval_recall_counts_exact_hits():
    """50 classes, one train video each; queries 0-24 sit next to their own class, 25-49 next to the class
    after theirs: R@1 is exactly 0.5 (a random ranking gives about 0.02), R@2 is 1."""
    eye = np.eye(50, dtype=np.float32)
    labels = np.arange(50)
    queries = eye.copy()
    queries[25:] = eye[(labels[25:] + 1) % 50] + 0.5 * eye[25:]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    r = retrieval_recall(eye, labels, queries, labels, ks=(1, 2, 5))
    assert r == {"R@1": 0.5, "R@2": 1.0, "R@5": 1.0}
    scores, _, _ = knn_classify(eye, labels, queries, 50, k=1)
    assert (scores.argmax(1)[:25] == labels[:25]).all()


def test_topk_with_more_classes_than_k():
    probs = np.array([[0.3, 0.25, 0.2, 0.1, 0.08, 0.04, 0.03], [0.3, 0.25, 0.2, 0.1, 0.08, 0.04, 0.03]])
    labels = np.array([4, 5])  # 5th and 6th most likely
    assert topk_accuracy(probs, labels, 1) == 0.0
    assert topk_accuracy(probs, labels, 5) == 0.5


def _unlabel(cache, every: int):
    labels = cache.labels.copy()
    labels[::every] = -1
    return dataclasses.replace(cache, labels=labels)


def test_unlabelled_videos_are_left_out_of_training_and_scoring(stores):
    train, test = load_cache(stores["train"]), load_cache(stores["test"])
    tr_u, te_u = _unlabel(train, 4), _unlabel(test, 3)
    knn = run_knn(tr_u, te_u, ProbeSettings(device="cpu", retrieval=True))
    assert knn.metrics["n_unlabelled_train"] == 12 and knn.metrics["n_unlabelled_test"] == 8
    assert knn.metrics["n_test"] == 16 and len(knn.predictions) == 24  # predicted, not scored
    keep = tr_u.labels >= 0
    only = dataclasses.replace(
        train, features=train.features[keep], boxes=train.boxes[keep], labels=train.labels[keep],
        paths=[p for p, k in zip(train.paths, keep, strict=True) if k],
    )  # fmt: skip
    ref = run_knn(only, te_u, ProbeSettings(device="cpu", retrieval=True))
    assert knn.metrics["top1"] == ref.metrics["top1"] and knn.metrics["R@1"] == ref.metrics["R@1"]
    assert [r["pred"] for r in knn.predictions] == [r["pred"] for r in ref.predictions]
    lin = run_probe("linear", tr_u, te_u, ProbeSettings(lrs=(1e-2,), wds=(0.0,), epochs=3, **FAST))
    assert lin.selection["train_videos"] == 36 and lin.metrics["n_test"] == 16


def test_overlapping_train_and_test_videos_are_refused(stores, tmp_path):
    train, test = load_cache(stores["train"]), load_cache(stores["test"])
    s = ProbeSettings(device="cpu")
    with pytest.raises(StoreError, match="allow-overlap"):
        run_knn(train, train, s)
    assert run_knn(train, train, dataclasses.replace(s, allow_overlap=True)).provenance["overlap"] == {
        "train_test": 48
    }
    seen = load_cache(make_store(tmp_path / "seen.zarr", n_videos=24, crops=6, mode="eval", seed=0))
    with pytest.raises(StoreError, match="aggregator was trained on 24"):  # the SSL store's videos
        run_knn(train, seen, s, stores["ckpt"])
    assert run_knn(train, test, s, stores["ckpt"]).provenance["overlap"]["aggregator_test"] == 0


def test_result_files_are_named_per_run(stores, tmp_path):
    train, test = load_cache(stores["train"]), load_cache(stores["test"])
    runs = [run_knn(train, test, ProbeSettings(device="cpu", k=k)) for k in (5, 20, 20)]
    for r in runs:
        write_results(r, tmp_path)
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert len(names) == 2 and all(n.startswith("knn-s0-") for n in names)  # same run: same file
    assert runs[1].run == runs[2].run != runs[0].run


def _attrs(sha="0" * 64, seed=None, frames=16, dim=16, mode="eval"):
    pre = {"mean": [0.5] * 3, "std": [0.25] * 3, "input_size": 64, "clip_frames": 16, "frame_stride": 2}
    bb = {"name": "r3d", "checkpoint_sha256": sha, "feature_dim": dim, "preprocessing": pre}
    if seed is not None:
        bb["init_seed"] = seed
    sampling = {"mode": mode, "clip_frames": frames, "frame_stride": 2, "input_size": 64}
    return {"backbone": bb, "sampling": sampling, "feature_dim": dim}


def test_one_compatibility_rule_for_weights_clips_and_dims():
    from vcache.store import check_compatible

    rand = _attrs(sha=None, seed=0)
    assert check_compatible(rand, _attrs(sha=None, seed=0, mode="train")) == []  # mode may differ
    with pytest.raises(StoreError, match="init_seed 0 != 1"):  # two random initialisations
        check_compatible(rand, _attrs(sha=None, seed=1))
    with pytest.raises(StoreError, match="clip_frames 16 != 8"):  # the clip actually cut, not the model's
        check_compatible(_attrs(), _attrs(frames=8))
    with pytest.raises(StoreError, match="checkpoint_sha256"):
        check_compatible(_attrs(), _attrs(sha="f" * 64))
    allowed = check_compatible(_attrs(), _attrs(frames=8), allow_mismatch=True)
    assert allowed == ["preprocessing.clip_frames 16 != 8"]
    with pytest.raises(StoreError, match="feature_dim"):  # never overridable
        check_compatible(_attrs(), _attrs(dim=32), allow_mismatch=True)


def test_a_train_mode_test_store_is_warned_about(stores):
    ssl, train = load_cache(stores["ssl"]), load_cache(stores["train"])
    res = run_knn(train, ssl, ProbeSettings(device="cpu"))
    assert any("test store is a train-mode store" in w for w in res.provenance["warnings"])
    assert (
        run_knn(train, load_cache(stores["test"]), ProbeSettings(device="cpu")).provenance["warnings"] == []
    )


def test_results_group_seeds_and_say_what_each_line_compares(stores, tmp_path):
    from vcache.learn.report import collect, to_markdown

    train, test = load_cache(stores["train"]), load_cache(stores["test"])
    for seed in (0, 1):
        s = ProbeSettings(device="cpu", low_shot=0.5, seed=seed)
        write_results(run_knn(train, test, s, train_path=stores["train"], test_path=stores["test"]), tmp_path)
    s = ProbeSettings(device="cpu", low_shot=0.5, k=5)
    write_results(run_knn(train, test, s, train_path=stores["train"], test_path=stores["test"]), tmp_path)
    rows = collect(tmp_path)
    assert len(rows) == 3 and {r["backbone"] for r in rows} == {"synthetic-bb (sha 00000000)"}
    md = to_markdown(rows).splitlines()
    assert "stores: train.zarr -> test.zarr  " in md  # shared by every line: said once
    assert "backbone: synthetic-bb (sha 00000000)  " in md
    md = [ln for ln in md if ln.startswith("|")]
    head = [c.strip() for c in md[0].strip("|").split("|")]
    lines = [dict(zip(head, (c.strip() for c in ln.strip("|").split("|")), strict=True)) for ln in md[2:]]
    assert len(lines) == 2  # seeds 0 and 1 form one line
    by_k = {ln["options"]: ln for ln in lines}
    assert set(by_k) == {"k=20", "k=5"}  # only the option that differs is shown
    two = by_k["k=20"]
    assert two["seeds"] == "0,1" and "±" in two["top1"] and "stores" not in two
    vals = [r["metrics"]["top1"] for r in rows if r["options"]["k"] == 20]
    assert float(two["top1"].split("±")[0]) == pytest.approx(sum(vals) / 2, abs=1e-3)
