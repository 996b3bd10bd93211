"""SCALE aggregator: masking, set sampling, training, checkpoints and resume, store checks."""

from __future__ import annotations

import math

import pytest
import torch
from stage2_helpers import TINY_SCALE, backbone_attrs, make_store

from vcache.learn.aggregator import ScaleAggregator, ScaleConfig, sample_sets
from vcache.learn.checkpoints import load_aggregator, load_checkpoint
from vcache.learn.scale import train_scale
from vcache.store import StoreError, check_compatible, load_cache

TINY = TINY_SCALE


@pytest.fixture(scope="module")
def train_cache(tmp_path_factory):
    path = make_store(tmp_path_factory.mktemp("scale") / "train.zarr", n_videos=32, crops=16, dim=16)
    return path, load_cache(path)


def test_exact_mask_count():
    assert ScaleConfig(feature_dim=4, k=8, mask_ratio=0.25).n_masked() == 2
    assert ScaleConfig(feature_dim=4, k=8, mask_ratio=0.05).n_masked() == 1
    assert ScaleConfig(feature_dim=4, k=4, mask_ratio=0.45).n_masked() == 2
    assert ScaleConfig(feature_dim=4, k=8, mask_ratio=0.0).n_masked() == 0


def test_sample_sets_disjoint_with_bernoulli_or_exact_masks():
    g = torch.Generator().manual_seed(0)
    i1, i2, m1, m2 = sample_sets(50, 16, 8, 0.25, g, "count")
    assert i1.shape == i2.shape == (50, 8)
    for a, b in zip(i1.tolist(), i2.tolist(), strict=True):
        assert len(set(a) | set(b)) == 16  # two disjoint sets of 8 from 16
    assert (m1.sum(1) == 2).all() and (m2.sum(1) == 2).all()
    assert m1.any(0).all()  # every position gets masked somewhere: the masks are random
    # Bernoulli (the official code): each clip masked with probability p, so the count varies per set
    _, _, b1, b2 = sample_sets(2000, 16, 8, 0.25, g)
    rate = torch.cat([b1, b2]).float().mean().item()
    assert abs(rate - 0.25) < 0.01 and len(set(b1.sum(1).tolist())) > 3


def test_table9_ratios_stay_distinct_with_bernoulli_masking():
    """With K = 8 an exact count makes 0.20 and 0.25 the same (2 clips); per-clip chances keep them apart."""
    assert ScaleConfig(feature_dim=4, mask_ratio=0.2).n_masked() == ScaleConfig(feature_dim=4).n_masked()
    rates = []
    for ratio in (0.2, 0.25):
        _, _, m1, _ = sample_sets(4000, 16, 8, ratio, torch.Generator().manual_seed(1))
        rates.append(m1.float().mean().item())
    assert rates[0] == pytest.approx(0.2, abs=0.01) and rates[1] == pytest.approx(0.25, abs=0.01)


def test_optimizer_groups_and_schedule_follow_the_official_code():
    from vcache.learn.aggregator import ScaleSSL
    from vcache.learn.scale import batch_bounds, param_groups, warmup_cosine

    model = ScaleSSL(ScaleConfig(feature_dim=16, **{k: v for k, v in TINY.items() if k != "batch_size"}))
    plain, decay = param_groups(model, 1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in plain["params"]}
    assert "aggregator.cls_token" in no_decay and "aggregator.msk_token" in no_decay
    assert "aggregator.in_proj.bias" in no_decay and "aggregator.norm.weight" in no_decay
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == 1e-4
    assert plain["weight_decay"] == 0.0
    assert len(plain["params"]) + len(decay["params"]) == len(list(model.parameters()))
    # 5 % warm-up from 0, then half a cosine to 0
    assert warmup_cosine(0, 100, 0.05) == 0.0
    assert warmup_cosine(5, 100, 0.05) == pytest.approx(1.0)
    assert warmup_cosine(2, 100, 0.05) == pytest.approx(0.4)
    assert warmup_cosine(52, 100, 0.05) == pytest.approx(0.5 * (1 + math.cos(math.pi * 47 / 95)))
    assert warmup_cosine(100, 100, 0.05) == pytest.approx(0.0, abs=1e-12)
    assert batch_bounds(10, 4, True) == [(0, 4), (4, 8)]  # drop_last, as the official loader
    assert batch_bounds(10, 4, False) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(9, 4, False) == [(0, 4), (4, 8)]  # a lone video has no SET negative


