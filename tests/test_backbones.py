"""Backbone registry: torchvision parity, shapes, pooling, checkpoints, user factories, the video ViT."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vcache.models import (
    KINETICS_MEAN,
    KINETICS_STD,
    Preprocessing,
    build_backbone,
    describe,
    file_sha256,
    list_backbones,
    load_checkpoint,
    save_checkpoint,
)
from vcache.models.vit import interpolate_pos_embed

FIXTURE = Path(__file__).parent / "data" / "torchvision-video-state-dicts.json"  # from shared/fixtures
STANDARD = ["r3d_18", "r2plus1d_18", "mc3_18"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny inputs gain nothing from threads, and on the shared 2-core machine OpenMP's spinning threads
    made a 30 ms forward take 0.5-3 s when other processes were busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tv_fixture() -> dict:
    if not FIXTURE.exists():
        pytest.skip(f"{FIXTURE} not present")
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def standard_models() -> dict:
    """Each 18-layer model built once (building r3d_18 alone takes ~1 s on 2 cores)."""
    torch.manual_seed(0)
    return {n: build_backbone(n) for n in STANDARD}


def _fixture_state_dict(spec: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the fixture's names, shapes and dtypes, as torchvision would save them."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape, dtype in spec["params"]:
        if dtype == "int64":
            sd[key] = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.05
    return sd


def _clip(frames: int, size: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def _assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    """allclose (torch.testing.assert_close costs ~2 s of DTensor imports on its first call)."""
    assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5), (a, b)


# ---------------------------------------------------------------- registry, shapes, pooling


def test_registry_and_unknown_name():
    names = list_backbones()
    for n in STANDARD + ["r3d_18_narrow", "r2plus1d_18_narrow", "vit_video_tiny", "vit_video_small"]:
        assert n in names
    with pytest.raises(KeyError, match="r3d_18_narrow"):
        build_backbone("no_such_backbone")


@pytest.mark.parametrize("name", ["r3d_18_narrow", "r2plus1d_18_narrow"])
def test_narrow_shapes_and_defaults(name):
    model = build_backbone(name)
    assert not model.training
    pre = model.preprocessing
    assert (pre.input_size, pre.resize_short, pre.clip_frames, pre.frame_stride) == (64, 73, 16, 2)
    assert model.feature_stages == 3 and model.feature_dim == 32 + 64 + 128 == 224
    with torch.no_grad():
        pooled, fmap = model(_clip(16, 64, batch=2))
    assert pooled.shape == (2, 224)
    assert fmap.shape == (2, 2, 4, 4, 128) == (2, *model.map_shape(16, 64))
    # the last 128 pooled entries are the last stage's map, averaged
    _assert_close(pooled[:, -128:], fmap.mean(dim=(1, 2, 3)))
    d = describe(model)
    assert d["feature_dim"] == 224 and d["feature_stages"] == 3 and d["config"] == {"feature_stages": 3}
    assert d["n_params"] == sum(p.numel() for p in model.parameters())
    json.dumps(d)  # store attributes must be JSON


def test_feature_stages_and_pool():
    torch.manual_seed(0)
    one = build_backbone("r3d_18_narrow", feature_stages=1)
    assert one.feature_dim == 128
    x = _clip(8, 32, batch=2)
    with torch.no_grad():
        avg, fmap = one(x)
        one.preprocessing.pool = "max"
        mx, fmap2 = one(x)
    assert avg.shape == mx.shape == (2, 128)
    _assert_close(avg, fmap.mean(dim=(1, 2, 3)))
    _assert_close(mx, fmap2.amax(dim=(1, 2, 3)))
    assert not torch.allclose(avg, mx)
    # pool= on build_backbone sets it; a pool the model does not have is refused
    assert build_backbone("r2plus1d_18_narrow", pool="max").preprocessing.pool == "max"
    with pytest.raises(ValueError, match="cls"):
        build_backbone("r3d_18_narrow", pool="cls")
    with pytest.raises(ValueError, match="feature_stages"):
        build_backbone("r3d_18_narrow", feature_stages=5)


@pytest.mark.parametrize("name", STANDARD)
def test_standard_shapes_and_preprocessing(standard_models, name):
    model = standard_models[name]
    pre = model.preprocessing
    assert pre.mean == KINETICS_MEAN and pre.std == KINETICS_STD
    assert (pre.input_size, pre.resize_short, pre.clip_frames, pre.frame_stride, pre.pool) == (
        112,
        128,
        16,
        2,
        "avg",
    )
    assert model.feature_stages == 1 and model.feature_dim == 512
    with torch.no_grad():
        pooled, fmap = model(_clip(8, 48))
    assert pooled.shape == (1, 512)
    assert fmap.shape[1:] == model.map_shape(8, 48)
    # MC3 keeps time in layers 2-4; R3D and R(2+1)D halve it three times
    assert model.map_shape(16, 112) == ((16, 7, 7, 512) if name == "mc3_18" else (2, 7, 7, 512))


def test_r2plus1d_32_frames_gives_4x7x7_map(standard_models):
    """STiCA's map: R(2+1)D-18 on 32 frames at 112 px -> 4 x 7 x 7 x 512 (DESIGN.md). A CPU pass at that size
    takes ~9 s here, so time and space are checked by two real passes, each small in the other axis."""
    model = standard_models["r2plus1d_18"]
    assert model.map_shape(32, 112) == (4, 7, 7, 512) and model.map_shape(16, 112) == (2, 7, 7, 512)
    with torch.no_grad():
        assert model(_clip(32, 32))[1].shape == (1, 4, 2, 2, 512)
        assert model(_clip(4, 112))[1].shape == (1, 1, 7, 7, 512)
    assert build_backbone("mc3_18", clip_frames=32).preprocessing.clip_frames == 32


# ---------------------------------------------------------------- torchvision parity and checkpoints


@pytest.mark.parametrize("name", STANDARD)
def test_state_dict_matches_torchvision(tv_fixture, standard_models, name):
    spec = tv_fixture["models"][name]
    model = standard_models[name]
    got = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert got == spec["params"]
    assert sum(p.numel() for p in model.parameters()) == spec["num_params"]


@pytest.mark.parametrize("name", STANDARD)
def test_torchvision_checkpoint_loads(tmp_path, tv_fixture, standard_models, name):
    sd = _fixture_state_dict(tv_fixture["models"][name])
    path = tmp_path / f"{name}.pth"
    torch.save(sd, path)
    model = build_backbone(name, checkpoint=path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    x = _clip(4, 32)
    with torch.no_grad():
        loaded, _ = model(x)
        fresh, _ = standard_models[name](x)
    assert torch.isfinite(loaded).all()
    assert not torch.allclose(loaded, fresh)
    assert model.checkpoint == str(path) and model.checkpoint_sha256 == file_sha256(path)


@pytest.fixture(scope="module")
def mc3_state_dict(tv_fixture) -> dict[str, torch.Tensor]:
    return _fixture_state_dict(tv_fixture["models"]["mc3_18"], seed=3)


@pytest.mark.parametrize(
    "layout",
    ["state_dict", "model", "module_prefix", "state_dict_module_prefix", "dino_backbone_and_head"],
)
def test_checkpoint_layouts(tmp_path, mc3_state_dict, layout):
    sd = mc3_state_dict
    pre = {f"module.{k}": v for k, v in sd.items()}
    obj = {
        "state_dict": {"state_dict": sd, "epoch": 3},
        "model": {"model": sd, "optimizer": {"lr": 0.1}},
        "module_prefix": pre,
        "state_dict_module_prefix": {"state_dict": pre},
        "dino_backbone_and_head": {
            "backbone": {**{f"backbone.{k}": v for k, v in sd.items()}, "head.weight": torch.zeros(2, 2)}
        },
    }[layout]
    torch.save(obj, tmp_path / "ck.pt")
    ck = load_checkpoint(tmp_path / "ck.pt")
    assert ck["backbone"] is None and ck["preprocessing"] is None and ck["config"] == {}
    assert list(ck["state_dict"]) == list(sd)
    model = build_backbone("mc3_18", checkpoint=tmp_path / "ck.pt")
    assert torch.equal(model.state_dict()["layer4.1.conv2.0.weight"], sd["layer4.1.conv2.0.weight"])


def test_wrong_architecture_is_a_clear_error(tmp_path):
    save_checkpoint(tmp_path / "r3d.pt", build_backbone("r3d_18_narrow"))
    with pytest.raises(ValueError, match=r"missing \(e\.g\. stem\.3\.weight.*unexpected") as err:
        build_backbone("r2plus1d_18_narrow", checkpoint=tmp_path / "r3d.pt")
    assert "r3d_18_narrow" in str(err.value)  # names what the checkpoint was saved from
    with pytest.raises(ValueError, match=r"fc\.weight \(400, 128\) vs \(10, 128\)"):
        build_backbone("r3d_18_narrow", checkpoint=tmp_path / "r3d.pt", num_classes=10)
    torch.save({"epoch": 1, "args": {"lr": 0.1}}, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="no state dict"):
        load_checkpoint(tmp_path / "junk.pt")


def test_foreign_checkpoint_may_lack_fc_but_nothing_else(tmp_path):
    sd = build_backbone("r3d_18_narrow").state_dict()
    torch.save({k: v for k, v in sd.items() if not k.startswith("fc.")}, tmp_path / "nofc.pt")
    build_backbone("r3d_18_narrow", checkpoint=tmp_path / "nofc.pt")
    torch.save({k: v for k, v in sd.items() if k != "layer2.0.conv1.0.weight"}, tmp_path / "hole.pt")
    with pytest.raises(ValueError, match="layer2.0.conv1.0.weight"):
        build_backbone("r3d_18_narrow", checkpoint=tmp_path / "hole.pt")


def test_save_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = build_backbone("r2plus1d_18_narrow", feature_stages=2, pool="max", clip_frames=8)
    model.train()
    with torch.no_grad():  # move BN statistics and weights away from their init
        model(_clip(8, 32, batch=2))
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    path = tmp_path / "pretrained.pt"
    save_checkpoint(path, model, config={"method": "cvrl", "data": tmp_path})
    ck = load_checkpoint(path)
    assert ck["backbone"] == "r2plus1d_18_narrow"
    assert ck["config"]["method"] == "cvrl" and ck["config"]["data"] == str(tmp_path)
    assert ck["config"]["backbone_kwargs"] == {"feature_stages": 2}

    again = build_backbone(None, checkpoint=path)  # name, kwargs and preprocessing come from the file
    assert again.name == "r2plus1d_18_narrow" and again.feature_stages == 2
    assert again.preprocessing == model.preprocessing
    assert (again.preprocessing.pool, again.preprocessing.clip_frames) == ("max", 8)
    x = _clip(8, 32, batch=2, seed=5)
    with torch.no_grad():
        a, fa = model(x)
        b, fb = again(x)
    assert torch.equal(a, b) and torch.equal(fa, fb)
    d = describe(again)
    assert d["checkpoint"] == str(path) and d["feature_dim"] == 64 + 128
    assert d["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert build_backbone("r2plus1d_18_narrow", checkpoint=path, pool="avg").preprocessing.pool == "avg"


def test_preprocessing_dict_round_trip():
    pre = Preprocessing(KINETICS_MEAN, KINETICS_STD, 112, 128, 32, 2, "max")
    assert Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre


# ---------------------------------------------------------------- user factories


USER_MODULE = """
import torch
from torch import nn
from vcache.models import r3d_18_narrow

