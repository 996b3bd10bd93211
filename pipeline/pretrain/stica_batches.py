"""The batches of end-to-end STiCA: each global batch of an epoch's order, this rank's slice, decoded.

Step s of an epoch takes videos ``order[s B : (s + 1) B]`` (the tail that does not fill a batch is
dropped) and rank r of W decodes its ``B / W`` of them, in order. A video that cannot be decoded is
replaced in its slot by the next video of the list (index + 1 mod n, up to ``RETRIES`` times) and counted:
every rank keeps its share of every step, and one process with batch B and W processes with B / W each
see the same batches (a video's pair of crops depends only on the epoch's crop seed and its path).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vcache.data.crops import CropSettings
from vcache.extract.workers import DecodePool, DecodeTask
from vcache.store import DONE

RETRIES = 10


def local_batches(
    manifest: Any,
    settings: CropSettings,
    order: np.ndarray,
    batch: int,
    rank: int,
    world: int,
    pool: DecodePool,
    stats: dict[str, int],
) -> Iterator[tuple[list[int], list[Any]]]:
    """Yield (video indices, decode results) of this rank's slice of each global batch, decoding ahead in
    `pool` (each result's crops: the (2, T, S, S, 3) uint8 pair). ``stats["failed"]`` counts the failed
    decodes; a slot whose video and ``RETRIES`` next videos all fail raises ValueError."""
    if batch % world:
        raise ValueError(f"batch size {batch} is not divisible by {world} processes")
    local, n = batch // world, len(manifest.paths)
    steps = len(order) // batch
    slots = [int(order[s * batch + rank * local + j]) for s in range(steps) for j in range(local)]
    root = Path(manifest.root)
    ahead = max(2 * max(1, pool.n_workers) + 2, 2 * local)  # keep every worker busy while the trunk trains
    video_of: dict[int, int] = {}
    tries: dict[int, int] = {}
    done: dict[int, Any] = {}

    def submit(slot: int, video: int) -> None:
        video_of[slot] = video
        path = manifest.paths[video]
        pool.submit(DecodeTask(slot, str(root / path), path, settings))  # index: the slot, echoed back

    first = submitted = waiting = 0
    while first < len(slots):
        while submitted < len(slots) and waiting < ahead:
            tries[submitted] = 0
            submit(submitted, slots[submitted])
            submitted, waiting = submitted + 1, waiting + 1
        for res in pool.get(block=True):
            slot = res.index
            if res.meta.status == DONE and res.crops is not None:
                done[slot], waiting = res, waiting - 1
                continue
            stats["failed"] += 1
            tries[slot] += 1
            if tries[slot] > RETRIES:
                raise ValueError(
                    f"{manifest.paths[slots[slot]]} and the {RETRIES} videos after it could not be decoded "
                    f"(last: {res.meta.reason or 'failed'})"
                )
            submit(slot, (video_of[slot] + 1) % n)
        while first + local <= len(slots) and all(first + j in done for j in range(local)):
            ids = range(first, first + local)
            yield [video_of[i] for i in ids], [done.pop(i) for i in ids]
            first += local
