"""The forward side of one extraction output: a batch of uint8 crops -> pooled features (and maps).

- Host buffers: two reused uint8 batch buffers, used in turn (page-locked on CUDA, so the copy to the device
  is asynchronous); a batch's crops are copied in once, so their shared-memory slots can go back at once.
- Overlap (``ExtractOptions.overlap``; issue 20): ``launch`` starts a batch and returns, ``result`` waits
  for it. The engine collects batch N only after launching N + 1, so the next batch is assembled while the
  current one runs. On CUDA the kernels are queued on the stream and only ``result``'s copy back waits; on
  the CPU the forward runs in one background thread (torch's kernels release the GIL). On by default on
  CUDA; off by default on the CPU, where it did not help on 2 cores (docs/store.md, "Processes").
- ``--channels-last``: parameters in channels-last memory by their rank (5-D conv weights
  ``channels_last_3d``, 4-D ``channels_last``: a 2-D backbone's weights cannot take the 3-D format), and
  the clips in ``channels_last_3d`` when the backbone has 3-D convolutions.
- ``--compile``: ``torch.compile`` of the forward, with every batch padded to ``--batch-size`` so that the
  last, smaller batch does not compile the graph again.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch


def to_channels_last(module: torch.nn.Module) -> bool:
    """Put each 4-D / 5-D parameter and buffer in channels-last memory by its rank, in place. Returns
    whether the module has 5-D (3-D convolution) weights, whose input should be ``channels_last_3d``."""
    has_3d = False
    for t in [*module.parameters(), *module.buffers()]:
        if t.dim() == 5:
            t.data = t.data.contiguous(memory_format=torch.channels_last_3d)
            has_3d = True
        elif t.dim() == 4:
            t.data = t.data.contiguous(memory_format=torch.channels_last)
    return has_3d


class BatchRunner:
    def __init__(self, backbone, device: torch.device, opts: Any, map_shape, map_dtype: torch.dtype):
        self.backbone, self.device, self.opts = backbone, device, opts
        self.map_shape, self.map_dtype = map_shape, map_dtype
        pre = backbone.preprocessing
        self.mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1, 1) * 255
        self.std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1, 1) * 255
        self.use_amp = opts.amp and device.type == "cuda"
        self.overlap = device.type == "cuda" if opts.overlap is None else bool(opts.overlap)
        self.input_format = torch.contiguous_format
        if opts.channels_last and to_channels_last(backbone):
            self.input_format = torch.channels_last_3d
        self.fn = backbone
        if opts.compile:  # True: inductor; a name: that torch.compile backend
            backend = "inductor" if opts.compile is True else opts.compile
            self.fn = torch.compile(backbone, dynamic=False, backend=backend)
        self.hosts: list[torch.Tensor | None] = [None, None]
        self.turn = 0
        self.thread: ThreadPoolExecutor | None = None

    def _host(self, n: int, shape: tuple[int, ...]) -> torch.Tensor:
        self.turn ^= 1
        h = self.hosts[self.turn]
        if h is None or h.shape[1:] != shape or len(h) < n:
            pin = self.device.type == "cuda"
            size = max(n, self.opts.batch_size)
            h = self.hosts[self.turn] = torch.empty((size, *shape), dtype=torch.uint8, pin_memory=pin)
        return h

    def _run(self, host: torch.Tensor, n: int):
        """Normalise and run one batch; returns the outputs (on the device)."""
        m = max(n, self.opts.batch_size) if self.fn is not self.backbone else n  # compiled: one shape
        x = host[:m].to(self.device, non_blocking=True)
        x = (x.permute(0, 4, 1, 2, 3).float() - self.mean) / self.std  # (B, T, S, S, 3) -> (B, 3, T, S, S)
        x = x.contiguous(memory_format=self.input_format)
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.use_amp):
            pooled, fmap = self.fn(x)
        return pooled[:n], fmap[:n]

    def launch(self, parts: list[np.ndarray]):
        """Copy the crops of one batch into a host buffer and start the forward pass. The crops' memory
        may be reused as soon as this returns."""
        n, shape = sum(len(c) for c in parts), parts[0].shape[1:]
        host = self._host(n, shape)
        np.concatenate(parts, out=host[:n].numpy())
        if self.fn is not self.backbone and n < len(host):
            host[n : self.opts.batch_size].zero_()
        if self.overlap and self.device.type == "cpu":
            if self.thread is None:  # torch's thread count is per thread: the forward thread takes the run's
                threads = torch.get_num_threads()
                self.thread = ThreadPoolExecutor(1, "vcache-forward", torch.set_num_threads, (threads,))
            return self.thread.submit(self._run, host, n)
        return self._run(host, n)

    def result(self, pending) -> tuple[np.ndarray, np.ndarray | None, float]:
        """The host arrays of a launched batch, and the seconds spent waiting for it."""
        t0 = time.perf_counter()
        pooled, fmap = pending.result() if isinstance(pending, Future) else pending
        pooled = pooled.float().cpu().numpy()
        fmaps = fmap.to(self.map_dtype).cpu().numpy() if self.map_shape else None
        return pooled, fmaps, time.perf_counter() - t0

    def close(self) -> None:
        if self.thread is not None:
            self.thread.shutdown(wait=True)
            self.thread = None
