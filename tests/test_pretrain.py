"""CVRL / SVT pretraining: interval sampler, consistent augmentation, batch norm across ranks, end-to-end
runs whose checkpoints load through the registry, resume, and one process vs two (gloo) equivalence."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from torch import nn
from typer.testing import CliRunner

from vcache.cli.app import app
from vcache.models import build_backbone, load_checkpoint
from vcache.models.vit import VideoViT, interpolate_pos_embed
from vcache.pretrain.augment import apply_aug, cvrl_settings, draw_aug
from vcache.pretrain.cvrl import PRESETS, CVRLConfig, clip_starts, sample_interval, train_cvrl
from vcache.pretrain.cvrl import make_plan as cvrl_plan
from vcache.pretrain.data import GlobalBatchSampler, list_videos
from vcache.pretrain.loop import state_path, student_path
from vcache.pretrain.svt import SVTConfig, build_student, train_svt
from vcache.pretrain.svt import make_plan as svt_plan
from vcache.runtime.distributed import DistBatchNorm, DistContext

D = 12


@pytest.mark.parametrize(
    "dist, density",
    [
        ("decreasing", lambda t: 1 - t / D),
        ("uniform", lambda t: np.ones_like(t)),
        ("increasing", lambda t: t / D),
    ],
)
def test_interval_sampler_follows_its_density(dist: str, density) -> None:
    rng = np.random.default_rng(0)
    draws = np.array([sample_interval(rng, D, dist) for _ in range(12000)])
    assert draws.min() >= 0 and draws.max() <= D - 1
    # expected mass of t = k: the continuous density integrated over [k, k + 1)
    grid = np.linspace(0, D, D * 200 + 1)
    mass = np.array([density(grid[(grid >= k) & (grid <= k + 1)]).mean() for k in range(D)])
    expected = mass / mass.sum() * len(draws)
    observed = np.bincount(draws, minlength=D)
    assert chisquare(observed, expected).pvalue > 1e-3


def test_interval_sampler_orders_the_ablation() -> None:
    rng = np.random.default_rng(1)
    means = {
        d: np.mean([sample_interval(rng, 100, d) for _ in range(3000)])
        for d in ("decreasing", "uniform", "increasing")
    }
    assert means["decreasing"] < 40 < means["uniform"] < 60 < means["increasing"]  # 33, 50, 67 in theory


def test_clip_starts_are_valid_swapped_and_handle_short_videos() -> None:
    rng = np.random.default_rng(2)
    pairs = [clip_starts(rng, 40, 15) for _ in range(500)]
    assert all(0 <= a <= 25 and 0 <= b <= 25 for a, b in pairs)
    assert any(a < b for a, b in pairs) and any(a > b for a, b in pairs)
    short = [clip_starts(rng, 8, 15) for _ in range(200)]
    assert all(0 <= a < 8 and 0 <= b < 8 for a, b in short) and len(set(short)) > 10


def test_consistent_augmentation_applies_one_draw_to_every_frame() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    static = np.repeat(frame[None], 6, axis=0)  # a video that does not move
    settings = cvrl_settings()
    one = apply_aug(static, [draw_aug(rng, settings, 24, 32)], 16)
    assert one.shape == (6, 3, 16, 16)
    assert all(torch.equal(one[0], one[i]) for i in range(6))  # the same crop, flip, jitter, blur everywhere
    per_frame = apply_aug(static, [draw_aug(rng, settings, 24, 32) for _ in range(6)], 16)
    assert not all(torch.allclose(per_frame[0], per_frame[i]) for i in range(1, 6))


def test_dist_batchnorm_equals_batchnorm_in_one_process() -> None:
    torch.manual_seed(0)
    bn, dbn = nn.BatchNorm3d(4), DistBatchNorm(4)
    x = torch.randn(3, 4, 2, 5, 5) * 3 + 1
    assert torch.allclose(bn(x), dbn(x), atol=1e-5)
    assert torch.allclose(bn.running_mean, dbn.running_mean) and torch.allclose(
        bn.running_var, dbn.running_var
    )
    bn.eval(), dbn.eval()
    assert torch.allclose(bn(x), dbn(x), atol=1e-5)


def test_cvrl_r3d_topology() -> None:
    model = build_backbone("cvrl_r3d_narrow")
    assert model.conv1[0].kernel_size == (5, 7, 7) and model.conv1[0].stride == (2, 2, 2)
    temporal = {
        name.split(".")[0]
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv3d) and m.kernel_size[0] == 3
    }
    assert temporal == {"res4", "res5"}
    pooled, fmap = model(torch.zeros(1, 3, 8, 32, 32))
    assert pooled.shape == (1, model.feature_dim) and tuple(fmap.shape[1:]) == model.map_shape(8, 32)


def test_position_embeddings_interpolate_to_other_views() -> None:
    vit = VideoViT(img_size=32, patch_size=8, num_frames=4, dim=32, depth=1, heads=2)
    assert interpolate_pos_embed(vit.time_embed, (4,), (4,)) is vit.time_embed
    assert interpolate_pos_embed(vit.time_embed, (4,), (2,)).shape == (1, 2, 32)
    for t, s in ((4, 32), (2, 16), (8, 24)):
        assert vit(torch.zeros(1, 3, t, s, s))[0].shape == (1, 32)


def _tiny_cvrl(**kw) -> CVRLConfig:
    base = dict(
        clip_frames=8,
        frame_stride=2,
        input_size=32,
        batch_size=4,
        steps=2,
        lr=0.01,
        head_hidden=16,
        head_out=8,
        workers=0,
        warmup_epochs=0,
        save_every=0,
        seed=0,
    )
    return CVRLConfig(**{**base, **kw})


def _tiny_svt(**kw) -> SVTConfig:
    base = dict(
        backbone_kwargs=dict(dim=32, depth=1, heads=2),
        global_size=32,
        global_frames=(4, 2),
        local_size=16,
        local_frames=(2,),
        n_local=2,
        out_dim=32,
        head_hidden=16,
        head_bottleneck=8,
        batch_size=4,
        steps=2,
        workers=0,
        warmup_epochs=0,
        save_every=0,
        freeze_last_layer_epochs=0,
        lr=1e-3,
    )
    return SVTConfig(**{**base, **kw})


def test_cvrl_end_to_end_checkpoint_loads_and_resumes(tiny_dataset: Path, tmp_path: Path) -> None:
    paths = list_videos(tiny_dataset)
    out = tmp_path / "cvrl.pt"
    summary = train_cvrl(paths, out, _tiny_cvrl(steps=1), DistContext(), progress=False)
    assert summary["steps"] == 1 and np.isfinite(summary["final_loss"])
    model = build_backbone("cvrl_r3d_narrow", checkpoint=out)  # what `vcache extract --checkpoint` does
    assert model.preprocessing.clip_frames == 8 and model.preprocessing.input_size == 32
    state = torch.load(state_path(out), weights_only=True)
    saved = {k: v for k, v in state["model"].items() if k.startswith("backbone.")}
    assert all(torch.equal(v, model.state_dict()[k[len("backbone.") :]]) for k, v in saved.items())
    # resume to 2 steps: the first loss is kept, one step more is run
    again = train_cvrl(paths, out, _tiny_cvrl(steps=2), DistContext(), resume=True, progress=False)
    st = torch.load(state_path(out), weights_only=True)
    assert again["steps"] == 2 and st["step"] == 2 and len(st["losses"]) == 2
    assert st["losses"][:1] == state["losses"]


def test_svt_end_to_end_saves_the_teacher(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "svt.pt"
    summary = train_svt(list_videos(tiny_dataset), out, _tiny_svt(), DistContext(), progress=False)
    assert np.isfinite(summary["final_loss"])
    model = build_backbone(None, checkpoint=out)
    assert model.name == "vit_video_tiny" and model.preprocessing.input_size == 32
    teacher = torch.load(state_path(out), weights_only=True)["teacher"]
    assert torch.equal(teacher["backbone.pos_embed"], model.pos_embed.detach())
    assert model(torch.zeros(1, 3, 4, 32, 32))[0].shape == (1, model.feature_dim)
    # the student beside the teacher (issue 14): its own weights, the training state's student
    student = build_backbone(None, checkpoint=student_path(out))
    saved = torch.load(state_path(out), weights_only=True)["student"]
    assert torch.equal(saved["backbone.pos_embed"], student.pos_embed.detach())
    assert not torch.equal(student.pos_embed, model.pos_embed)


def test_svt_starts_from_an_image_vit(tiny_dataset: Path, tmp_path: Path) -> None:
    """--init-image: the student and the teacher start from the image weights (vit_image.py)."""
    cfg = _tiny_svt(steps=1, lr=0.0)
    torch.manual_seed(5)
    video = build_student(cfg).backbone
    image = {"cls_token": video.cls_token.detach() + 1.0, "pos_embed": video.pos_embed.detach()}
    image |= {
        "patch_embed.proj.weight": video.patch_embed.weight,
        "patch_embed.proj.bias": video.patch_embed.bias,
    }
    image |= {"norm.weight": video.norm.weight, "norm.bias": video.norm.bias}
    names = {"norm1": "norm_s", "attn.qkv": "attn_s.qkv", "attn.proj": "attn_s.proj", "norm2": "norm_mlp"}
    names |= {"mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2"}
    for timm, ours in names.items():
        for leaf in ("weight", "bias"):
            image[f"blocks.0.{timm}.{leaf}"] = video.state_dict()[f"blocks.0.{ours}.{leaf}"]
    torch.save({k: v.detach().clone() for k, v in image.items()}, tmp_path / "dino.pth")
    out = tmp_path / "svt.pt"
    cfg = _tiny_svt(steps=1, lr=0.0, init_image=str(tmp_path / "dino.pth"))
    train_svt(list_videos(tiny_dataset), out, cfg, DistContext(), progress=False)
    st = torch.load(state_path(out), weights_only=True)
    assert torch.equal(st["student"]["backbone.cls_token"], image["cls_token"])
    assert not st["teacher"]["backbone.blocks.0.attn_t.proj.weight"].any()


def test_svt_teacher_moves_toward_the_student_by_the_ema_amount(tiny_dataset: Path, tmp_path: Path) -> None:
    """One step at starting momentum 0.5 (the cosine schedule's first value is the start): every teacher
    parameter is 0.5 x its initial value + 0.5 x the stepped student's (SVT Sec. 3.2, DINO's EMA)."""
    cfg = _tiny_svt(steps=1, momentum_teacher=0.5)
    out = tmp_path / "svt.pt"
    train_svt(list_videos(tiny_dataset), out, cfg, DistContext(), progress=False)
    st = torch.load(state_path(out), weights_only=True)
    torch.manual_seed(cfg.seed)  # train_svt's initial weights: the teacher starts as a copy of them
    init = dict(build_student(cfg).named_parameters())
    moved = 0
    for k, p0 in init.items():
        student, teacher = st["student"][k], st["teacher"][k]
        torch.testing.assert_close(teacher, 0.5 * p0.detach() + 0.5 * student, rtol=1e-6, atol=1e-7, msg=k)
        moved += not torch.equal(teacher, p0)
    assert moved > len(init) // 2  # the student did move, so the EMA is not trivially the initial weights


def test_svt_global_and_local_views_use_their_crop_scales() -> None:
    """Global views: area fraction in [0.4, 1], locals in [0.05, 0.4] at their own sides: the official
    code's crop scales (kahnchana/svt datasets/transform.py VideoDataAugmentationDINO, train_ssl.py
    --global_crops_scale / --local_crops_scale; SVT Sec. 3.1: locals cover about 40 % of the area)."""
    cfg = SVTConfig()
    assert cfg.global_area == (0.4, 1.0) and cfg.local_area == (0.05, 0.4)
    plan = svt_plan(cfg)
    n_global = len(cfg.global_frames)
    areas: dict[str, list[float]] = {"global": [], "local": []}
    for seed in range(60):
        views = plan(np.random.default_rng(seed), 200, 48, 64)
        assert len(views) == n_global + cfg.n_local
        for i, v in enumerate(views):
            kind = "global" if i < n_global else "local"
            assert v.size == (cfg.global_size if kind == "global" else cfg.local_size)
            (p,) = v.params  # one draw per view: temporally consistent (SVT Sec. 3.2.4)
            y0, x0, y1, x1 = p.box[2:]
            areas[kind].append(float((y1 - y0) * (x1 - x0)))
    g, loc = np.array(areas["global"]), np.array(areas["local"])
    assert g.min() >= 0.4 - 1e-5 and g.max() <= 1 + 1e-6 and g.mean() > 0.5  # large boxes are often refused
    assert loc.min() >= 0.05 - 1e-6 and loc.max() <= 0.4 + 1e-5 and 0.15 < loc.mean() < 0.3  # 0.225


def test_per_frame_aug_draws_one_augmentation_per_frame() -> None:
    """CVRL Table 9's inconsistent variant: with per_frame_aug every frame of a clip has its own draw
    (different crops); without it one draw serves every frame of the clip (Algorithm 1)."""
    for per_frame in (True, False):
        plan = cvrl_plan(_tiny_cvrl(per_frame_aug=per_frame), 8, 2, 32)
        views = plan(np.random.default_rng(0), 40, 48, 64)
        assert len(views) == 2
        for v in views:
            if per_frame:
                assert len(v.params) == 8 and len({tuple(p.box.tolist()) for p in v.params}) == 8
            else:
                assert len(v.params) == 1


def test_jitter_strength_scales_the_colour_distortion() -> None:
    """`jitter_strength` s gives SimCLR's (0.8s, 0.8s, 0.8s, 0.2s): every drawn factor lies within
    those bounds, and s = 1 (the official code's) reaches beyond the s = 0.5 bounds (the cpu preset's)."""
    assert PRESETS["cpu"]["jitter_strength"] == 0.5 and CVRLConfig().jitter_strength == 1.0
    reach = {}
    for s in (0.5, 1.0):
        plan = cvrl_plan(_tiny_cvrl(jitter_strength=s), 8, 2, 32)
        rng, worst = np.random.default_rng(0), {"brightness": 0.0, "hue": 0.0}
        for _ in range(200):
            for v in plan(rng, 40, 48, 64):
                for name, f in v.params[0].jitter or []:
                    if name in worst:
                        worst[name] = max(worst[name], abs(f - (name == "brightness")))
        assert worst["brightness"] <= 0.8 * s and worst["hue"] <= 0.2 * s, (s, worst)
        reach[s] = worst
    assert reach[1.0]["brightness"] > 0.4 and reach[1.0]["hue"] > 0.1


def test_cli_pretrain_cvrl_passes_its_switches(tiny_dataset: Path, tmp_path: Path) -> None:
    """`vcache pretrain cvrl` hands --per-frame-aug and the augmentation switches to the run: the
    checkpoint's recorded config says so."""
    out = tmp_path / "cvrl.pt"
    args = ["pretrain", "cvrl", str(tiny_dataset), "--out", str(out), "--clip-frames", "8",
            "--frame-stride", "2", "--input-size", "32", "--batch-size", "4", "--steps", "1",
            "--workers", "0", "--device", "cpu", "--per-frame-aug", "--no-blur", "--quiet"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    cfg = load_checkpoint(out)["config"]["pretrain"]["config"]
    assert cfg["per_frame_aug"] is True and cfg["aug"]["blur_prob"] == 0.0 and cfg["aug"]["flip_prob"] == 0.5


def test_global_batches_split_over_ranks() -> None:
    one = list(GlobalBatchSampler(10, 4, 5, 0, 0, 1, seed=3))
    two = [list(GlobalBatchSampler(10, 4, 5, 0, r, 2, seed=3)) for r in range(2)]
    assert [a + b for a, b in zip(*two, strict=True)] == one
    assert one[2][0][0] == 1  # 2 steps per epoch: step 2 is epoch 1
    assert list(GlobalBatchSampler(10, 4, 5, 3, 0, 1, seed=3)) == one[3:]  # resume mid-run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, paths: list[str], outs: dict[str, str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)  # compare arithmetic, not float32 rounding amplified by training
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        train_cvrl(paths, outs["cvrl"], _tiny_cvrl(steps=3), DistContext(rank, world), progress=False)
        train_svt(paths, outs["svt"], _tiny_svt(steps=3), DistContext(rank, world), progress=False)
    finally:
        torch.distributed.destroy_process_group()


def test_one_process_equals_two(tiny_dataset: Path, tmp_path: Path) -> None:
    """Batch 4 in one process vs 2 + 2 in two gloo processes: same losses, weights (and SVT centre) after
    3 steps; CVRL exercises the gathered negatives and the all-reduced batch norm, SVT the centre."""
    paths = list_videos(tiny_dataset)
    torch.set_num_threads(1)
    one = {m: str(tmp_path / f"one_{m}.pt") for m in ("cvrl", "svt")}
    two = {m: str(tmp_path / f"two_{m}.pt") for m in ("cvrl", "svt")}
    torch.set_default_dtype(torch.float64)  # float64 weights: compare the arithmetic, not float32 rounding
    try:
        train_cvrl(paths, one["cvrl"], _tiny_cvrl(steps=3), DistContext(), progress=False)
        train_svt(paths, one["svt"], _tiny_svt(steps=3), DistContext(), progress=False)
    finally:
        torch.set_default_dtype(torch.float32)
    torch.multiprocessing.spawn(_rank_main, args=(2, _free_port(), paths, two), nprocs=2)
    for method, key in (("cvrl", "model"), ("svt", "student")):
        a = torch.load(state_path(Path(one[method])), weights_only=True)
        b = torch.load(state_path(Path(two[method])), weights_only=True)
        np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-9, err_msg=method)
        for k, v in a[key].items():
            if v.is_floating_point():
                torch.testing.assert_close(b[key][k], v, rtol=1e-7, atol=1e-9, msg=f"{method} {k}")
    a, b = (torch.load(state_path(Path(d["svt"])), weights_only=True)["center"] for d in (one, two))
    torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-10)
    assert a.abs().sum() > 0


def test_a_hanging_video_is_skipped_after_its_deadline(tiny_dataset: Path, tmp_path: Path) -> None:
    """A named pipe nobody writes to blocks the decoder's open forever: the dataset gives up on it after its
    deadline, records it as unreadable and returns the next video's views, so the rank goes on."""
    import time

    from vcache.pretrain.data import ClipDataset

    fifo = tmp_path / "stuck.mp4"
    os.mkfifo(fifo)
    paths = [str(fifo), *list_videos(tiny_dataset)[:2]]
    cfg = CVRLConfig(backbone="r3d_18_narrow", clip_frames=4, frame_stride=1, input_size=32)
    pre = build_backbone("r3d_18_narrow").preprocessing
    ds = ClipDataset(paths, cvrl_plan(cfg, 4, 1, 32), pre, seed=0, timeout_s=1.0)
    t0 = time.perf_counter()
    views = ds[(0, 0)]
    assert time.perf_counter() - t0 < 30
    assert len(views) == 2 and views[0].shape == (3, 4, 32, 32)
    assert ds._bad == {0}  # the pipe is skipped from now on
