"""STiCA's within-video contrastive loss (eq. 6) as pure functions, no parameters and no state.

`pair_mask`: which view pairs of T_1 x T_2 enter the loss; `n_loss_terms`: how many ordered terms that
gives; `within_video_loss`: the loss itself (embeddings in, scalar out).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F


def pair_mask(small1: Sequence[bool], small2: Sequence[bool]) -> torch.Tensor:
    """(V1, V2) bool: the pairs (alpha, beta) of T_1 x T_2 that enter eq. 6, i.e. all but small-small."""
    s1 = torch.as_tensor(list(small1), dtype=torch.bool)
    s2 = torch.as_tensor(list(small2), dtype=torch.bool)
    return ~(s1[:, None] & s2[None, :])


def n_loss_terms(m: int, n: int) -> int:
    """Ordered terms of eq. 6 for m medium and n small views per large crop: 2((m + n)^2 - n^2)."""
    return 2 * ((m + n) ** 2 - n**2)


def within_video_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    small1: Sequence[bool],
    small2: Sequence[bool],
    temperature: float = 0.5,
    all_z1: torch.Tensor | None = None,
    all_z2: torch.Tensor | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, int]:
    """STiCA eq. 6: the within-video (visual-visual) loss of a batch. Pure: tensors in, scalar out.

    z1: (B, V1, d) embeddings of the views of L_1 (T_1); z2: (B, V2, d) of L_2's views (T_2); small1/2 mark
    the small views. Pairs only across T_1 and T_2, small-small pairs excluded; each pair (alpha, beta)
    gives the two ordered terms L(v_alpha, v_beta) + L(v_beta, v_alpha) of eq. 1: cosine similarity over
    `temperature` (0.5 for the within-modal loss, Sec. 6.1), the same video's other view is the positive,
    the other videos' views are the negatives, averaged over the B videos.

    Distributed: ``all_z1`` / ``all_z2`` (N, V, d) are every rank's embeddings gathered with gradient (rank
    order) and ``offset`` is where this rank's B videos start in them: this rank's videos are the anchors,
    every rank's the candidates, so the mean over ranks (DDP's gradient average) is one process's loss.

    Returns (loss, number of ordered terms). The paper sums the terms; we return their mean (the official
    code divides by its count of terms too), so that the learning rate does not depend on the view counts.
    """
    b = z1.shape[0]
    all_z1 = z1 if all_z1 is None else all_z1
    all_z2 = z2 if all_z2 is None else all_z2
    big_n = all_z1.shape[0]
    if big_n < 2:
        raise ValueError("the within-video loss needs at least 2 videos (the others are the negatives)")
    if all_z2.shape[0] != big_n or not 0 <= offset <= big_n - b:
        raise ValueError(f"offset {offset} does not place {b} videos among {big_n} candidates")
    z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    all_z1, all_z2 = F.normalize(all_z1, dim=-1), F.normalize(all_z2, dim=-1)
    mask = pair_mask(small1, small2)  # on the host: the kept pairs are known without a device sync
    if mask.shape != (z1.shape[1], z2.shape[1]):
        raise ValueError(f"small flags {tuple(mask.shape)} do not match views {z1.shape[1]}, {z2.shape[1]}")
    a_idx, b_idx = (i.to(z1.device) for i in torch.nonzero(mask, as_tuple=True))

    def pairs(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return z[:, idx].transpose(0, 1)  # (P, videos, d): view idx[p] of every video

    # fwd[p, i, j] = sim(z1[i, alpha_p], z2[j, beta_p]) / tau: anchors from T_1, candidates from T_2
    fwd = torch.einsum("pid,pjd->pij", pairs(z1, a_idx), pairs(all_z2, b_idx)) / temperature
    bwd = torch.einsum("pid,pjd->pij", pairs(z2, b_idx), pairs(all_z1, a_idx)) / temperature
    target = (torch.arange(b, device=z1.device) + offset).repeat(len(a_idx))
    loss = (
        F.cross_entropy(fwd.reshape(-1, big_n), target) + F.cross_entropy(bwd.reshape(-1, big_n), target)
    ) / 2
    return loss, 2 * len(a_idx)
