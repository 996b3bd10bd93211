"""`vcache pretrain stica --audio`: the cross-modal term of eq. 7 on generated audio-visual videos, a video
without audio left out of it and counted, gradients reaching the audio encoder."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vcache.cli.app import app
from vcache.data.datasets import load_manifest
from vcache.pretrain.stica import PretrainSticaConfig, pretrain_stica
from vcache.pretrain.stica_audio import clip_start_s

SMALL = ["--backbone", "r2plus1d_18_narrow", "--clip-frames", "24", "--input-size", "32", "--frame-stride",
         "1", "--spatial-medium-size", "2", "--spatial-small-size", "1", "--temporal-medium-size", "2",
         "--temporal-small-size", "1", "--width", "32", "--epochs", "1", "--batch", "3", "--workers", "0",
         "--device", "cpu", "--lr", "0.01", "--audio-base", "8"]  # fmt: skip


@pytest.fixture(scope="module")
def av_videos(tmp_path_factory) -> Path:
    """6 synthetic order videos with tone tracks (40 frames = 1.6 s) and one video without audio."""
    root = tmp_path_factory.mktemp("stica_audio")
    for name, extra in (("av", ["--audio"]), ("mute", [])):
        args = ["synth", str(root / name), "--train", "6" if extra else "1", "--test", "0", "--task",
                "appearance", "--frames", "40", "-q", *extra]  # fmt: skip
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
    mute = next((root / "mute" / "videos").glob("*/*.mp4"))
    dest = root / "av" / "videos" / mute.parent.name / ("mute_" + mute.name)
    shutil.copy(mute, dest)
    return root / "av" / "videos"


def test_cli_trains_with_audio_and_counts_the_video_without_audio(av_videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "stica_av.pt"
    res = CliRunner().invoke(app, ["pretrain", "stica", str(av_videos), "--out", str(out), "--audio", *SMALL])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())  # rich wraps at the console width (which differs under xdist)
    assert "audio-visual" in said and "2 steps" in said and "1 videos without audio left out of L_va" in said
    state = torch.load(out.with_name(out.name + ".state"), weights_only=False)
    assert state["config"]["audio"] and state["audio"] is not None
    # every parameter of the audio encoder (the last ones given to SGD) has a momentum buffer: gradients
    # reached all of them, the stem included
    n_params = len(state["optimizer"]["param_groups"][0]["params"])
    audio_params = sum(1 for k in state["audio"] if "running" not in k and "num_batches" not in k)
    assert n_params > audio_params > 0
    assert set(range(n_params - audio_params, n_params)) <= set(state["optimizer"]["state"])
    assert len(state["no_audio"]) == 1
    # the count survives --resume (here nothing is left to train: the count is the state's)
    again = ["pretrain", "stica", str(av_videos), "--out", str(out), "--audio", "--resume", *SMALL]
    res = CliRunner().invoke(app, again)
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "0 steps" in said and "1 videos without audio left out of L_va" in said


def test_require_audio_fails_on_a_video_without_audio(av_videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "req.pt"
    args = ["pretrain", "stica", str(av_videos), "--out", str(out), "--require-audio", *SMALL]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    assert "mute_" in res.output and "has no audio stream (--require-audio)" in res.output
    assert not out.exists()


def test_the_cross_modal_term_enters_each_step_and_its_weights_apply(av_videos: Path, tmp_path: Path) -> None:
    manifest = load_manifest("folder", av_videos)
    views = dict(spatial_medium_size=2, spatial_small_size=1, temporal_medium_size=2, temporal_small_size=1)
    from vcache.learn.stica import ViewConfig

    base = dict(backbone="r2plus1d_18_narrow", clip_frames=24, frame_stride=1, input_size=32, width=32)
    base |= dict(views=ViewConfig(**views), batch_size=3, epochs=1, workers=0, lr=0.01, audio_base=8)
    steps: list[dict] = []
    cfg = PretrainSticaConfig(**base, audio=True, lambda_vv=0.0, lambda_va=1.0)
    res = pretrain_stica(manifest, tmp_path / "va.pt", cfg, device="cpu", progress=steps.append)
    assert res.steps == 2 and res.no_audio_videos in (0, 1)  # the mute video may fall in the left-over
    assert len(steps) == 2
    for info in steps:  # with lambda_vv = 0 and lambda_va = 1 the loss is L_va itself
        assert np.isfinite(info["loss_va"]) and info["loss_va"] > 0
        assert info["loss"] == pytest.approx(info["loss_va"], rel=1e-5)


def test_the_audio_window_starts_at_the_first_frame_of_the_pair() -> None:
    class Meta:
        fps, num_frames = 25.0, 40

    class Res:
        meta = Meta()
        boxes = np.array([[10 / 40, 34 / 40, 0, 0, 1, 1], [10 / 40, 34 / 40, 0, 0, 1, 1]], np.float32)

    assert clip_start_s(Res()) == pytest.approx(0.4)


def test_a_state_file_from_before_the_audio_settings_still_resumes(av_videos: Path, tmp_path: Path) -> None:
    from vcache.learn.stica import ViewConfig
    from vcache.pretrain.stica import _AUDIO_KEYS

    manifest = load_manifest("folder", av_videos)
    views = ViewConfig(
        spatial_medium_size=2, spatial_small_size=1, temporal_medium_size=2, temporal_small_size=1
    )
    base = dict(backbone="r2plus1d_18_narrow", clip_frames=24, frame_stride=1, input_size=32, width=32)
    base |= dict(views=views, batch_size=3, workers=0, lr=0.01)
    out = tmp_path / "old.pt"
    pretrain_stica(manifest, out, PretrainSticaConfig(**base, epochs=1), device="cpu", max_steps=1)
    state_file = out.with_name(out.name + ".state")
    state = torch.load(state_file, weights_only=False)
    state["config"] = {k: v for k, v in state["config"].items() if k not in _AUDIO_KEYS}
    torch.save(state, state_file)
    res = pretrain_stica(manifest, out, PretrainSticaConfig(**base, epochs=1), device="cpu", resume=True)
    assert res.epochs_done == 1
    with pytest.raises(ValueError, match="settings differ"):  # but other settings are still compared
        pretrain_stica(manifest, out, PretrainSticaConfig(**base, epochs=1, audio=True), resume=True)


def _ddp_config(**kw) -> dict:
    views = dict(spatial_medium_size=2, spatial_small_size=1, temporal_medium_size=2, temporal_small_size=1)
    base = dict(backbone="r2plus1d_18_narrow", clip_frames=24, frame_stride=1, input_size=32, width=32)
    base |= dict(views=views, batch_size=6, epochs=2, workers=0, lr=0.05, warmup_epochs=0, audio_base=8)
    return base | dict(audio=True, seed=1) | kw


def test_one_process_equals_two_under_torchrun(av_videos: Path, tmp_path: Path) -> None:
    """Batch 6 in one process vs 3 + 3 in a real torchrun job (gloo, 2 processes), with the mute video in
    the batches: same L_vv + L_va per epoch, the same trunk, head and audio encoder after 2 steps. This
    exercises the gathered candidates of both terms, the mute video's mask in the gathered L_va, the
    synchronised batch norms and the averaged gradients.

    The one process runs under torchrun too (one rank), so that both see the same environment: decoded
    crops depend on OMP_NUM_THREADS, which the helper sets to 1 (a pixel off by one in one video moved
    the first step's loss by 7e-6 when the reference ran in the test's own process)."""
    from test_distributed import torchrun

    from vcache.pretrain.stica import _state_path

    cfg = _ddp_config()
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    (ref,) = torchrun("stica", tmp_path / "res1", {"videos": str(av_videos), "out": str(one), "config": cfg,
                                                   "float64": True}, nproc=1)  # fmt: skip
    assert ref["steps"] == 2 and ref["no_audio_videos"] == 1  # seed 1 puts the mute video in a batch
    args = {"videos": str(av_videos), "out": str(two), "config": cfg, "float64": True}
    a, b = torchrun("stica", tmp_path / "res", args)
    assert a["steps"] == b["steps"] == 2 and a["no_audio_videos"] == 1
    # the progress callback runs on rank 0 only and the collectives it reports stay matched across ranks
    assert len(a["infos"]) == 2 and b["infos"] == [] and all("loss_va" in i for i in a["infos"])
    np.testing.assert_allclose(
        [h["loss"] for h in a["history"]], [h["loss"] for h in ref["history"]], rtol=1e-9
    )
    s1, s2 = (torch.load(_state_path(p), weights_only=False) for p in (one, two))
    assert s2["no_audio"] == s1["no_audio"] and len(s1["no_audio"]) == 1
    w1, w2 = (torch.load(p, weights_only=True)["state_dict"] for p in (one, two))
    for name, (x, y) in {
        "trunk": (w1, w2),
        "head": (s1["head"], s2["head"]),
        "audio": (s1["audio"], s2["audio"]),
    }.items():
        for k, v in x.items():
            if v.is_floating_point():
                torch.testing.assert_close(y[k], v, rtol=1e-7, atol=1e-9, msg=f"{name} {k}")
