"""What an extraction run is asked (`ExtractOptions`) and what it answers (`ExtractReport`, exit codes)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from vcache.store import StoreError

EXIT_OK, EXIT_SOME_FAILED, EXIT_TOO_MANY_FAILED = 0, 3, 4


@dataclass
class ExtractOptions:
    init_seed: int | None = None  # seed a random-init backbone was built with (recorded in the store)
    class_families: dict[str, str] | None = None  # class -> family (e.g. synth's order / appearance / motion)
    batch_size: int = 32  # crops per forward pass
    workers: int = 1  # decoding processes; 0 decodes in this process (no deadline)
    timeout_s: float = 300.0  # per-video decoding deadline
    shared_memory: bool = True  # crops cross from the workers in shared-memory slots (False: pipes)
    max_decode_errors: int | None = None  # fail a video with more decoder messages (None: keep, warn)
    device: str = "auto"
    torch_threads: int | None = None  # CPU forward threads; None: the cores left to the workers, >= 1
    amp: bool = True  # autocast on CUDA
    overlap: bool | None = None  # launch the next batch before collecting this one; None: on CUDA only
    channels_last: bool = False  # parameters and clips in channels-last memory (vcache.extract.forward)
    compile: bool | str = False  # torch.compile the backbone's forward (True: inductor; or a backend name)
    feature_maps: bool = False
    feature_dtype: str = "float16"
    videos_per_shard: int = 64
    overwrite: bool = False
    retry_failed: bool = False
    repair: bool = False  # redo the shards whose data no longer matches their recorded digest
    max_failed_fraction: float = 0.1
    part: tuple[int, int] | None = None  # (index, count): one of `count` independent processes
    barrier_timeout_s: float = 4 * 3600.0  # torchrun: how long a rank may wait for rank 0's store creation
    run_id: str | None = None  # shared by all processes of one run (generated when None)


class StoreWriteError(StoreError):
    """The store could not be written (disk full, unwritable path): the run stops, written shards stay."""


@dataclass
class ExtractReport:
    store: str
    n_videos: int
    done: int
    failed: int
    pending: int
    processed_now: int
    clips: int
    seconds: float
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of this run's failures
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (path, warning): done but damaged
    timings: dict[str, float] = field(default_factory=dict)
    exit_code: int = EXIT_OK
    repaired: dict[int, str] = field(default_factory=dict)  # shard -> what was wrong (--repair)
    transport: str = ""  # how crops crossed from the workers: "shm", "pipe (why)" or "in process"
    stopped_by: str = ""  # "SIGINT" / "SIGTERM" when a graceful stop ended the run early


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def torch_threads(opts: ExtractOptions) -> int:
    """CPU forward threads: this rank's share of the cores (torchrun: LOCAL_WORLD_SIZE ranks a host) less one
    per decoding process, at least 1, so decoding and the forward pass do not fight over cores."""
    return opts.torch_threads or max(1, usable_cores() // local_ranks() - opts.workers)


def local_ranks() -> int:
    """Processes torchrun starts on this host (LOCAL_WORLD_SIZE), 1 outside torchrun: they share its cores."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
