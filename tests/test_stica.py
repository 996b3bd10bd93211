"""STiCA feature crops, pooling head, within-video loss, head-only training, probes on its embeddings,
and end-to-end pretraining (trunk trainable) on tiny real videos."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from stage2_helpers import backbone_attrs
from typer.testing import CliRunner

from vcache.cli.app import app
from vcache.learn.stica import (
    HeadConfig,
    PairMaps,
    SticaConfig,
    TemporalHead,
    View,
    ViewConfig,
    embed_maps,
    export_embeddings,
    feature_crop,
    load_head,
    n_loss_terms,
    pair_mask,
    sample_views,
    train_step,
    train_stica,
    video_embeddings,
    within_video_loss,
)
from vcache.store import DONE, FAILED, VideoMeta, create_store, open_store

SMALL_VIEWS = ViewConfig(
    spatial_medium_size=3, spatial_small_size=2, temporal_medium_size=3, temporal_small_size=2
)
TINY = dict(width=32, depth=1, heads=4, proj_dim=16)


def make_map_store(
    path: Path,
    n_videos: int = 24,
    mode: str = "pairs",
    k: int = 4,
    map_shape: tuple[int, int, int, int] = (4, 4, 4, 8),
    seed: int = 0,
    noise: float = 0.5,
    failed: tuple[int, ...] = (),
    videos_per_shard: int = 5,
) -> Path:
    """A store with feature maps and no video: class c's maps carry a fixed prototype plus noise."""
    c = map_shape[-1]
    protos = 2.0 * np.random.default_rng(99).standard_normal((2, c)).astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = np.arange(n_videos) % 2
    maps = rng.standard_normal((n_videos, k, *map_shape)).astype(np.float32) * noise
    maps += protos[labels][:, None, None, None, None, :]
    attrs = {
        "backbone": backbone_attrs(dim=c),
        "sampling": {"mode": mode, "pairs": k // 2} if mode == "pairs" else {"mode": mode},
        "class_names": ["a", "b"],
        "manifest": {"name": f"maps-{mode}-{seed}"},
    }
    st = create_store(
        path, [f"s{seed}_v{i}.mp4" for i in range(n_videos)], labels, k, c, attrs,
        videos_per_shard=videos_per_shard, map_shape=map_shape,
    )  # fmt: skip
    for s in range(st.n_shards):
        vids = st.shard_videos(s)
        sl = slice(vids.start, vids.stop)
        metas = [
            VideoMeta(status=FAILED if v in failed else DONE, num_frames=64, fps=25.0, height=64, width=64)
            for v in vids
        ]
        m = maps[sl].reshape(-1, *map_shape)
        boxes = np.tile(np.array([0, 1, 0, 0, 1, 1], np.float32), (len(m), 1))
        st.write_shard(s, m.mean(axis=(1, 2, 3)), boxes, np.zeros(len(m), bool), metas, maps=m)
    return path


# -- feature crops and view sets ------------------------------------------------------------------------
def test_feature_crop_indexes_the_right_cells():
    t, h, w = 4, 7, 7
    grid = np.zeros((2, t, h, w, 3), np.float32)
    tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    grid[..., 0], grid[..., 1], grid[..., 2] = tt, yy, xx  # each cell stores its own (t, y, x)
    view = View(1, 3, 2, 6, 0, 4, False, "test")
    for fmap in (grid, torch.from_numpy(grid)):
        crop = np.asarray(feature_crop(fmap, view))
        assert crop.shape == (2, 2, 4, 4, 3)
        assert crop[..., 0].min() == 1 and crop[..., 0].max() == 2
        assert crop[..., 1].min() == 2 and crop[..., 1].max() == 5
        assert crop[..., 2].min() == 0 and crop[..., 2].max() == 3
        assert np.array_equal(crop[1, 0, 0, 0], [1, 2, 0])  # no resampling: the cells themselves


def test_view_sets_follow_the_paper_default():
    cfg = ViewConfig()
    assert (cfg.m, cfg.n, cfg.n_terms) == (4, 5, 2 * (81 - 25))
    views = sample_views(cfg, (4, 7, 7), np.random.default_rng(0))
    kinds = [v.kind for v in views]
    assert kinds.count("spatial-medium") == 2 and kinds.count("spatial-small") == 4
    assert kinds.count("temporal-medium") == 2 and kinds.count("temporal-small") == 1
    for v in views:
        size = {"spatial-medium": (4, 6), "spatial-small": (4, 4)}.get(v.kind)
        if size:  # a crop in space keeps the full time
            assert (v.t0, v.t1, v.y1 - v.y0, v.x1 - v.x0) == (0, 4, size[1], size[1])
        else:  # a crop in time keeps the full space
            assert (v.y0, v.y1, v.x0, v.x1) == (0, 7, 0, 7)
            assert v.length == (3 if v.kind == "temporal-medium" else 2)
        assert 0 <= v.t0 < v.t1 <= 4 and v.y1 <= 7 and v.x1 <= 7
        assert v.small == v.kind.endswith("small")
    full = sample_views(ViewConfig(include_full=True), (4, 7, 7), np.random.default_rng(0))
    assert full[0] == View(0, 4, 0, 7, 0, 7, False, "full") and len(full) == 10


def test_too_small_maps_are_refused_clearly():
    with pytest.raises(ValueError, match=r"4 x 4 x 4 is too small.*--spatial-medium-size"):
        ViewConfig().check((4, 4, 4))
    SMALL_VIEWS.check((4, 4, 4))
    with pytest.raises(ValueError, match="small-small"):
        ViewConfig(spatial_medium=0, temporal_medium=0).check((4, 7, 7))


# -- pooling head ---------------------------------------------------------------------------------------
def test_masking_gives_the_same_output_with_and_without_padding():
    torch.manual_seed(0)
    head = TemporalHead(HeadConfig(in_dim=8, **TINY)).eval()
    x = torch.randn(3, 2, 8)
    alone = head.encode(x)
    padded = torch.cat([x, 100 * torch.randn(3, 2, 8)], dim=1)  # garbage after the sequence
    valid = torch.tensor([[True, True, False, False]] * 3)
    torch.testing.assert_close(head.encode(padded, valid), alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(head.encode(padded), alone, atol=1e-3)  # unmasked, the garbage counts
    # views_forward pads temporal crops the same way: a 2-step view equals the 2-step map encoded alone
    fmap = torch.randn(3, 4, 4, 4, 8)
    view = View(1, 3, 0, 4, 0, 4, True, "temporal-small")
    z = head.views_forward(fmap, [view, View(0, 4, 1, 3, 1, 3, True, "spatial-small")])
    torch.testing.assert_close(z[:, 0], head.project(head.embed(fmap[:, 1:3])), atol=1e-5, rtol=1e-5)


# -- loss -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m,n", [(4, 5), (1, 2), (3, 0), (2, 6)])
def test_loss_pair_counts_match_the_formula(m, n):
    small = [False] * m + [True] * n
    assert 2 * int(pair_mask(small, small).sum()) == n_loss_terms(m, n) == 2 * ((m + n) ** 2 - n**2)
    z = torch.randn(3, m + n, 4)
    _, terms = within_video_loss(z, torch.randn(3, m + n, 4), small, small)
    assert terms == n_loss_terms(m, n)
    assert ViewConfig(spatial_medium=m, temporal_medium=0, spatial_small=n, temporal_small=0).n_terms == terms


def test_loss_matches_eq1_term_by_term_and_is_pure():
    torch.manual_seed(1)
    b, d, tau = 5, 6, 0.5
    small = [False, False, True, True]
    z1, z2 = torch.randn(b, 4, d), torch.randn(b, 4, d)
    c1, c2 = z1.clone(), z2.clone()
    loss, terms = within_video_loss(z1, z2, small, small, tau)
    assert torch.equal(z1, c1) and torch.equal(z2, c2)  # inputs untouched
    assert torch.equal(within_video_loss(z1, z2, small, small, tau)[0], loss)  # same inputs, same output

    def eq1(a: torch.Tensor, p: torch.Tensor) -> torch.Tensor:  # L(alpha, beta), eq. 1, cosine / tau
        sims = F.cosine_similarity(a[:, None], p[None], dim=-1) / tau
        return -(sims.diag() - sims.logsumexp(dim=1)).mean()

    ref = [
        eq1(z1[:, i], z2[:, j]) + eq1(z2[:, j], z1[:, i])
        for i, j in itertools.product(range(4), range(4))
        if not (small[i] and small[j])
    ]
    assert terms == 2 * len(ref) == 24
    torch.testing.assert_close(loss, torch.stack(ref).sum() / terms)


def test_within_video_loss_split_over_ranks_with_gathered_candidates_is_the_whole_batch_loss():
    """What `pretrain stica` under torchrun computes: each rank's videos as anchors against every rank's
    views (gathered), at its offset; the mean over ranks equals the whole batch's loss, values and grads."""
    torch.manual_seed(2)
    small = [False, True, True]
    base = [torch.randn(6, 3, 5, dtype=torch.float64) for _ in range(2)]
    whole = [t.clone().requires_grad_() for t in base]
    within_video_loss(*whole, small, small, 0.5)[0].backward()
    split = [t.clone().requires_grad_() for t in base]
    parts = [
        within_video_loss(*(t[3 * r : 3 * r + 3] for t in split), small, small, 0.5, *split, offset=3 * r)[0]
        for r in range(2)
    ]
    loss = (parts[0] + parts[1]) / 2
    loss.backward()
    torch.testing.assert_close(loss, within_video_loss(*base, small, small, 0.5)[0])
    for w, s in zip(whole, split, strict=True):
        torch.testing.assert_close(s.grad, w.grad)
    with pytest.raises(ValueError, match="offset"):
        within_video_loss(base[0][:3], base[1][:3], small, small, 0.5, *base, offset=4)


def test_a_few_steps_lower_the_loss(tmp_path):
    store = make_map_store(tmp_path / "maps.zarr", n_videos=8, noise=3.0)  # instances, not classes
    a, b, _ = next(PairMaps(store).batches(0, 8, seed=0))
    cfg = SticaConfig(in_dim=8, views=SMALL_VIEWS, **TINY)
    torch.manual_seed(0)
    head = TemporalHead(cfg.head_config())
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    ma, mb = torch.from_numpy(a).float(), torch.from_numpy(b).float()
    losses = []
    for _ in range(8):
        loss, terms = train_step(
            head, ma, mb, cfg.views, 0.5, np.random.default_rng(5)
        )  # same views every step
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert terms == SMALL_VIEWS.n_terms
    assert losses[-1] < losses[0] - 0.05


# -- data streaming, training, resume -------------------------------------------------------------------
def test_streamed_batches_equal_in_memory_batches_and_skip_failed(tmp_path):
    store = make_map_store(tmp_path / "maps.zarr", n_videos=13, failed=(3,))
    mem, stream = PairMaps(store, memory_bytes=1e12), PairMaps(store, memory_bytes=0)
    assert mem.in_memory and not stream.in_memory and mem.n_videos == 12
    got_m, got_s = list(mem.batches(1, 4, seed=2)), list(stream.batches(1, 4, seed=2))
    assert len(got_m) == len(got_s) == 3
    for (a1, b1, v1), (a2, b2, v2) in zip(got_m, got_s, strict=True):
        assert np.array_equal(a1, a2) and np.array_equal(b1, b2) and np.array_equal(v1, v2)
    seen = np.concatenate([v for _, _, v in got_m])
    assert sorted(seen.tolist()) == [v for v in range(13) if v != 3]
    raw = open_store(store).group["crops/maps"]
    a, b, v = got_m[0]
    rows = [r for r in range(4) if np.array_equal(raw[v[0] * 4 + r], a[0])]
    assert rows in ([0], [2]) and np.array_equal(raw[v[0] * 4 + rows[0] + 1], b[0])  # L_1, L_2 of a pair


def test_resume_continues_like_an_uninterrupted_run(tmp_path):
    store = make_map_store(tmp_path / "maps.zarr", n_videos=12)
    cfg = SticaConfig(in_dim=8, views=SMALL_VIEWS, batch_size=6, epochs=2, **TINY)
    train_stica(store, cfg, tmp_path / "full.pt", device="cpu")
    cfg1 = SticaConfig(in_dim=8, views=SMALL_VIEWS, batch_size=6, epochs=1, **TINY)
    train_stica(store, cfg1, tmp_path / "part.pt", device="cpu", memory_bytes=0)
    res = train_stica(store, cfg, tmp_path / "part.pt", device="cpu", resume=True)
    assert res.epochs_done == 2
    full, _ = load_head(tmp_path / "full.pt")
    part, meta = load_head(tmp_path / "part.pt")
    for (k, p1), p2 in zip(full.state_dict().items(), part.state_dict().values(), strict=True):
        torch.testing.assert_close(p1, p2, msg=k)
    assert meta["mode"] == "head-only STiCA (trunk frozen)" and meta["provenance"]["map_shape"] == [
        4,
        4,
        4,
        8,
    ]
    with pytest.raises(ValueError, match="settings differ"):
        train_stica(store, SticaConfig(in_dim=8, views=SMALL_VIEWS, epochs=3, **TINY), tmp_path / "part.pt",
                    device="cpu", resume=True)  # fmt: skip


# -- the head's embeddings in the probes ----------------------------------------------------------------
def test_trained_head_embeddings_feed_the_probes(tmp_path):
    from vcache.learn.probes import ProbeSettings, load_pair, run_knn, run_probe

    pairs = make_map_store(tmp_path / "pairs.zarr", n_videos=20)
    train_eval = make_map_store(tmp_path / "train.zarr", n_videos=20, mode="eval", k=3, seed=1)
    test_eval = make_map_store(tmp_path / "test.zarr", n_videos=10, mode="eval", k=3, seed=2, failed=(4,))
    cfg = SticaConfig(in_dim=8, views=SMALL_VIEWS, batch_size=10, epochs=2, **TINY)
    ckpt = tmp_path / "head.pt"
    train_stica(pairs, cfg, ckpt, device="cpu")

    emb, labels, rows = video_embeddings(ckpt, test_eval, device="cpu")
    assert emb.shape == (9, 32) and 4 not in rows.tolist() and labels.tolist() == (rows % 2).tolist()
    head, _ = load_head(ckpt)
    maps = open_store(test_eval).group["crops/maps"][:6]
    np.testing.assert_allclose(emb[0], embed_maps(head, maps[:3], "cpu").mean(0), rtol=1e-5, atol=1e-5)

    export_embeddings(ckpt, train_eval, tmp_path / "train_emb.zarr", device="cpu")
    export_embeddings(ckpt, test_eval, tmp_path / "test_emb.zarr", device="cpu")
    train, test = load_pair(tmp_path / "train_emb.zarr", tmp_path / "test_emb.zarr")
    assert train.features.shape == (20, 3, 32) and len(test.labels) == 9
    assert train.attrs["backbone"]["name"] == "synthetic-bb+stica_head"
    knn = run_knn(train, test, ProbeSettings(k=5, retrieval=True, device="cpu"))
    assert knn.metrics["top1"] >= 0.8 and knn.metrics["R@1"] >= 0.8
    lin = run_probe("linear", train, test, ProbeSettings(lrs=(1e-2,), wds=(0.0,), epochs=20, device="cpu"))
    assert lin.metrics["top1"] >= 0.8

    # a head trained on another backbone's maps is refused
    other = make_map_store(tmp_path / "other.zarr", n_videos=4, mode="eval", k=3)
    st = open_store(other, mode="r+")
    st.update_attrs(backbone={**st.attrs["backbone"], "name": "another-bb"})
    with pytest.raises(Exception, match="different backbones"):
        export_embeddings(ckpt, other, tmp_path / "bad.zarr", device="cpu")


def test_cli_trains_refuses_small_maps_and_embeds(tmp_path):
    pairs = make_map_store(tmp_path / "pairs.zarr", n_videos=8)
    runner = CliRunner()
    base = ["train-aggregator", "stica", str(pairs), "--out", str(tmp_path / "h.pt"), "--device", "cpu", "-q"]
    res = runner.invoke(app, base)
    assert res.exit_code != 0 and "too small" in res.output
    sizes = ["--spatial-medium-size", "3", "--spatial-small-size", "2", "--temporal-medium-size", "3"]
    tiny = ["--width", "32", "--depth", "1", "--epochs", "1", "--batch", "4", "--include-full"]
    res = runner.invoke(app, base + sizes + tiny)
    assert res.exit_code == 0, res.output
    assert "head-only STiCA (trunk frozen)" in res.output and "m=4 n=5" in res.output
    _, meta = load_head(tmp_path / "h.pt")
    assert meta["config"]["views"]["include_full"] and meta["n_terms"] == 2 * (10**2 - 5**2)
    emb = tmp_path / "emb.zarr"
    res = runner.invoke(app, ["stica-embed", str(tmp_path / "h.pt"), str(pairs), "--out", str(emb)])
    assert res.exit_code == 0, res.output
    assert open_store(emb).feature_dim == 32


# -- real videos: a pairs store through the extraction engine, and end-to-end pretraining ---------------
def test_pairs_store_from_real_videos_trains_and_embeds(tiny_dataset, tmp_path):
    from vcache.data.crops import CropSettings
    from vcache.data.datasets import load_manifest
    from vcache.extract import ExtractOptions, extract
    from vcache.models import build_backbone

    model = build_backbone("r2plus1d_18_narrow")
    settings = CropSettings(
        mode="pairs", clip_frames=32, frame_stride=1, input_size=64, resize_short=73, pairs=1
    )
    store = tmp_path / "pairs.zarr"
    opts = ExtractOptions(feature_maps=True, workers=0, videos_per_shard=4, device="cpu")
    rep = extract(load_manifest("folder", tiny_dataset), store, model, settings, opts)
    assert rep.done == 6
    data = PairMaps(store, memory_bytes=0)  # streamed
    assert data.map_shape == (4, 4, 4, 128) and data.pairs == 1
    boxes = open_store(store).group["crops/boxes"][:].reshape(6, 2, 6)
    assert np.array_equal(boxes[:, 0, :2], boxes[:, 1, :2])  # a pair shares its time extent
    cfg = SticaConfig(in_dim=128, views=SMALL_VIEWS, batch_size=3, epochs=2, **TINY)
    res = train_stica(store, cfg, tmp_path / "head.pt", device="cpu", memory_bytes=0)
    assert res.epochs_done == 2 and res.streamed and all(np.isfinite(h["loss"]) for h in res.history)
    emb, labels, _ = video_embeddings(tmp_path / "head.pt", store, device="cpu")
    assert emb.shape == (6, 32) and np.isfinite(emb).all() and sorted(set(labels.tolist())) == [0, 1]


def test_pretrain_stica_runs_two_steps_and_saves_a_loadable_checkpoint(tiny_dataset, tmp_path):
    """Two steps of `vcache pretrain stica` on 24-frame clips (a 3 x 2 x 2 map: neither the backbone's 16
    frames nor pairs mode's 32): the trunk's weights move, the checkpoint records the trained clips and
    `vcache extract --checkpoint` gives the trained map in train and pairs mode."""
    from vcache.models import build_backbone, load_checkpoint

    out = tmp_path / "stica.pt"
    args = ["pretrain", "stica", str(tiny_dataset), "--out", str(out), "--backbone", "r2plus1d_18_narrow",
            "--clip-frames", "24", "--input-size", "32", "--frame-stride", "1",  # a 3 x 2 x 2 map
            "--spatial-medium-size", "2", "--spatial-small-size", "1", "--temporal-medium-size", "2",
            "--temporal-small-size", "1", "--width", "32", "--epochs", "1", "--batch", "3",
            "--workers", "0", "--device", "cpu", "--lr", "0.01"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "2 steps" in res.output
    ck = load_checkpoint(out)
    assert ck["backbone"] == "r2plus1d_18_narrow" and ck["config"]["method"] == "stica"
    assert ck["config"]["map_shape"] == [3, 2, 2, 128] and ck["config"]["epochs_done"] == 1
    pre = ck["preprocessing"]
    assert (pre["clip_frames"], pre["frame_stride"], pre["input_size"]) == (24, 1, 32)
    assert pre["resize_short"] == round(32 * 73 / 64)  # the backbone's short-side ratio at the new size
    trained = build_backbone(None, checkpoint=out)  # what `vcache extract --checkpoint` does
    torch.manual_seed(0)
    fresh = build_backbone("r2plus1d_18_narrow")
    # weights, not batch-norm buffers (those move in any forward pass in train mode): every convolution of
    # the trunk, the stem farthest from the loss included, was changed by a gradient step
    new, old = dict(trained.named_parameters()), dict(fresh.named_parameters())
    convs = [k for k, v in new.items() if v.ndim == 5]
    assert convs[0] == "stem.0.weight"
    moved = [k for k in convs if not torch.equal(new[k], old[k])]
    assert moved == convs, f"unchanged trunk weights: {sorted(set(convs) - set(moved))[:4]}"
    with torch.no_grad():
        _, fmap = trained(torch.zeros(1, 3, 32, 64, 64))
    assert fmap.shape == (1, 4, 4, 4, 128)  # the trunk works at any clip size, e.g. STiCA's 32 x 64
    for mode, k in (("train", 1), ("pairs", 2)):  # extraction with the checkpoint: the trained 3 x 2 x 2 map
        store = tmp_path / f"{mode}.zarr"
        ext = ["extract", str(tiny_dataset), "--out", str(store), "--backbone", "r2plus1d_18_narrow",
               "--checkpoint", str(out), "--mode", mode, "--crops", "1", "--pairs", "1", "--feature-maps",
               "--workers", "0", "--device", "cpu", "--quiet"]  # fmt: skip
        r = CliRunner().invoke(app, ext)
        assert r.exit_code == 0, r.output
        st = open_store(store)
        assert st.attrs["map_shape"] == [3, 2, 2, 128], mode
        assert st.group["crops/maps"].shape == (6 * k, 3, 2, 2, 128)
    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0 and "exists" in res.output
