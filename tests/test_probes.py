"""Probes end to end on generated stores: train SCALE, save, reload, probe; the order-aware task; the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from stage2_helpers import TINY_SCALE, backbone_attrs, make_store
from typer.testing import CliRunner

from vcache.learn.probes import (
    ProbeSettings,
    load_pair,
    low_shot_indices,
    run_knn,
    run_probe,
    train_val_split,
    write_results,
)
from vcache.learn.scale import ScaleConfig, train_scale
from vcache.store import StoreError, load_cache

FAST = {"width": 32, "depth": 2, "device": "cpu", "batch_size": 16}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("probes")
    paths = {
        "ssl": make_store(d / "train_ssl.zarr", n_videos=48, crops=16, mode="train", seed=0),
        "train": make_store(d / "train_eval.zarr", n_videos=96, crops=6, mode="eval", seed=2),
        "test": make_store(d / "test_eval.zarr", n_videos=48, crops=6, mode="eval", seed=1),
    }
    cfg = ScaleConfig(feature_dim=16, epochs=3, **TINY_SCALE)
    train_scale(load_cache(paths["ssl"]), cfg, d / "scale.pt", store_path=paths["ssl"], device="cpu")
    paths["ckpt"] = d / "scale.pt"
    return paths


def test_order_classes_need_an_order_aware_probe(stores):
    train, test = load_pair(stores["train"], stores["test"])
    s = ProbeSettings(lrs=(3e-3,), wds=(0.0,), epochs=30, eval_points=1, **FAST)
    lin = run_probe("linear", train, test, s)
    tr = run_probe("transformer", train, test, s)
    assert lin.per_family["appearance"]["top1"] == 1.0
    assert lin.per_family["order"]["top1"] <= 0.75  # each clip alone, or their mean, cannot tell ab from ba
    assert tr.per_family["order"]["top1"] >= 0.9  # the boxes' times make the order visible
    assert tr.metrics["top1"] >= 0.9 and "top5" not in tr.metrics  # 4 classes: top-5 means nothing
    assert lin.selection["runs"] == 0  # one setting, nothing to choose


def test_scale_probes_from_a_saved_checkpoint(stores, tmp_path):
    train, test = load_pair(stores["train"], stores["test"])
    s = ProbeSettings(lrs=(1e-3, 1e-2), wds=(0.0,), epochs=4, eval_points=2, **FAST)
    res = run_probe("linear", train, test, s, aggregator=stores["ckpt"], train_path=stores["train"])
    assert res.name == "scale_linear"
    assert res.selection["runs"] == 2 and len(res.selection["table"]) == 4
    assert res.selection["val_videos"] == 20 and res.selection["train_videos"] == 96
    assert res.per_family["appearance"]["top1"] >= 0.9
    assert res.provenance["aggregator"]["config"]["width"] == 32
    ft = run_probe(
        "transformer", train, test, ProbeSettings(lrs=(1e-3,), wds=(0.0,), epochs=2, **FAST), stores["ckpt"]
    )
    assert ft.name == "scale_ft" and 0.0 <= ft.metrics["top1"] <= 1.0
    knn = run_knn(train, test, ProbeSettings(retrieval=True, pool="max", device="cpu"), stores["ckpt"])
    assert knn.name == "scale_knn" and {"R@1", "R@5", "R@20"} <= set(knn.metrics)
    jpath, cpath = write_results(res, tmp_path)
    saved = json.loads(jpath.read_text())
    assert saved["metrics"]["top1"] == res.metrics["top1"] and saved["seed"] == 0
    assert saved["provenance"]["train"]["backbone"]["name"] == "synthetic-bb"
    rows = list(csv.DictReader(cpath.open()))
    assert len(rows) == 48 and rows[0]["path"] == test.paths[0]


def test_knn_probe_and_mlp_low_shot(stores):
    train, test = load_pair(stores["train"], stores["test"])
    knn = run_knn(train, test, ProbeSettings(device="cpu"))
    assert knn.per_family["appearance"]["top1"] == 1.0
    mlp = run_probe(
        "mlp", train, test, ProbeSettings(low_shot=0.25, lrs=(1e-3,), wds=(0.0,), epochs=5, **FAST)
    )
    assert mlp.selection["train_videos"] == 24


def test_low_shot_and_validation_split_are_class_balanced():
    labels = np.repeat(np.arange(4), 20)
    keep = low_shot_indices(labels, 0.1, seed=0)
    assert np.bincount(labels[keep]).tolist() == [2, 2, 2, 2]
    tr, va = train_val_split(labels, 0.2, seed=0)
    assert np.bincount(labels[va]).tolist() == [4, 4, 4, 4]
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 80


def test_mixed_backbones_are_refused(stores, tmp_path):
    other = make_store(
        tmp_path / "other.zarr", n_videos=8, crops=6, mode="eval", backbone=backbone_attrs(sha="1" * 64)
    )
    with pytest.raises(StoreError, match="different backbones"):
        load_pair(stores["train"], other)
    from vcache.cli.app import app

    r = CliRunner().invoke(
        app, ["probe", "knn", str(stores["train"]), str(other), "--out", str(tmp_path / "r")]
    )
    assert r.exit_code == 1 and "different backbones" in r.output and "Traceback" not in r.output


def test_cli_train_and_probe(stores, tmp_path):
    from vcache.cli.app import app

    runner = CliRunner()
    ckpt = tmp_path / "cli.pt"
    args = [
        "train-aggregator",
        "scale",
        str(stores["ssl"]),
        "--out",
        str(ckpt),
        "--width",
        "32",
        "--batch",
        "16",
    ]
    args += ["--target-head", "2x32", "--pred-head", "2x32"]
    r = runner.invoke(app, [*args, "--epochs", "2", "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*args, "--epochs", "2", "--quiet", "--resume"])  # nothing left to do
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*args, "--epochs", "3", "--quiet", "--resume"])
    assert r.exit_code == 1 and "epochs" in r.output
    r = runner.invoke(app, [*args, "--epochs", "2", "--target-head", "3", "--out", str(tmp_path / "x.pt")])
    assert r.exit_code == 2 and "LAYERSxWIDTH" in r.output
    r = runner.invoke(app, [*args, "--epochs", "2", "--quiet"])
    assert r.exit_code == 1 and "--resume" in r.output
    out = tmp_path / "res"
    pair = [str(stores["train"]), str(stores["test"]), "--out", str(out)]
    r = runner.invoke(app, ["probe", "knn", *pair, "--aggregator", str(ckpt), "--retrieval"])
    assert r.exit_code == 0, r.output
    (knn_json,) = out.glob("scale_knn-s0-*.json")
    assert json.loads(knn_json.read_text())["metrics"]["R@20"] >= 0.9
    r = runner.invoke(app, ["probe", "linear", *pair, "--lr", "1e-2", "--wd", "0", "--epochs", "3", "--bn"])
    assert r.exit_code == 0, r.output
    (lin_json,) = out.glob("linear-s0-*.json")
    assert json.loads(lin_json.read_text())["settings"]["bn"] is True
    r = runner.invoke(app, ["probe", "linear", *pair, "--lr", "fast"])
    assert r.exit_code == 2
    for bad in ("0", "1.5", "-0.1"):
        r = runner.invoke(app, ["probe", "linear", *pair, "--low-shot", bad])
        assert r.exit_code == 2 and "low-shot" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["probe", "knn", *pair, "--low-shot", "2"])
    assert r.exit_code == 2 and "low-shot" in r.output
    r = runner.invoke(
        app, ["results", str(out), "--markdown", str(tmp_path / "r.md"), "--figure", str(tmp_path / "r.png")]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = [ln for ln in (tmp_path / "r.md").read_text().splitlines() if ln.startswith("|")]
    head = [c.strip() for c in md[0].strip("|").split("|")]
    row = next([c.strip() for c in ln.strip("|").split("|")] for ln in md if "scale_knn" in ln)
    assert {"R@1", "R@5", "R@20"} <= set(head)  # the retrieval columns (knn writes R@k)
    assert float(row[head.index("R@20")]) >= 0.9
