"""The SCALE losses as pure functions: values against explicit formulas, symmetry, masking, optimisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vcache.learn.losses import info_nce, mcm_loss, set_loss, symmetric_info_nce


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _ref_info_nce(a: np.ndarray, b: np.ndarray, tau: float) -> float:
    """SCALE eq. 2 averaged over i, written out with explicit loops."""
    total = 0.0
    for i in range(len(a)):
        logits = [a[i] @ b[j] / tau for j in range(len(b))]
        total += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    return total / len(a)


def test_info_nce_matches_formula_and_is_scalar():
    a, b = _unit(6, 4, seed=1), _unit(6, 4, seed=2)
    out = info_nce(a, b, 0.2)
    assert out.shape == ()
    assert out.item() == pytest.approx(_ref_info_nce(a.numpy(), b.numpy(), 0.2), rel=1e-9)


def test_symmetric_info_nce_sums_both_directions_and_is_symmetric():
    a, b = _unit(5, 3, seed=3), _unit(5, 3, seed=4)
    s = symmetric_info_nce(a, b, 0.2)
    assert s.item() == pytest.approx((info_nce(a, b, 0.2) + info_nce(b, a, 0.2)).item())
    assert s.item() == pytest.approx(symmetric_info_nce(b, a, 0.2).item())
    assert info_nce(a, b, 0.2).item() != pytest.approx(info_nce(b, a, 0.2).item())
    assert set_loss(a, b, 0.2, "paper").item() == pytest.approx(s.item())  # eq. 3: the sum
    assert set_loss(a, b, 0.2).item() == pytest.approx(s.item() / 2)  # official code: the mean


def test_info_nce_is_small_for_aligned_pairs_and_near_log_n_for_random():
    a = _unit(32, 64, seed=5)
    assert info_nce(a, a, 0.05).item() < 1e-3
    b = _unit(32, 64, seed=6)
    assert abs(info_nce(a, b, 10.0).item() - math.log(32)) < 0.05


def _ref_mcm(pred: np.ndarray, tgt: np.ndarray, mask: np.ndarray, tau: float) -> float:
    """Loop reference of the MCM loss: per masked (b, k), pred->all targets + target->all masked preds."""
    bsz, k, _ = pred.shape
    all_t = tgt.reshape(bsz * k, -1)
    masked = [(b, i) for b in range(bsz) for i in range(k) if mask[b, i]]
    preds_m = np.stack([pred[b, i] for b, i in masked])
    total = 0.0
    for m, (b, i) in enumerate(masked):
        lp = all_t @ pred[b, i] / tau
        total += -(lp[b * k + i] - np.log(np.exp(lp).sum()))
        lt = preds_m @ tgt[b, i] / tau
        total += -(lt[m] - np.log(np.exp(lt).sum()))
    return total / bsz


def _ref_mcm_official(pred: np.ndarray, tgt: np.ndarray, mask: np.ndarray, tau: float) -> float:
    """The official code's dense loss with loops: mean over masked (b, k) of pred -> all targets only."""
    bsz, k, _ = pred.shape
    all_t = tgt.reshape(bsz * k, -1)
    terms = []
    for b in range(bsz):
        for i in range(k):
            if mask[b, i]:
                lp = all_t @ pred[b, i] / tau
                terms.append(-(lp[b * k + i] - np.log(np.exp(lp).sum())))
    return float(np.mean(terms))


def test_mcm_matches_loop_reference():
    pred, tgt = _unit(3, 5, 4, seed=7), _unit(3, 5, 4, seed=8)
    mask = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)
    out = mcm_loss(pred, tgt, mask, 0.2, "paper")
    assert out.shape == ()
    assert out.item() == pytest.approx(_ref_mcm(pred.numpy(), tgt.numpy(), mask.numpy(), 0.2), rel=1e-9)
    off = mcm_loss(pred, tgt, mask, 0.2)
    assert off.item() == pytest.approx(
        _ref_mcm_official(pred.numpy(), tgt.numpy(), mask.numpy(), 0.2), rel=1e-9
    )


def test_mcm_scores_only_masked_predictions():
    pred, tgt = _unit(2, 6, 8, seed=9), _unit(2, 6, 8, seed=10)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 1] = mask[1, 4] = True
    base = mcm_loss(pred, tgt, mask, 0.2).item()
    other = pred.clone()
    other[~mask] = _unit(10, 8, seed=11)  # change every unmasked prediction
    assert mcm_loss(other, tgt, mask, 0.2).item() == pytest.approx(base)
    other = pred.clone()
    other[0, 1] = _unit(8, seed=12)  # change a masked prediction
    assert mcm_loss(other, tgt, mask, 0.2).item() != pytest.approx(base)
    # unmasked targets are negatives (the other clips of the video), so they do count
    other_t = tgt.clone()
    other_t[0, 0] = pred[0, 1]
    assert mcm_loss(pred, other_t, mask, 0.2).item() > base
    assert mcm_loss(pred, tgt, torch.zeros_like(mask), 0.2).item() == 0.0


def test_a_few_optimisation_steps_lower_the_losses():
    torch.manual_seed(0)
    pred = torch.randn(4, 6, 8, requires_grad=True)
    tgt = torch.randn(4, 6, 8)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, :2] = True
    c1, c2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)
    opt = torch.optim.Adam([pred, c1], lr=0.1)

    def total() -> torch.Tensor:
        return mcm_loss(F.normalize(pred, dim=-1), F.normalize(tgt, dim=-1), mask, 0.2) + set_loss(
            F.normalize(c1, dim=-1), F.normalize(c2, dim=-1), 0.2
        )

    first = total().item()
    for _ in range(20):
        opt.zero_grad()
        total().backward()
        opt.step()
    assert total().item() < 0.5 * first
