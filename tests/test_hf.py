"""``--backbone hf:FOLDER``: tiny ``transformers`` models of each family, saved with ``save_pretrained``, run
through real decord and a real store; the stored features equal the model's own forward."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T
from typer.testing import CliRunner
from videos import random_video, write_video

from vcache.cli.app import app
from vcache.data.crops import CropSettings
from vcache.extract.workers import DecodeTask, decode_task
from vcache.models import build_backbone, describe, save_checkpoint
from vcache.models.hf import FAMILIES
from vcache.store import load_cache, open_store

# fp16 storage rounds to a relative 2^-11 (4.9e-4); measured on these models: at most 4.8e-4 relative and
# 9.4e-4 absolute on values up to 2.6, so |stored - forward| <= 1e-3 + 1e-3 |forward| holds for each family.
ATOL = RTOL = 1e-3


def make(kind: str, folder: Path, layers: int = 1) -> Path:
    """A tiny random model of ``kind`` (hidden 32, 32 px, patch 8) saved to ``folder``."""
    c = dict(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    if kind == "videomae":
        m = T.VideoMAEModel(T.VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, **c))
    elif kind == "vjepa2":
        c.pop("intermediate_size")
        m = T.VJEPA2Model(
            T.VJEPA2Config(
                crop_size=32, patch_size=8, frames_per_clip=4, tubelet_size=2, mlp_ratio=2.0, **c,
                pred_hidden_size=32, pred_num_hidden_layers=1, pred_num_attention_heads=2,
            )
        )  # fmt: skip
    elif kind == "timesformer":
        m = T.TimesformerModel(T.TimesformerConfig(image_size=32, patch_size=8, num_frames=4, **c))
    elif kind == "vivit":
        cfg = T.VivitConfig(image_size=32, num_frames=4, tubelet_size=[2, 8, 8], **c)
        m = T.VivitModel(cfg, add_pooling_layer=False)
    elif kind == "xclip":
        m = T.XCLIPVisionModel(T.XCLIPVisionConfig(image_size=32, patch_size=8, num_frames=4, **c))
    elif kind == "clip":
        m = T.CLIPVisionModel(T.CLIPVisionConfig(image_size=32, patch_size=8, **c))
    elif kind == "dinov2":
        m = T.Dinov2Model(T.Dinov2Config(image_size=32, patch_size=8, **c))
    elif kind == "siglip":
        m = T.SiglipVisionModel(T.SiglipVisionConfig(image_size=32, patch_size=8, **c))
    else:
        raise KeyError(kind)
    m.save_pretrained(folder)
    return folder


KINDS = sorted(FAMILIES)


def own_pooled(m, x: torch.Tensor, kind: str) -> torch.Tensor:
    """The pooled vector as transformers' own forward gives it, written apart from vcache's wrapper."""
    b, _, t = x.shape[:3]
    frames = x.transpose(1, 2)
    if kind == "videomae":
        return m(frames).last_hidden_state.mean(1)  # VideoMAE: mean of all (patch) tokens
    if kind == "vjepa2":
        return m(frames, skip_predictor=True).last_hidden_state.mean(1)
    if kind in ("timesformer", "vivit"):
        return m(frames).last_hidden_state[:, 0]
    out = m(frames.reshape(b * t, *frames.shape[2:]))  # image models and X-CLIP's tower: per frame
    return out.pooler_output.reshape(b, t, -1).mean(1)


@pytest.mark.parametrize("kind", KINDS)
def test_pooled_equals_the_models_own_forward_and_layout_is_local(kind, tmp_path):
    """Pooled = transformers' forward; a 0-layer model changes only the map cell of a changed patch."""
    bb = build_backbone(f"hf:{make(kind, tmp_path / kind)}")
    p = bb.preprocessing
    x = torch.randn(2, 3, p.clip_frames, p.input_size, p.input_size)
    with torch.no_grad():
        pooled, fmap = bb(x)
        want = own_pooled(bb.model, x, kind)
    assert fmap.shape == (2, *bb.map_shape(p.clip_frames, p.input_size))
    assert bb.feature_dim == pooled.shape[1] == 32
    assert torch.allclose(pooled, want, atol=1e-5)
    # token layout: without attention a token sees only its own tubelet / patch
    flat = build_backbone(f"hf:{make(kind, tmp_path / 'flat', layers=0)}")
    t_in, y, xx = p.clip_frames - 1, 1, 2  # the last frame, patch row 1, column 2 (8 px patches)
    x2 = x.clone()
    x2[:, :, t_in, 8 * y : 8 * y + 8, 8 * xx : 8 * xx + 8] += 1.0
    with torch.no_grad():
        diff = (flat(x2)[1] - flat(x)[1]).abs().amax(dim=(0, 4))  # (T', H', W')
    t_out = t_in // flat.tubelet if FAMILIES[kind].video else t_in
    changed = (diff > 1e-5).nonzero().tolist()
    assert changed == [[t_out, y, xx]], (kind, changed)


