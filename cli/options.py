"""Options shared by several command modules (every one with its help and default)."""

from __future__ import annotations

import typer

DEVICE_HELP = "auto (CUDA when there is one), cpu or cuda."


def check_device(device: str) -> None:
    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(f"--device {device!r}: choose auto, cpu or cuda")


SPLIT = typer.Option(1, help="Official split number (UCF-101 / HMDB-51).")
SUBSET = typer.Option("train", help="Which part of the split to pretrain on.")
