"""Self-supervised pretraining losses as pure functions: CVRL's InfoNCE, SVT's (DINO's) self-distillation.

Everything here maps tensors to tensors (or updates a teacher in place, for the EMA), with no process
group: the trainers in :mod:`vcache.pretrain` gather what crosses ranks and pass it in, so each function
can be tested alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "cross_modal_loss",
    "dino_cross_entropy",
    "dino_loss",
    "ema_update",
    "info_nce",
    "nce",
    "stica_total",
    "svt_pairs",
    "teacher_targets",
    "update_center",
]


def info_nce(
    z1: Tensor,
    z2: Tensor,
    temperature: float = 0.1,
    all_z1: Tensor | None = None,
    all_z2: Tensor | None = None,
    offset: int = 0,
) -> Tensor:
    """CVRL's InfoNCE (eq. 1, the NT-Xent of SimCLR) over the 2N clips of a batch.

    ``z1[i]`` and ``z2[i]`` are the two clips of video i (n, d). Every one of the 2n local clips is an
    anchor; its positive is the other clip of its video, and its denominator runs over all 2N clips of the
    (global) batch except itself, positive included (eq. 1). Similarities are cosines (vectors are
    L2-normalised here). The loss is the mean over the anchors (both directions, as SimCLR's code does;
    the paper writes the sum over one view and is silent on the symmetric form).

    Distributed: ``all_z1`` / ``all_z2`` (N, d) are the clips of every rank gathered *with gradient*
    (rank order), and ``offset`` is where this rank's n videos start in them. Then the mean over the local
    anchors, averaged over ranks by DDP, equals the single-process loss of the whole batch.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must be equal (n, d) matrices, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    all_z1 = z1 if all_z1 is None else all_z1
    all_z2 = z2 if all_z2 is None else all_z2
    n, big_n = z1.shape[0], all_z1.shape[0]
    if not 0 <= offset <= big_n - n:
        raise ValueError(f"offset {offset} does not place {n} clips inside a batch of {big_n}")
    q = F.normalize(torch.cat([z1, z2]), dim=1)
    k = F.normalize(torch.cat([all_z1, all_z2]), dim=1)
    logits = q @ k.T / temperature  # (2n, 2N)
    local = torch.arange(n, device=z1.device) + offset
    self_idx = torch.cat([local, local + big_n])
    pos_idx = torch.cat([local + big_n, local])
    rows = torch.arange(2 * n, device=z1.device)
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[rows, self_idx] = True
    logits = logits.masked_fill(is_self, float("-inf"))
    return F.cross_entropy(logits, pos_idx)


def teacher_targets(teacher_logits: Tensor, center: Tensor, temperature: float) -> Tensor:
    """DINO's centring and sharpening: softmax((t - c) / tau_t), detached (no gradient to the teacher)."""
    return F.softmax((teacher_logits.detach() - center) / temperature, dim=-1)


def dino_cross_entropy(targets: Tensor, student_logits: Tensor, student_temp: float) -> Tensor:
    """Mean over the batch of H(targets, softmax(student / tau_s)) (SVT eq. 2-3, DINO eq. 1)."""
    return torch.sum(-targets * F.log_softmax(student_logits / student_temp, dim=-1), dim=-1).mean()


def svt_pairs(
    n_global: int, n_local: int, motion: bool = True, cross_view: bool = True
) -> list[tuple[int, int]]:
    """(teacher view, student view) pairs of SVT's loss.

    Teacher views are the globals ``0..n_global-1``; student views are the globals (same indices) then the
    locals (``n_global..``). Motion correspondence (SVT Sec. 3.2.1) pairs each teacher global with the
    *other* student globals (different frame rates); cross-view correspondence (Sec. 3.2.2) pairs each
    teacher global with every local. A view is never paired with itself (official code: ``v == iq``).
    The switches reproduce the paper's Table 4 (l->g only, g->g only, both).
    """
    pairs: list[tuple[int, int]] = []
    for t in range(n_global):
        if motion:
            pairs += [(t, s) for s in range(n_global) if s != t]
        if cross_view:
            pairs += [(t, n_global + j) for j in range(n_local)]
    if not pairs:
        raise ValueError(
            "SVT loss has no terms: enable motion and/or cross-view with at least 2 globals / 1 local"
        )
    return pairs