def test_mcm_candidates_are_the_clips_of_both_sets():
    """ScaleSSL's MCM term equals a loop over every masked clip whose candidates are the targets of all clips
    of both sets of every video in the batch (official code)."""
    from vcache.learn.aggregator import ScaleSSL

    torch.manual_seed(0)
    cfg = ScaleConfig(
        feature_dim=16, k=4, use_set=False, **{k: v for k, v in TINY.items() if k != "batch_size"}
    )
    model = ScaleSSL(cfg).eval()  # no dropout
    f = (torch.randn(3, 4, 16), torch.randn(3, 4, 16))
    b = (torch.rand(3, 4, 6), torch.rand(3, 4, 6))
    m = (
        torch.tensor([[1, 0, 0, 0]] * 3, dtype=torch.bool),
        torch.tensor([[0, 0, 1, 0]] * 3, dtype=torch.bool),
    )
    got = model.losses(f, b, m)
    with torch.no_grad():
        toks = torch.cat([model.aggregator(f[i], b[i], m[i])[0] for i in range(2)], dim=1)  # (3, 8, W)
        pred = torch.nn.functional.normalize(model.pred_head(toks), dim=-1).reshape(24, -1)
        tgt = torch.nn.functional.normalize(model.tgt_head(torch.cat(f, dim=1)), dim=-1).reshape(24, -1)
        mask = torch.cat(m, dim=1).reshape(-1)
        terms = [-torch.log_softmax(tgt @ pred[i] / 0.2, dim=0)[i] for i in range(24) if mask[i]]
    assert got["mcm"].item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    assert got["total"].item() == pytest.approx(got["mcm"].item())  # SET off: the mean of one loss


def test_masked_clip_hides_its_feature_but_keeps_its_box():
    torch.manual_seed(0)
    agg = ScaleAggregator(ScaleConfig(feature_dim=16, width=32, depth=2)).eval()
    f, b = torch.randn(2, 5, 16), torch.rand(2, 5, 6)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[:, 2] = True
    tok, cls = agg(f, b, mask)
    assert tok.shape == (2, 5, 32) and cls.shape == (2, 32)
    f2 = f.clone()
    f2[:, 2] += 10.0  # the masked clip's feature must not leak
    assert torch.allclose(agg(f2, b, mask)[0], tok, atol=1e-6)
    b2 = b.clone()
    b2[:, 2, 0] += 0.3  # its box still enters (added to the MSK token)
    assert not torch.allclose(agg(f, b2, mask)[0][:, 2], tok[:, 2], atol=1e-4)
    assert not torch.allclose(agg(f2, b)[0], agg(f, b)[0], atol=1e-4)  # unmasked: the feature matters


def test_train_save_reload_and_loss_goes_down(train_cache, tmp_path):
    path, cache = train_cache
    cfg = ScaleConfig(feature_dim=16, epochs=6, **TINY)
    res = train_scale(cache, cfg, tmp_path / "s.pt", store_path=path, device="cpu")
    assert res.epochs_done == 6 and len(res.history) == 6
    assert res.history[-1]["total"] < res.history[0]["total"]
    assert res.history[-1]["mcm"] > 0 and res.history[-1]["set"] > 0
    assert res.history[-1]["lr"] < res.history[2]["lr"]  # cosine decay after the warm-up
    agg, meta = load_aggregator(tmp_path / "s.pt")
    assert meta["config"]["width"] == 32 and meta["epochs_done"] == 6
    assert meta["provenance"]["backbone"]["name"] == "synthetic-bb"
    assert meta["provenance"]["path"] == str(path)
    tok, cls = agg(torch.as_tensor(cache.features[:3]), torch.as_tensor(cache.boxes[:3]))
    assert tok.shape == (3, 16, 32)  # at test time all 16 clips go into one sequence


