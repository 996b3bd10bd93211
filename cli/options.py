"""Options shared by several command modules (every one with its help and default)."""

from __future__ import annotations

import typer

DEVICE_HELP = "auto (CUDA when there is one), cpu or cuda."


def check_device(device: str) -> None:
    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(f"--device {device!r}: choose auto, cpu or cuda")


SPLIT = typer.Option(1, help="Official split number (UCF-101 / HMDB-51).")
SUBSET = typer.Option("train", help="Which part of the split to pretrain on.")


# -- parsers of `vcache extract`'s options ---------------------------------------------------------------
def parse_part(part: str | None) -> tuple[int, int] | None:
    if part is None:
        return None
    try:
        i, n = (int(v) for v in part.split("/"))
    except ValueError:
        raise typer.BadParameter(f"--part {part!r}: expected I/N such as 0/4") from None
    if not 0 <= i < n:
        raise typer.BadParameter(f"--part {part!r}: need 0 <= I < N")
    return i, n


def parse_workers(workers: str) -> int:
    """``auto``: the cores this process may use, less one for the forward pass, split among the ranks that
    torchrun starts on this host (``LOCAL_WORLD_SIZE``), at least 1; else a count >= 0."""
    if workers == "auto":
        from vcache.extract.options import local_ranks, usable_cores

        return max(1, (usable_cores() - 1) // local_ranks())
    try:
        n = int(workers)
    except ValueError:
        raise typer.BadParameter(f"--workers {workers!r}: auto or a number >= 0") from None
    if n < 0:
        raise typer.BadParameter(f"--workers {workers!r}: auto or a number >= 0")
    return n


def parse_threads(threads: str) -> int | None:
    """``auto``: None, the engine's rule (vcache.extract.options.torch_threads); else a count >= 1."""
    if threads == "auto":
        return None
    if not threads.isdigit() or int(threads) < 1:
        raise typer.BadParameter(f"--torch-threads {threads!r}: auto or a number >= 1")
    return int(threads)
