"""Issue 20, the forward side: overlap (the next batch assembled while a forward thread runs the current one),
channels-last memory (3-D and 2-D weights), torch.compile with one batch shape, and the CLI's transport and
thread flags. Each writes the same store as the default engine, on real files and real workers."""

from __future__ import annotations

import torch
from test_hf import make
from test_reliability import _assert_same_store
from typer.testing import CliRunner

from vcache.cli.app import app
from vcache.data.crops import CropSettings
from vcache.data.datasets import load_manifest
from vcache.extract import ExtractOptions, extract
from vcache.extract.forward import to_channels_last
from vcache.models import build_backbone
from vcache.store import open_store

S = CropSettings(
    mode="train", clip_frames=8, frame_stride=2, input_size=64, resize_short=73, crops_per_video=3
)


def _model(name: str = "r3d_18_narrow"):
    torch.manual_seed(0)
    return build_backbone(name)


def test_overlap_channels_last_and_compile_write_the_default_store(tiny_dataset, tmp_path):
    """Batches of 4 over videos of 3 crops and one video a shard: the last batch is short (compile pads it),
    and the engine waits for written shards before it claims more (overlap must flush there)."""
    manifest = load_manifest("folder", tiny_dataset)
    base = dict(workers=1, batch_size=4, videos_per_shard=1)
    ref = extract(manifest, tmp_path / "ref.zarr", _model(), S, ExtractOptions(**base))
    assert ref.done == 6
    variants = {
        "overlap": dict(overlap=True),
        "channels_last": dict(channels_last=True, overlap=True),
        "compiled": dict(compile="eager"),  # dynamo's graph capture without inductor's minutes of codegen
    }
    torch._dynamo.reset()
    for name, kw in variants.items():
        rep = extract(manifest, tmp_path / f"{name}.zarr", _model(), S, ExtractOptions(**base, **kw))
        assert rep.done == 6 and rep.clips == 18, name
        _assert_same_store(tmp_path / "ref.zarr", tmp_path / f"{name}.zarr")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # the short batch was padded
    assert open_store(tmp_path / "channels_last.zarr").attrs["compute"]["channels_last"] is True


def test_channels_last_by_weight_rank(tmp_path, tiny_dataset):
    """3-D convolutions take channels_last_3d; a per-frame image model's 4-D weights take channels_last."""
    r3d = _model()
    assert to_channels_last(r3d) is True
    conv3 = next(m for m in r3d.modules() if isinstance(m, torch.nn.Conv3d))
    assert conv3.weight.is_contiguous(memory_format=torch.channels_last_3d)
    clip = build_backbone(f"hf:{make('clip', tmp_path / 'clip')}")
    assert to_channels_last(clip) is False
    conv = next(m for m in clip.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    manifest = load_manifest("folder", tiny_dataset)
    s = CropSettings(
        mode="train", clip_frames=8, frame_stride=2, input_size=32, resize_short=32, crops_per_video=2
    )
    folder = tmp_path / "clip"
    for cl in (False, True):
        opts = ExtractOptions(workers=0, batch_size=4, channels_last=cl)
        assert extract(manifest, tmp_path / f"c{cl}.zarr", build_backbone(f"hf:{folder}"), s, opts).done == 6
    _assert_same_store(tmp_path / "cFalse.zarr", tmp_path / "cTrue.zarr")


def test_cli_transport_threads_and_overlap_flags(tiny_dataset, tmp_path):
    args = ["extract", str(tiny_dataset), "-o", str(tmp_path / "s.zarr"), "--backbone", "cvrl_r3d_narrow"]
    args += ["--crops", "2", "--clip-frames", "4", "-q"]
    r = CliRunner().invoke(app, [*args, "--transport", "pipe", "--torch-threads", "1", "--overlap", "on"])
    assert r.exit_code == 0, r.output
    assert "crops via pipe, 1 torch threads" in " ".join(r.output.split())
    for bad in (["--transport", "tcp"], ["--torch-threads", "0"], ["--overlap", "maybe"]):
        r = CliRunner().invoke(app, [*args, "--overwrite", *bad])
        assert r.exit_code == 2, (bad, r.output)
