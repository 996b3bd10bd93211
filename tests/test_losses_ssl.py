"""The pretraining losses as pure functions: values against a direct computation, and optimisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vcache.pretrain.losses import dino_loss, ema_update, info_nce, svt_pairs, teacher_targets, update_center


def _info_nce_reference(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """CVRL eq. 1 written out anchor by anchor over the 2N clips."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        sims = [float(z[i] @ z[k]) / tau for k in range(2 * n) if k != i]
        total += -(float(z[i] @ z[pos]) / tau - math.log(sum(math.exp(s) for s in sims)))
    return total / (2 * n)


def test_info_nce_matches_the_formula_and_its_sharded_form() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    full = info_nce(z1, z2, 0.1)
    assert float(full) == pytest.approx(_info_nce_reference(z1, z2, 0.1), rel=1e-5)
    # two ranks holding 3 videos each, with every clip as a negative: the mean equals the whole batch
    halves = [info_nce(z1[s], z2[s], 0.1, z1, z2, offset=s.start) for s in (slice(0, 3), slice(3, 6))]
    assert float(sum(halves) / 2) == pytest.approx(float(full), rel=1e-6)


def test_info_nce_is_low_for_matching_pairs_and_optimisation_lowers_it() -> None:
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    assert info_nce(z, z + 0.01 * torch.randn_like(z)) < info_nce(z, torch.randn(8, 16))
    z1 = nn.Parameter(torch.randn(8, 16))
    z2 = nn.Parameter(torch.randn(8, 16))
    opt = torch.optim.Adam([z1, z2], lr=0.05)
    start = float(info_nce(z1, z2).detach())
    for _ in range(30):
        opt.zero_grad()
        info_nce(z1, z2).backward()
        opt.step()
    assert float(info_nce(z1, z2).detach()) < 0.5 * start


def test_teacher_targets_centre_and_sharpen() -> None:
    t = torch.tensor([[1.0, 2.0, 3.0]])
    p = teacher_targets(t, torch.zeros(1, 3), 0.04)
    assert float(p.sum()) == pytest.approx(1.0)
    assert float(p.max()) > float(F.softmax(t, -1).max())  # sharper than temperature 1
    flat = teacher_targets(t, t.clone(), 0.04)  # centred on itself: uniform
    assert torch.allclose(flat, torch.full_like(flat, 1 / 3))


def test_svt_pairs_follow_the_switches() -> None:
    assert svt_pairs(2, 3, motion=True, cross_view=False) == [(0, 1), (1, 0)]
    assert svt_pairs(2, 2, motion=False, cross_view=True) == [(0, 2), (0, 3), (1, 2), (1, 3)]
    both = svt_pairs(2, 2)
    assert len(both) == 6 and all(t != s for t, s in both)
    with pytest.raises(ValueError):
        svt_pairs(2, 0, motion=False, cross_view=True)


def test_dino_loss_decreases_when_the_student_learns_the_teacher() -> None:
    torch.manual_seed(0)
    teacher = [torch.randn(4, 10), torch.randn(4, 10)]
    student = [nn.Parameter(torch.randn(4, 10)) for _ in range(4)]
    center = torch.zeros(1, 10)
    pairs = svt_pairs(2, 2)
    opt = torch.optim.Adam(student, lr=0.1)
    start = float(dino_loss(student, teacher, center, pairs).detach())
    for _ in range(40):
        opt.zero_grad()
        loss = dino_loss(student, teacher, center, pairs)
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.7 * start
    assert all(p.grad is not None for p in student)


def test_update_center_is_an_ema() -> None:
    c = update_center(torch.zeros(1, 3), torch.ones(1, 3), momentum=0.9)
    assert torch.allclose(c, torch.full((1, 3), 0.1))


def test_ema_update() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(3, 2), nn.Linear(3, 2)
    t0 = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), t0, strict=True))
    ema_update(teacher, student, 0.75)
    for pt, p0, ps in zip(teacher.parameters(), t0, student.parameters(), strict=True):
        assert torch.allclose(pt, 0.75 * p0 + 0.25 * ps)
    ema_update(teacher, student, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters(), strict=True))