def dino_loss(
    student_logits: Sequence[Tensor],
    teacher_logits: Sequence[Tensor],
    center: Tensor,
    pairs: Sequence[tuple[int, int]],
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> Tensor:
    """SVT's loss L = L_lg + L_gg (eq. 1-3) as DINO computes it: the mean over ``pairs`` of
    H(centred, sharpened teacher view, student view).

    ``student_logits[s]`` / ``teacher_logits[t]`` are (B, K) head outputs of view s / t. The temperatures
    are the official SVT code's defaults (student 0.1, teacher 0.04, no teacher-temperature warm-up).
    Averaging over the pairs instead of SVT eq. 3's plain sum follows the official code.
    """
    targets = [teacher_targets(t, center, teacher_temp) for t in teacher_logits]
    terms = [dino_cross_entropy(targets[t], student_logits[s], student_temp) for t, s in pairs]
    return torch.stack(terms).mean()


def update_center(center: Tensor, batch_mean: Tensor, momentum: float = 0.9) -> Tensor:
    """DINO's centre EMA: c <- m c + (1 - m) mean of the teacher outputs (over every rank's batch).

    Momentum 0.9 is the official SVT / DINO value. Returns the new centre (the caller keeps it).
    """
    return center * momentum + batch_mean.detach() * (1 - momentum)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- m teacher + (1 - m) student for every parameter; buffers are copied from the student.

    The teacher is an exponential moving average of the student (SVT Sec. 3.2, BYOL / DINO); the
    momentum rises from 0.996 to 1 on a cosine schedule in the official code.
    """
    for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
        pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)
    for bt, bs in zip(teacher.buffers(), student.buffers(), strict=True):
        bt.copy_(bs)


def nce(
    anchors: Tensor,
    candidates: Tensor,
    temperature: float = 0.1,
    offset: int = 0,
    valid: Tensor | None = None,
    all_valid: Tensor | None = None,
    denominator: int | None = None,
) -> Tensor:
    """STiCA eq. 1, L(alpha, beta): mean over the n anchors z_alpha,i of
    -log softmax_j(sim(z_alpha,i, z_beta,j) / tau) at j = offset + i (cosine similarity).

    ``candidates`` (N, d) are the beta embeddings of the whole (possibly gathered, rank order) batch, and
    ``offset`` is where this rank's n videos start in them; the other videos are the negatives.
    Masks (a video without audio has no audio embedding): ``valid`` (n,) bool marks the anchors that count,
    ``all_valid`` (N,) the candidates; the others are left out of every softmax. With ``denominator`` the
    loss is the sum over the valid anchors divided by it (the valid anchors of every rank), else their mean.
    """
    n, big_n = anchors.shape[0], candidates.shape[0]
    if anchors.dim() != 2 or candidates.dim() != 2 or anchors.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"anchors {tuple(anchors.shape)} and candidates {tuple(candidates.shape)}: need (n, d), (N, d)"
        )
    if big_n < 2 or not 0 <= offset <= big_n - n:
        raise ValueError(f"offset {offset} does not place {n} anchors among {big_n} candidates (need N >= 2)")
    logits = F.normalize(anchors, dim=1) @ F.normalize(candidates, dim=1).T / temperature
    target = torch.arange(n, device=anchors.device) + offset
    if all_valid is not None:
        logits = logits.masked_fill(~all_valid[None, :], float("-inf"))
    if valid is None and denominator is None:
        return F.cross_entropy(logits, target)
    rows = torch.arange(n, device=anchors.device) if valid is None else torch.nonzero(valid).flatten()
    total = F.cross_entropy(logits[rows], target[rows], reduction="sum")
    return total / (denominator if denominator is not None else max(1, len(rows)))


def cross_modal_loss(
    v1: Tensor,
    v2: Tensor,
    a: Tensor,
    temperature: float = 0.1,
    all_v1: Tensor | None = None,
    all_v2: Tensor | None = None,
    all_a: Tensor | None = None,
    offset: int = 0,
    valid: Tensor | None = None,
    all_valid: Tensor | None = None,
    denominator: int | None = None,
) -> Tensor:
    """STiCA's cross-modal term (Sec. 3.4, eq. 7): L_va = L(v_L1, a) + L(v_L2, a) + L(a, v_L1) + L(a, v_L2),
    each term eq. 1 at tau = 0.1 (appendix), returned as the mean of the four terms.

    v1, v2: (n, d) embeddings of the two uncropped large crops of each video; a: (n, d) its audio embedding.
    The paper writes the sum; the official code averages the four (0.5 x the symmetric GDT loss of each
    crop, each itself 0.5 x (av + va)), which keeps it on the scale of the within-video mean. The official
    code also detaches the candidates (gradients only through the anchors); we keep eq. 1's full gradient.
    Distributed: ``all_*`` are the gathered (with gradient, rank order) embeddings and ``offset`` is this
    rank's start, as in :func:`info_nce`. Videos without audio: ``valid`` / ``all_valid`` / ``denominator``
    as in :func:`nce` leave them out of every term (their rows of ``a`` are ignored).
    """
    if not v1.shape == v2.shape == a.shape:
        raise ValueError(
            f"v1, v2 and a must have one shape, got {tuple(v1.shape)}, {tuple(v2.shape)}, {tuple(a.shape)}"
        )
    all_v1 = v1 if all_v1 is None else all_v1
    all_v2 = v2 if all_v2 is None else all_v2
    all_a = a if all_a is None else all_a
    if valid is not None and all_valid is None:
        all_valid = valid
    masks = dict(valid=valid, all_valid=all_valid, denominator=denominator)
    terms = [
        nce(v1, all_a, temperature, offset, **masks),
        nce(v2, all_a, temperature, offset, **masks),
        nce(a, all_v1, temperature, offset, **masks),
        nce(a, all_v2, temperature, offset, **masks),
    ]
    return torch.stack(terms).mean()


def stica_total(l_vv: Tensor, l_va: Tensor | None, lambda_vv: float = 0.5, lambda_va: float = 0.5) -> Tensor:
    """STiCA eq. 7: lambda_vv L_vv + lambda_va L_va, both weights 0.5 (the official code's
    ``cross_modal_alpha`` = 0.5 weighs (1 - alpha) L_vv + alpha L_va). Without audio (``l_va`` None) only
    lambda_vv L_vv, as the official code when the cross-modal weight is 0."""
    return lambda_vv * l_vv if l_va is None else lambda_vv * l_vv + lambda_va * l_va