def test_pool_override_and_checkpoint_round_trip(tmp_path):
    folder = make("clip", tmp_path / "clip")
    bb = build_backbone(f"hf:{folder}", pool="avg")
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        pooled, fmap = bb(x)
    assert torch.allclose(pooled, fmap.mean(dim=(1, 2, 3)), atol=1e-6)
    with pytest.raises(ValueError, match="not available"):
        build_backbone(f"hf:{make('siglip', tmp_path / 'sig')}", pool="cls")  # SigLIP has no CLS
    ck = tmp_path / "ck.pt"
    save_checkpoint(ck, bb)
    again = build_backbone(None, checkpoint=ck)
    assert again.name == f"hf:{folder}" and again.preprocessing == bb.preprocessing
    with torch.no_grad():
        assert torch.equal(again(x)[0], pooled)


@pytest.fixture(scope="module")
def video_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hfvid")
    write_video(root / "a" / "v0.mp4", random_video(np.random.default_rng(1), t=36, h=40, w=56), crf=18)
    return root


# every family; VideoMAE and CLIP with a preprocessor file, the rest with their processor defaults
E2E: dict[str, dict | None] = {k: None for k in KINDS}
E2E |= {
    "videomae": {
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
        "size": {"shortest_edge": 36}, "crop_size": {"height": 32, "width": 32}, "do_center_crop": True,
    },
    "clip": {"image_mean": [0.4, 0.45, 0.5], "image_std": [0.2, 0.25, 0.3], "size": {"shortest_edge": 40},
             "crop_size": {"height": 32, "width": 32}},
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(E2E))
def test_extract_stores_the_models_forward_on_the_same_pixels(kind, video_root, tmp_path):
    folder = make(kind, tmp_path / kind)
    proc = E2E[kind]
    if proc is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(proc))
    out = tmp_path / "s.zarr"
    args = ["extract", str(video_root), "-o", str(out), "--backbone", f"hf:{folder}", "--mode", "train"]
    r = CliRunner().invoke(app, [*args, "--crops", "3", "--feature-maps", "--workers", "0", "-q"])
    assert r.exit_code == 0, r.output
    st = open_store(out)
    bb = st.attrs["backbone"]
    pre, src = bb["preprocessing"], bb["source"]
    # the preprocessing the store records is the folder's
    cfg = json.loads((folder / "config.json").read_text())
    if proc is not None:
        assert pre["mean"] == proc["image_mean"] and pre["std"] == proc["image_std"]
        assert pre["input_size"] == 32 and pre["resize_short"] == proc["size"]["shortest_edge"]
        assert src["preprocessing_source"]["mean_std"] == "preprocessor_config.json image_mean/image_std"
    else:  # no preprocessor file: the processor class's defaults and config.json's size
        assert pre["input_size"] == cfg.get("image_size", cfg.get("crop_size"))
        assert src["preprocessing_source"]["mean_std"].startswith(f"{FAMILIES[kind].cls} default")
        if kind == "timesformer":
            assert pre["mean"] == [0.485, 0.456, 0.406] and pre["std"] == [0.229, 0.224, 0.225]
    fixed = cfg.get("num_frames", cfg.get("frames_per_clip"))
    assert pre["clip_frames"] == (fixed if FAMILIES[kind].video or kind == "xclip" else 8)
    assert pre["pool"] == FAMILIES[kind].pool and src["model_type"] == cfg["model_type"]
    assert bb["checkpoint"] == str(folder.resolve()) and len(bb["checkpoint_sha256"]) == 64
    # the same crops decoded again (real decord), normalised as recorded, through transformers' own model
    s = st.attrs["sampling"]
    settings = CropSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in s.items()})
    res = decode_task(DecodeTask(0, str(video_root / "a" / "v0.mp4"), "a/v0.mp4", settings))
    cache = load_cache(out)
    assert np.array_equal(cache.boxes[0], res.boxes)
    x = torch.from_numpy(res.crops).permute(0, 4, 1, 2, 3).float() / 255
    x = (x - torch.tensor(pre["mean"]).view(1, 3, 1, 1, 1)) / torch.tensor(pre["std"]).view(1, 3, 1, 1, 1)
    model = getattr(T, FAMILIES[kind].cls).from_pretrained(folder).eval()
    with torch.no_grad():
        want = own_pooled(model, x, kind).numpy()
        ours_pooled, ours_map = build_backbone(f"hf:{folder}")(x)
    assert np.allclose(cache.features[0], want, atol=ATOL, rtol=RTOL)
    assert np.allclose(st.group["crops/maps"][:].astype(np.float32), ours_map.numpy(), atol=ATOL, rtol=RTOL)
    assert np.allclose(ours_pooled.numpy(), want, atol=1e-5)


