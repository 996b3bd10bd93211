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
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Masked Clip Modelling loss of one set of clips (SCALE eq. 6), averaged over the videos.

    pred: (B, K, d) normalised head outputs of the predictor at every position; target: (B, K, d) normalised
    projections of the original clip features; mask: (B, K) bool, True where the clip was masked.

    For each masked position (b, k), a symmetric InfoNCE term:
    - prediction -> target: candidates are the projected originals of *all* B*K clips of the batch, so the
      other clips of the same video are the hard negatives (Sec. 3.3, "Contrastive reconstruction");
    - target -> prediction: candidates are the predictions at all masked positions of the batch.
    The terms are summed over the masked positions of a video (eq. 6) and averaged over the B videos (the
    paper writes its equations per video and averages over the minibatch). Unmasked predictions never
    enter the loss.
    """
    bsz, k, d = pred.shape
    flat_mask = mask.reshape(-1)
    n_masked = int(flat_mask.sum())
    if n_masked == 0:
        return pred.sum() * 0.0
    p = pred.reshape(-1, d)[flat_mask]  # (M, d)
    all_t = target.reshape(-1, d)  # (B*K, d)
    pos = torch.nonzero(flat_mask, as_tuple=False).squeeze(1)  # index of each masked clip among B*K
    p2t = F.cross_entropy(p @ all_t.t() / temperature, pos, reduction="sum")
    t = all_t[flat_mask]  # (M, d)
    t2p = F.cross_entropy(t @ p.t() / temperature, torch.arange(n_masked, device=p.device), reduction="sum")
    return (p2t + t2p) / bsz


def set_loss(cls1: torch.Tensor, cls2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SET loss (SCALE eq. 7): symmetric InfoNCE between the two sets' CLS outputs (others: negatives)."""
    return symmetric_info_nce(cls1, cls2, temperature)
