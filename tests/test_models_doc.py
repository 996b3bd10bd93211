"""The worked example of docs/models.md runs as written: a user's module through `package.module:factory`,
its declared preprocessing and weights recorded in the store; a module that declares nothing is flagged."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from vcache.store import open_store

DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"


def _example() -> str:
    (block,) = re.findall(r"```python\n(# my_models\.py\n.*?)```", DOC.read_text(), flags=re.S)
    return block


def test_the_documented_factory_extracts_and_records_its_preprocessing_and_weights(tiny_dataset, tmp_path):
    (tmp_path / "my_models.py").write_text(_example())
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    sys.path.insert(0, str(tmp_path))
    try:
        import my_models

        weights = tmp_path / "w.pt"
        torch.save(my_models.Tiny3D().state_dict(), weights)
    finally:
        sys.path.remove(str(tmp_path))
    out = tmp_path / "s.zarr"
    cmd = [
        sys.executable,
        "-m",
        "vcache.cli",
        "extract",
        str(tiny_dataset),
        "--out",
        str(out),
        "--mode",
        "eval",
    ]
    cmd += ["--layout", "1x1", "--workers", "0", "--quiet", "--backbone", "my_models:tiny3d"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    bb = open_store(out).attrs["backbone"]
    assert bb["preprocessing"]["input_size"] == 32 and bb["preprocessing"]["clip_frames"] == 4
    assert bb["source"]["preprocessing"] == "the module's preprocessing attribute"
    assert open_store(out).group["crops/features"].shape[-1] == 8
    # the same module loading its own weights: recorded as a checkpoint with its hash
    script = (
        f"import vcache.models as m; b = m.build_backbone('my_models:tiny3d', weights={str(weights)!r}); "
        "print(b.checkpoint, b.checkpoint_sha256)"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    path, sha = r.stdout.split()
    assert path == str(weights) and len(sha) == 64


def test_a_module_without_preprocessing_is_flagged(tmp_path):
    (tmp_path / "bare_models.py").write_text(
        "from torch import nn\ndef bare():\n    return nn.Conv3d(3, 4, 3)\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        from vcache.models import build_backbone, describe

        d = describe(build_backbone("bare_models:bare"))
    finally:
        sys.path.remove(str(tmp_path))
    assert d["source"] == {
        "preprocessing": "Kinetics defaults: the module declares no preprocessing",
        "weights": "not declared by the module",
    }
    assert d["checkpoint"] is None