class Plain(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.backbone = nn.Conv3d(3, width, 3, stride=(1, 2, 2), padding=1)

    def forward(self, x):
        return torch.relu(self.backbone(x))

def plain(width=8):
    net = Plain(width)
    net.preprocessing = {"mean": [0.5] * 3, "std": [0.25] * 3, "input_size": 32, "resize_short": 36,
                         "clip_frames": 4, "frame_stride": 1, "pool": "avg"}
    return net

def registry_model():
    return r3d_18_narrow(feature_stages=1)

def not_a_module():
    return 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_user_models.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_user_models"
    sys.modules.pop("my_user_models", None)


def test_user_factory_wraps_a_plain_module(user_module, tmp_path):
    model = build_backbone(f"{user_module}:plain", width=6)
    assert model.name == f"{user_module}:plain"
    assert model.preprocessing.input_size == 32 and model.preprocessing.mean == (0.5, 0.5, 0.5)
    with torch.no_grad():
        pooled, fmap = model(_clip(4, 32, batch=2))
    assert pooled.shape == (2, 6) and fmap.shape == (2, 4, 16, 16, 6)
    assert model.feature_dim == 6 and model.map_shape(4, 32) == (4, 16, 16, 6)
    # its checkpoint holds the user's own state dict names (a vcache file is not prefix-stripped) and
    # rebuilds identically
    save_checkpoint(tmp_path / "user.pt", model)
    assert set(load_checkpoint(tmp_path / "user.pt")["state_dict"]) == {"backbone.weight", "backbone.bias"}
    again = build_backbone(f"{user_module}:plain", checkpoint=tmp_path / "user.pt", width=6)
    with torch.no_grad():
        assert torch.equal(again(_clip(4, 32))[0], model(_clip(4, 32))[0])


def test_user_factory_returning_a_backbone_and_errors(user_module):
    model = build_backbone(f"{user_module}:registry_model")
    assert model.feature_dim == 128 and model.name == f"{user_module}:registry_model"
    with pytest.raises(ImportError, match="no_such_pkg_xyz"):
        build_backbone("no_such_pkg_xyz.models:factory")
    with pytest.raises(ImportError, match="missing_fn"):
        build_backbone(f"{user_module}:missing_fn")
    with pytest.raises(TypeError, match="int"):
        build_backbone(f"{user_module}:not_a_module")


# ---------------------------------------------------------------- video ViT


def test_interpolate_pos_embed():
    pos = torch.randn(1, 1 + 16, 8)
    assert interpolate_pos_embed(pos, (4, 4), (4, 4), prefix_tokens=1) is pos
    big = interpolate_pos_embed(pos, (4, 4), (6, 6), prefix_tokens=1)
    assert big.shape == (1, 37, 8) and torch.equal(big[:, :1], pos[:, :1])
    small = interpolate_pos_embed(pos, (4, 4), (2, 3), prefix_tokens=1)
    assert small.shape == (1, 7, 8)
    const = torch.full((1, 16, 3), 2.5)
    _assert_close(interpolate_pos_embed(const, (4, 4), (7, 5)), torch.full((1, 35, 3), 2.5))
    # time: linear, each new step samples the centre of its span (8 -> 4 averages neighbouring pairs)
    ramp = torch.arange(8.0).reshape(1, 8, 1).expand(1, 8, 2)
    _assert_close(interpolate_pos_embed(ramp, (8,), (4,))[0, :, 0], torch.tensor([0.5, 2.5, 4.5, 6.5]))
    assert interpolate_pos_embed(ramp, (8,), (16,)).shape == (1, 16, 2)
    with pytest.raises(ValueError):
        interpolate_pos_embed(pos, (4, 4), (4, 4))  # the CLS slot must be declared


def test_vit_tiny_any_frames_and_sizes():
    torch.manual_seed(0)
    model = build_backbone("vit_video_tiny")
    pre = model.preprocessing
    assert (pre.input_size, pre.clip_frames, pre.frame_stride, pre.pool) == (64, 8, 4, "cls")
    assert model.feature_dim == 192
    for frames, size in [(8, 64), (4, 32), (16, 32), (2, 96)]:  # native, fewer, more frames; larger
        with torch.no_grad():
            pooled, fmap = model(_clip(frames, size))
        assert pooled.shape == (1, 192)
        assert fmap.shape == (1, frames, size // 8, size // 8, 192) == (1, *model.map_shape(frames, size))
        assert torch.isfinite(pooled).all()
    x = _clip(4, 32)
    with torch.no_grad():
        cls, fmap = model(x)
        model.preprocessing.pool = "avg"
        avg, _ = model(x)
    _assert_close(avg, fmap.mean(dim=(1, 2, 3)))
    assert not torch.allclose(cls, avg)
    with pytest.raises(ValueError, match="multiple"):
        model(_clip(4, 36))


def test_vit_checkpoint_round_trip_keeps_architecture(tmp_path):
    model = build_backbone("vit_video_tiny", depth=2, img_size=32)
    save_checkpoint(tmp_path / "vit.pt", model, config={"method": "svt"})
    again = build_backbone("vit_video_tiny", checkpoint=tmp_path / "vit.pt")
    assert again.arch_config()["depth"] == 2 and again.preprocessing.input_size == 32
    x = _clip(8, 32)
    with torch.no_grad():
        assert torch.equal(model(x)[0], again(x)[0])


def test_vit_small_shapes():
    """The small settings at depth 1 (29 M parameters take seconds to initialise on 2 cores)."""
    model = build_backbone("vit_video_small", depth=1)
    assert model.feature_dim == 384 and model.preprocessing.input_size == 224
    assert model.preprocessing.clip_frames == 8 and model.patch_size == 16
    with torch.no_grad():
        pooled, fmap = model(_clip(2, 32))
    assert pooled.shape == (1, 384) and fmap.shape == (1, 2, 2, 2, 384) == (1, *model.map_shape(2, 32))
