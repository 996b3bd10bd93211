"""Contrastive losses of SCALE as pure functions (tensors in, scalar out), so they can be tested alone.

Notation follows the SCALE paper, Sec. 3.2: the heads' outputs are L2-normalised before they get here,
a per-element loss is InfoNCE with temperature tau (eq. 2), made symmetric by summing both directions
(eq. 3), and averaged over elements (eq. 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over i of -log softmax_j(a_i . b_j / tau)[i]: row i of `a` is paired with row i of `b`.

    a: (N, d), b: (N, d), both L2-normalised. SCALE eq. 2 then averaged (eq. 4).
    """
    logits = a @ b.t() / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return F.cross_entropy(logits, target)


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SCALE eq. 3-4: the mean over i of l~(A, B) + l~(B, A), i.e. both directions summed, not averaged."""
    return info_nce(a, b, temperature) + info_nce(b, a, temperature)


def mcm_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, temperature: float, form: str = "official"
) -> torch.Tensor:
    """Masked Clip Modelling loss (SCALE eq. 6) over a batch of videos.

    pred: (B, S, d) normalised head outputs of the predictor at every position; target: (B, S, d) normalised
    projections of the original clip features; mask: (B, S) bool, True where the clip was masked. S holds the
    clips of both sets of a video, so each masked prediction's candidates are the targets of all B*S clips of
    the batch: the same video's other clips (either set) are the hard negatives (Sec. 3.3).

    form "official" (the official code): prediction -> target cross-entropy only, averaged over the masked
    positions of the batch. form "paper" (eq. 3-6): both directions summed (target -> prediction has the
    predictions at all masked positions as candidates), summed over a video's masked positions and averaged
    over the B videos. Unmasked predictions never enter the loss; no masked clip gives 0.
    """
    bsz, _, d = pred.shape
    flat_mask = mask.reshape(-1)
    n_masked = int(flat_mask.sum())
    if n_masked == 0:
        return pred.sum() * 0.0
    p = pred.reshape(-1, d)[flat_mask]  # (M, d)
    all_t = target.reshape(-1, d)  # (B*S, d)
    pos = torch.nonzero(flat_mask, as_tuple=False).squeeze(1)  # index of each masked clip among B*S
    if form == "official":
        return F.cross_entropy(p @ all_t.t() / temperature, pos)
    p2t = F.cross_entropy(p @ all_t.t() / temperature, pos, reduction="sum")
    t = all_t[flat_mask]  # (M, d)
    t2p = F.cross_entropy(t @ p.t() / temperature, torch.arange(n_masked, device=p.device), reduction="sum")
    return (p2t + t2p) / bsz


def set_loss(
    cls1: torch.Tensor, cls2: torch.Tensor, temperature: float, form: str = "official"
) -> torch.Tensor:
    """SET loss (SCALE eq. 7): symmetric InfoNCE between the two sets' CLS outputs (others: negatives).
    "paper": the two directions summed (eq. 3); "official": their mean."""
    both = symmetric_info_nce(cls1, cls2, temperature)
    return both if form == "paper" else both / 2