def test_vivit_rescale_offset_is_folded_into_mean_and_std(tmp_path):
    """ViViT's processor maps x to x / 127.5 - 1 and then normalises by 0.5 / 0.5; the engine's
    (x / 255 - mean) / std must give the same numbers."""
    folder = make("vivit", tmp_path / "vivit")
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "rescale_factor": 1 / 127.5, "offset": True}
        )
    )
    pre = build_backbone(f"hf:{folder}").preprocessing
    x = np.arange(256.0)
    want = (x / 127.5 - 1 - 0.5) / 0.5
    for c in range(3):
        assert np.allclose((x / 255 - pre.mean[c]) / pre.std[c], want)


def test_one_line_errors(tmp_path, video_root):
    short = make("clip", tmp_path / "short")  # config says 2 layers, the weights hold 1
    cfg = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 2}))
    empty = tmp_path / "noweights"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "clip_vision_model", "image_size": 32}))
    text = tmp_path / "bert"
    bert = T.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    T.BertModel(bert).save_pretrained(text)
    cases = {
        str(tmp_path / "missing"): "no model folder",
        str(empty): "has no weights",
        str(text): "model type 'bert'",
        str(tmp_path): "has no config.json",
        str(short): "lack 16 tensors",
    }
    for spec, msg in cases.items():
        args = ["extract", str(video_root), "-o", str(tmp_path / "s"), "--backbone", f"hf:{spec}"]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 1 and msg in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_hub_id_loads_offline_from_the_cache(tmp_path):
    """HF_HUB_OFFLINE=1: a hub id resolves from the local cache (no network), its revision is recorded."""
    snap = tmp_path / "hub" / "models--vcache-test--tiny-dino" / "snapshots" / "0123abc"
    make("dinov2", snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0123abc")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    code = (
        "import json; from vcache.models import build_backbone, describe; "
        "print(json.dumps(describe(build_backbone('hf:vcache-test/tiny-dino'))))"
    )
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["name"] == "hf:vcache-test/tiny-dino" and d["source"]["revision"] == "0123abc"
    assert d["checkpoint_sha256"] == describe(build_backbone(f"hf:{snap}"))["checkpoint_sha256"]
    code = "from vcache.models import build_backbone; build_backbone('hf:vcache-test/not-there')"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "HF_HUB_OFFLINE is set" in r.stderr
