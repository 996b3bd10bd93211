"""A graceful stop of `vcache pretrain cvrl|svt`: SIGINT / SIGTERM end the run after the step in hand with
its training state saved, exit 130 / 143 with a one-line message, and `--resume` continues from that step.
Real CLI processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vcache.pretrain.loop import state_path

VC = [sys.executable, "-m", "vcache.cli"]
ARGS = {
    "cvrl": ["--clip-frames", "8", "--input-size", "32", "--batch-size", "4"],
    "svt": [
        "--global-size",
        "32",
        "--local-size",
        "16",
        "--n-local",
        "2",
        "--out-dim",
        "64",
        "--batch-size",
        "4",
    ],
}


def _cmd(method: str, videos: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [*VC, "pretrain", method, str(videos), "--out", str(out), "--steps", str(steps), *ARGS[method],
            "--workers", "0", "--save-every", "1", "--device", "cpu", "-q", *extra]  # fmt: skip


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    """Until the running command has written `path` (it must not exit first)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)


@pytest.mark.parametrize("method,sig", [("cvrl", signal.SIGINT), ("svt", signal.SIGTERM)])
def test_a_signal_saves_the_state_and_resume_continues(
    tiny_dataset: Path, tmp_path: Path, method: str, sig: int
) -> None:
    out = tmp_path / f"{method}.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _cmd(method, tiny_dataset, out, 500),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    _wait_for(state_path(out), proc)  # saved after every step: the loop (and its handler) is running
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    said = " ".join((stdout + stderr).split())
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), stdout + stderr
    assert "stopped after step" in said and "--resume" in said and "Traceback" not in stderr
    assert not out.exists()  # no final checkpoint: the run did not finish
    state = torch.load(state_path(out), weights_only=False)
    k = int(state["step"])
    assert 1 <= k < 500 and len(state["losses"]) == k
    # the resume continues from step k (to k + 2 here) and keeps the losses it had
    res = subprocess.run(
        _cmd(method, tiny_dataset, out, k + 2, "--resume"), capture_output=True, text=True, env=env
    )
    assert res.returncode == 0, res.stdout + res.stderr
    again = torch.load(state_path(out), weights_only=False)
    assert again["step"] == k + 2 and again["losses"][:k] == state["losses"] and out.exists()


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=rank (read from /proc), None until it is started."""
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in env:
            return int(child)
    return None


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tiny_dataset: Path, tmp_path: Path) -> None:
    """Only rank 1 is signalled (a scheduler's SIGTERM on one node): the ranks agree on the stop every step,
    so rank 0 saves the state at the same step and no collective is left waiting."""
    out = tmp_path / "cvrl.pt"
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", "2"]
    cmd = torchrun + ["-m", "vcache.cli"] + _cmd("cvrl", tiny_dataset, out, 500)[len(VC) :]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(state_path(out), proc)
    pid = _rank_pid(proc.pid, 1)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert "stopped after step" in " ".join(stderr.split()), stderr[-2000:]
    state = torch.load(state_path(out), weights_only=False)
    assert 1 <= state["step"] < 500 and len(state["losses"]) == state["step"]


STICA = ["--backbone", "r2plus1d_18_narrow", "--clip-frames", "24", "--input-size", "32",
         "--frame-stride", "1", "--spatial-medium-size", "2", "--spatial-small-size", "1",
         "--temporal-medium-size", "2", "--temporal-small-size", "1", "--width", "32", "--batch", "3",
         "--workers", "0", "--device", "cpu", "--bn-batches", "0"]  # fmt: skip


def test_pretrain_stica_stops_in_an_epoch_and_resume_redoes_it(tiny_dataset: Path, tmp_path: Path) -> None:
    """STiCA keeps a state per finished epoch: a signal in an epoch ends the run at once with that state
    kept and a one-line message; --resume then starts the unfinished epoch again."""
    from vcache.pretrain.stica import _state_path

    out = tmp_path / "stica.pt"
    cmd = [*VC, "pretrain", "stica", str(tiny_dataset), "--out", str(out), *STICA]
    proc = subprocess.Popen(
        [*cmd, "--epochs", "400"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _wait_for(_state_path(out), proc)  # written after each epoch
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    said = " ".join((stdout + stderr).split())
    assert proc.returncode == 130 and "stopped after epoch" in said and "Traceback" not in stderr, said
    done = torch.load(_state_path(out), weights_only=False)["epochs_done"]
    assert 1 <= done < 400
    res = subprocess.run([*cmd, "--epochs", str(done + 1), "--resume"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert torch.load(_state_path(out), weights_only=False)["epochs_done"] == done + 1
