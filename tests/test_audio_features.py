"""`vcache extract --audio-backbone`: each row's audio embedding beside its video feature (issue 17), and
`vcache probe --features audio|both` reading it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vcache.cli.app import app
from vcache.data.audio import clip_spectrogram
from vcache.models.audio_resnet import AudioEncoder
from vcache.store import StoreError, load_cache, open_store

STICA = ["--backbone", "r2plus1d_18_narrow", "--clip-frames", "24", "--input-size", "32", "--frame-stride",
         "1", "--spatial-medium-size", "2", "--spatial-small-size", "1", "--temporal-medium-size", "2",
         "--temporal-small-size", "1", "--width", "32", "--epochs", "1", "--batch", "3", "--workers", "0",
         "--device", "cpu", "--lr", "0.01", "--audio-base", "8", "--audio", "--bn-batches", "1"]  # fmt: skip


def _ok(args: list[str]) -> str:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def av(tmp_path_factory) -> dict[str, Path]:
    """6 train / 3 test synthetic videos with tone tracks, a video without audio in train, and the .state
    file of a one-epoch `pretrain stica --audio` run on them."""
    root = tmp_path_factory.mktemp("audio_features")
    _ok(["synth", str(root / "av"), "--train", "6", "--test", "3", "--task", "appearance", "--frames", "40",
         "-q", "--audio"])  # fmt: skip
    _ok(["synth", str(root / "mute"), "--train", "1", "--test", "0", "--task", "appearance", "--frames", "40",
         "-q"])  # fmt: skip
    mute = next((root / "mute" / "videos").glob("*/*.mp4"))
    shutil.copy(mute, root / "av" / "videos" / mute.parent.name / ("mute_" + mute.name))
    splits = root / "av" / "splits"
    with (splits / "trainlist01.txt").open("a") as f:
        f.write(f"{mute.parent.name}/mute_{mute.name}\n")
    data = ["--format", "ucf101", "--annotations", str(splits)]
    ckpt = root / "stica.pt"
    _ok(
        [
            "pretrain",
            "stica",
            str(root / "av" / "videos"),
            *data,
            "--subset",
            "train",
            "--out",
            str(ckpt),
            *STICA,
        ]
    )
    return {
        "videos": root / "av" / "videos",
        "splits": splits,
        "state": Path(str(ckpt) + ".state"),
        "root": root,
    }


def _extract(av: dict[str, Path], subset: str, out: Path, *extra: str) -> str:
    args = ["extract", str(av["videos"]), "--format", "ucf101", "--annotations", str(av["splits"]),
            "--subset", subset, "--backbone", "r2plus1d_18_narrow", "--out", str(out), "--mode", "eval",
            "--layout", "2x1", "--clip-frames", "8", "--input-size", "32", "--workers", "0", "-q",
            *extra]  # fmt: skip
    return " ".join(_ok(args).split())


@pytest.fixture(scope="module")
def stores(av) -> dict[str, Path]:
    """Train and test eval-mode stores with audio features (read only: a test that changes one copies it)."""
    import vcache.extract.audio as audio_mod

    out = {"train": av["root"] / "train.zarr", "test": av["root"] / "test.zarr"}
    loads: list[str] = []
    real = audio_mod.load_audio_encoder
    with pytest.MonkeyPatch.context() as mp:  # count how often the .state file is read
        mp.setattr(audio_mod, "load_audio_encoder", lambda f: loads.append(str(f)) or real(f))
        for subset, path in list(out.items()):
            text = _extract(av, subset, path, "--audio-backbone", str(av["state"]))
            out[f"{subset}_text"] = text
    out["state_loads"] = len(loads)
    return out


def test_the_state_file_is_read_once_a_command(stores) -> None:
    assert stores["state_loads"] == 2  # two extract commands (train, test), one read each


def test_rows_carry_the_audio_embedding_of_their_own_window(av, stores) -> None:
    assert "1 videos without an audio stream" in stores["train_text"]
    st = open_store(stores["train"])
    audio = np.asarray(st.group["crops/audio"][:], dtype=np.float32)
    assert audio.shape == (st.group["crops/features"].shape[0], 64)  # 8 x audio base
    starts, counts = st.row_spans()
    paths = st.paths()
    state = torch.load(av["state"], weights_only=False)
    # precise BN covered the audio encoder too: its statistics come from the 1 recalibration batch, not
    # from the run's 2 training steps
    tracked = [int(v) for k, v in state["audio"].items() if k.endswith("num_batches_tracked")]
    assert tracked and set(tracked) == {1}
    enc = AudioEncoder(base=8)
    enc.load_state_dict(
        {k[len("encoder.") :]: v for k, v in state["audio"].items() if k.startswith("encoder.")}
    )
    enc.eval()
    checked = 0
    for i, p in enumerate(paths):
        rows = audio[starts[i] : starts[i] + counts[i]]
        if p.split("/")[-1].startswith("mute_"):
            assert np.isnan(rows).all()
            continue
        assert np.isfinite(rows).all() and counts[i] == 2
        # the second clip of the video: its window starts at that row's first frame
        r = int(starts[i]) + 1
        t0 = float(st.group["crops/start_s"][r])
        assert t0 > 0
        spec = clip_spectrogram(str(av["videos"] / p), t0)
        with torch.no_grad():
            want = enc.embed(torch.from_numpy(spec)[None, None]).numpy()[0]
        np.testing.assert_allclose(audio[r], want, rtol=2e-2, atol=2e-2)  # float16 in the store
        checked += 1
    assert checked == 6
    assert st.attrs["audio_backbone"]["no_audio_videos"] == 1
    assert st.attrs["audio_backbone"]["dim"] == 64


def test_probes_read_audio_video_or_both(stores, tmp_path) -> None:
    tr, te = stores["train"], stores["test"]
    video, audio, both = (load_cache(tr, features=f) for f in ("video", "audio", "both"))
    dv = open_store(tr).feature_dim
    assert (
        video.features.shape[2] == dv and audio.features.shape[2] == 64 and both.features.shape[2] == dv + 64
    )
    np.testing.assert_array_equal(both.features[..., :dv], video.features)
    np.testing.assert_array_equal(both.features[..., dv:], audio.features)
    mute = [j for j, p in enumerate(audio.paths) if "mute_" in p]
    assert len(mute) == 1 and not audio.features[mute[0]].any()  # no audio stream: zeros
    for feats in ("audio", "both"):
        res = tmp_path / f"probe_{feats}"
        _ok(["probe", "linear", str(tr), str(te), "--out", str(res), "--epochs", "2", "--lr", "1e-3",
             "--wd", "0", "--features", feats, "--device", "cpu"])  # fmt: skip
        assert list(res.glob("linear-*.json"))
    plain = tmp_path / "plain.zarr"
    shutil.copytree(te, plain)
    del open_store(plain, mode="r+").group["crops/audio"]
    with pytest.raises(StoreError, match="no audio features"):
        load_cache(plain, features="audio")


def test_a_file_without_an_audio_encoder_is_refused_before_extracting(av, tmp_path) -> None:
    ckpt = av["state"].with_suffix("")  # the video checkpoint, not its .state
    res = CliRunner().invoke(app, ["extract", str(av["videos"]), "--out", str(tmp_path / "x.zarr"),
                                   "--audio-backbone", str(ckpt), "-q"])  # fmt: skip
    assert res.exit_code == 2 and "holds no audio encoder" in res.output
    assert not (tmp_path / "x.zarr").exists()


def test_verify_checks_the_audio_array(stores, tmp_path) -> None:
    out = tmp_path / "v.zarr"
    shutil.copytree(stores["test"], out)
    assert CliRunner().invoke(app, ["verify", str(out)]).exit_code == 0
    st = open_store(out, mode="r+")
    del st.group["crops/audio"]
    res = CliRunner().invoke(app, ["verify", str(out)])
    assert res.exit_code != 0 and "crops/audio" in res.output
