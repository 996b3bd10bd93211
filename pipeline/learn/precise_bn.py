"""Batch-norm statistics recomputed for the weights a run ends with ("precise BN").

During training a batch norm's running mean and variance are an exponential average (momentum 0.1) of
the batch statistics of *earlier* weights. After a short run at a high learning rate they no longer
describe what the final weights produce, and eval mode, which normalises with them, can give features
far off scale (issue 17: a STiCA trunk after 8 SGD steps at lr 0.05 gave eval-mode features near 1e6,
train mode about 3). The remedy, as in PySlowFast's ``calculate_and_update_precise_bn`` (Wu and
Johnson, "Rethinking batch in BatchNorm", 2021): freeze the weights, reset the statistics and average
the batch statistics of a few forward passes in train mode with equal weight (momentum None).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

_BN = nn.modules.batchnorm._BatchNorm


def batch_norms(model: nn.Module) -> list[_BN]:
    """Every batch norm of `model` that keeps running statistics."""
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable[Any], forward: Callable[[Any], Any]) -> int:
    """Reset the running statistics of every batch norm of `model` and set them to the equal-weight
    average of the batch statistics of ``forward(batch)`` over `batches`, run in train mode without
    gradient. Weights, momentum and the train / eval flag are left as they were. Returns the number of
    batches used (0: `model` has no batch norm or `batches` was empty, statistics untouched)."""
    bns = batch_norms(model)
    if not bns:
        return 0
    saved = [(m, m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in bns]  # fmt: skip
    modes = {m: m.training for m in model.modules()}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: batch k enters with weight 1 / k
    model.train()
    n = 0
    try:
        for batch in batches:
            forward(batch)
            n += 1
    finally:
        for m, momentum, mean, var, tracked in saved:
            m.momentum = momentum
            if n == 0:  # nothing seen: keep the statistics the model had
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(tracked)
        for m, training in modes.items():
            m.training = training
    return n
