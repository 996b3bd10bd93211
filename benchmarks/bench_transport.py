"""Transport benchmark: decoded crops across the process boundary, multiprocessing pipe against shared memory.

One spawned producer process stands for a decoding worker: for each "video" it fills a (16, 16, S, S, 3)
uint8 array (16 crops of 16 frames, a memset, so the decoding itself costs next to nothing) and hands it to
the parent, which copies it into a batch buffer (the copy the engine makes anyway when it assembles a batch
across videos). Both paths do the same fill and the same copy; only the crossing differs:

- pipe (vcache before issue 20): the worker sends the array through a ``multiprocessing`` pipe (pickled,
  written, read, unpickled);
- shm (issue 20): the worker fills a shared-memory slot of ``vcache.extract.slots.Slots`` (the engine's
  own class) and sends the slot's index; the parent copies from a view of the slot and frees it. Four
  slots are in flight, as the decode pool keeps tasks queued ahead.

Crops per second = 16 x videos / wall seconds, median of 3 runs with min and max, at 64, 112 and 224 px.
Target (issue 20): shm >= 5x the pipe at 224 px. Writes benchmarks/results/transport.json.

    python benchmarks/bench_transport.py [--mb 400]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from vcache.extract.slots import Attached, Slots

RESULTS = Path(__file__).parent / "results"
K, T = 16, 16
IN_FLIGHT = 4


def _producer(conn, shape: tuple[int, ...]) -> None:
    attached = Attached()
    own = np.empty(shape, np.uint8)
    while True:
        msg = conn.recv()
        if msg is None:
            return
        i, slot, name = msg
        if name is None:
            own[...] = i % 251
            conn.send((i, own))
        else:
            attached.array(name, shape)[...] = i % 251
            conn.send((i, slot))


def run_once(shape: tuple[int, ...], videos: int, shm: bool) -> float:
    """Seconds to move `videos` arrays of `shape` from a spawned producer into the parent's batch buffer."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_producer, args=(child, shape), daemon=True)
    proc.start()
    slots = Slots(IN_FLIGHT, shape) if shm else None
    batch = np.empty(shape, np.uint8)
    try:
        parent.send((0, None, None))  # the producer is up and imported before the clock starts
        parent.recv()
        t0 = time.perf_counter()
        sent = got = 0
        while got < videos:
            while sent < videos and sent - got < IN_FLIGHT:
                if slots is None:
                    parent.send((sent, None, None))
                else:
                    s = slots.acquire()
                    parent.send((sent, s, slots.names[s]))
                sent += 1
            i, payload = parent.recv()
            if slots is None:
                batch[...] = payload
            else:
                batch[...] = slots.view(payload)
                slots.release(payload)
            assert batch[0, 0, 0, 0, 0] == i % 251
            got += 1
        seconds = time.perf_counter() - t0
        parent.send(None)
        proc.join(timeout=10)
        return seconds
    finally:
        if proc.is_alive():
            proc.kill()
        if slots is not None:
            slots.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=400, help="data moved per run and size (default 400 MB)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "transport.json")
    args = ap.parse_args()
    rows = []
    for size in (64, 112, 224):
        shape = (K, T, size, size, 3)
        nbytes = int(np.prod(shape))
        videos = max(8, args.mb * 10**6 // nbytes)
        row = {"size": size, "video_mb": round(nbytes / 1e6, 2), "videos": videos}
        for name, shm in (("pipe", False), ("shm", True)):
            runs = [K * videos / run_once(shape, videos, shm) for _ in range(args.repeats)]
            row[name] = {
                "crops_per_s_median": round(statistics.median(runs), 1),
                "crops_per_s_min": round(min(runs), 1),
                "crops_per_s_max": round(max(runs), 1),
                "mb_per_s_median": round(statistics.median(runs) * nbytes / K / 1e6, 1),
            }
        row["speedup"] = round(row["shm"]["crops_per_s_median"] / row["pipe"]["crops_per_s_median"], 2)
        rows.append(row)
        print(
            f"{size:4d} px  pipe {row['pipe']['crops_per_s_median']:9.1f} crops/s"
            f"  shm {row['shm']['crops_per_s_median']:9.1f} crops/s  x{row['speedup']}",
            file=sys.stderr,
        )
    res = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
        "crops_per_video": K,
        "frames_per_crop": T,
        "repeats": args.repeats,
        "in_flight": IN_FLIGHT,
        "rows": rows,
        "target": {"speedup_at_224_min": 5.0},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(
        "| px | MB a video | pipe crops/s (min-max) | shm crops/s (min-max) | shm / pipe |\n"
        "|---|---|---|---|---|"
    )
    for r in rows:
        p, s = r["pipe"], r["shm"]
        print(
            f"| {r['size']} | {r['video_mb']} | {p['crops_per_s_median']:.0f} ({p['crops_per_s_min']:.0f}-"
            f"{p['crops_per_s_max']:.0f}) | {s['crops_per_s_median']:.0f} ({s['crops_per_s_min']:.0f}-"
            f"{s['crops_per_s_max']:.0f}) | {r['speedup']:.1f}x |"
        )


if __name__ == "__main__":
    main()
