"""A graceful stop for extraction: the first SIGINT or SIGTERM asks the run to stop at the next safe point.

The engine then submits no more videos, runs the backbone on the crops it already holds, writes every
video that finished (a partly done shard keeps its finished videos; the rest stay pending) and releases
its locks and claims; a rerun of the same command redoes only the pending videos. A second signal stops
at once (KeyboardInterrupt), with SIGKILL's guarantees: whole shards written before it are kept.
"""

from __future__ import annotations

import signal
import sys
import threading

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # the shell's 128 + signal number


class GracefulStop:
    """Context manager that turns SIGINT / SIGTERM into a request (`requested`, `signal_name`).

    Handlers are only installed from the main thread (Python's rule); elsewhere this does nothing."""

    def __init__(
        self,
        announce: bool = True,
        message: str = "stopping after the crops in hand; finished videos are written",
    ):
        self.signal_name = ""
        self.announce = announce
        self.message = message
        self._old: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return bool(self.signal_name)

    def _handle(self, signum: int, frame) -> None:
        if self.signal_name:  # the second signal: stop now
            self._restore()
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopped at once")
        self.signal_name = signal.Signals(signum).name
        if self.announce:
            print(
                f"\n{self.signal_name}: {self.message} (send it again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

    def _restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