def test_loss_switches(train_cache, tmp_path):
    _, cache = train_cache
    only_set = train_scale(
        cache, ScaleConfig(feature_dim=16, epochs=1, use_mcm=False, **TINY), tmp_path / "a.pt"
    )
    assert only_set.history[0]["mcm"] == 0 and only_set.history[0]["set"] > 0
    only_mcm = train_scale(
        cache, ScaleConfig(feature_dim=16, epochs=1, use_set=False, **TINY), tmp_path / "b.pt"
    )
    assert only_mcm.history[0]["set"] == 0 and only_mcm.history[0]["mcm"] > 0
    with pytest.raises(ValueError):
        train_scale(cache, ScaleConfig(feature_dim=16, epochs=1, mask_ratio=0.0, **TINY), tmp_path / "c.pt")
    with pytest.raises(StoreError, match="disjoint"):
        train_scale(cache, ScaleConfig(feature_dim=16, epochs=1, k=9, **TINY), tmp_path / "d.pt")


def test_resume_gives_the_weights_of_an_uninterrupted_run(train_cache, tmp_path):
    _, cache = train_cache
    full = tmp_path / "full.pt"
    part = tmp_path / "part.pt"
    train_scale(cache, ScaleConfig(feature_dim=16, epochs=3, **TINY), full, device="cpu")
    # a run killed during its third epoch (2 steps an epoch): the checkpoint holds two epochs
    train_scale(cache, ScaleConfig(feature_dim=16, epochs=3, **TINY), part, device="cpu", max_steps=5)
    assert load_checkpoint(part)["epochs_done"] == 2
    res = train_scale(cache, ScaleConfig(feature_dim=16, epochs=3, **TINY), part, resume=True, device="cpu")
    assert res.epochs_done == 3
    a, b = load_checkpoint(full), load_checkpoint(part)
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-6), key
    assert [h["total"] for h in a["history"]] == pytest.approx([h["total"] for h in b["history"]], rel=1e-5)
    with pytest.raises(ValueError, match="width"):
        train_scale(cache, ScaleConfig(feature_dim=16, epochs=3, **{**TINY, "width": 64}), part, resume=True)
    with pytest.raises(ValueError, match="epochs"):  # the cosine schedule spans all epochs
        train_scale(cache, ScaleConfig(feature_dim=16, epochs=4, **TINY), part, resume=True)


def test_incompatible_backbones_are_refused():
    a = {"backbone": backbone_attrs(), "feature_dim": 16}
    check_compatible(a, dict(a))
    with pytest.raises(StoreError, match="checkpoint_sha256"):
        check_compatible(a, {"backbone": backbone_attrs(sha="f" * 64), "feature_dim": 16})
    other_pre = backbone_attrs()
    other_pre["preprocessing"] = {**other_pre["preprocessing"], "size": 112}
    with pytest.raises(StoreError, match="preprocessing"):
        check_compatible(a, {"backbone": other_pre, "feature_dim": 16})


def test_a_store_too_large_for_memory_streams_by_shard(train_cache, tmp_path):
    """A ShardStream with room for every shard trains exactly as the loaded cache; a small budget streams
    groups of shards (16 videos a shard here) and still trains."""
    from vcache.learn.scale import ShardStream

    path, cache = train_cache
    cfg = ScaleConfig(feature_dim=16, epochs=2, **TINY)
    loaded = train_scale(cache, cfg, tmp_path / "a.pt", device="cpu")
    whole = ShardStream(path, max_bytes=1e9)
    assert len(whole.groups) == 1
    streamed = train_scale(whole, cfg, tmp_path / "b.pt", device="cpu")
    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-6), key
    assert [h["total"] for h in loaded.history] == pytest.approx([h["total"] for h in streamed.history])
    small = ShardStream(
        path, max_bytes=16 * 16 * 22 * 4
    )  # one shard of 16 videos x 16 crops x (16 + 6) floats
    assert len(small.groups) == 2
    res = train_scale(small, cfg, tmp_path / "c.pt", device="cpu")
    assert res.epochs_done == 2 and all(torch.isfinite(torch.tensor(h["total"])) for h in res.history)


def test_memory_budget_counts_the_gpu_when_training_on_one():
    from vcache.learn.scale import memory_budget

    assert memory_budget(host_free=64e9, gpu_free=None) == 32e9
    assert memory_budget(host_free=64e9, gpu_free=10e9) == 5e9  # the cache goes to the GPU
    assert memory_budget(host_free=8e9, gpu_free=80e9) == 4e9  # and is read through the host first
    assert memory_budget(host_free=8e9, gpu_free=10e9, memory_gb=2) == 2e9
