"""STiCA's audio side: the ResNet-9 audio encoder with its projection, and the cross-modal loss of eq. 7 as a
pure function (against a loop reference, split like DDP, and under a few optimisation steps)."""

from __future__ import annotations

import math

import pytest
import torch

from vcache.models.audio_resnet import AudioEncoder, AudioResNet9, count_layers
from vcache.pretrain.losses import cross_modal_loss, nce, stica_total


def test_resnet9_shapes_on_the_papers_257_by_199_spectrogram() -> None:
    enc = AudioEncoder().eval()
    assert count_layers(enc.trunk) == 9
    x = torch.randn(2, 1, 257, 199)
    with torch.no_grad():
        assert enc.trunk.feature_map(x).shape == (2, 512, 9, 7)
        assert enc.embed(x).shape == (2, 512)
        z = enc(x)
    assert z.shape == (2, 256)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2))
    assert enc(x[:, 0]).shape == (2, 256)  # (B, F, T) is taken as one channel
    assert AudioResNet9(base=8).out_dim == 64
    # the head is GDT's MLP 512 -> 512 -> 256
    linears = [m for m in enc.proj.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 256)]


def loop_nce(anchors: torch.Tensor, cands: torch.Tensor, tau: float, offset: int = 0) -> float:
    """Eq. 1 written out with Python loops (cosine similarity, positive j = offset + i)."""

    def cos(x, y):
        return float(x @ y) / (float(x.norm()) * float(y.norm()))

    total = 0.0
    for i in range(anchors.shape[0]):
        s = [cos(anchors[i], cands[j]) / tau for j in range(cands.shape[0])]
        total -= s[offset + i] - math.log(sum(math.exp(v) for v in s))
    return total / anchors.shape[0]


def test_cross_modal_loss_equals_the_loop_reference_of_its_four_terms() -> None:
    g = torch.Generator().manual_seed(0)
    v1, v2, a = (torch.randn(6, 16, generator=g, dtype=torch.float64) for _ in range(3))
    ref = (loop_nce(v1, a, 0.1) + loop_nce(v2, a, 0.1) + loop_nce(a, v1, 0.1) + loop_nce(a, v2, 0.1)) / 4
    assert float(cross_modal_loss(v1, v2, a)) == pytest.approx(ref, rel=1e-9)
    assert float(nce(v1, a, 0.1)) == pytest.approx(loop_nce(v1, a, 0.1), rel=1e-9)
    assert float(nce(v1, a, 0.1)) != pytest.approx(float(nce(a, v1, 0.1)), rel=1e-3)  # not symmetric
    # perfectly aligned modalities (a = v1 = v2, far apart across videos) give a loss near 0
    eye = torch.eye(6, dtype=torch.float64)
    assert float(cross_modal_loss(eye, eye, eye)) < 1e-3
    assert float(stica_total(torch.tensor(2.0), torch.tensor(4.0))) == 3.0
    assert float(stica_total(torch.tensor(2.0), None)) == 1.0
    assert float(stica_total(torch.tensor(2.0), torch.tensor(4.0), 1.0, 0.25)) == 3.0


def test_split_batches_with_gathered_candidates_average_to_the_whole_batch_loss() -> None:
    """What DDP sees: each rank's anchors against every rank's candidates, its offset; the mean over ranks
    equals the single-process loss, values and gradients."""
    g = torch.Generator().manual_seed(1)
    base = [torch.randn(8, 12, generator=g, dtype=torch.float64) for _ in range(3)]
    whole = [t.clone().requires_grad_() for t in base]
    cross_modal_loss(*whole).backward()
    split = [t.clone().requires_grad_() for t in base]
    parts = [
        cross_modal_loss(
            *(t[r * 4 : (r + 1) * 4] for t in split),
            all_v1=split[0],
            all_v2=split[1],
            all_a=split[2],
            offset=4 * r,
        )
        for r in range(2)
    ]
    loss = (parts[0] + parts[1]) / 2
    loss.backward()
    torch.testing.assert_close(loss, cross_modal_loss(*base))
    for w, s in zip(whole, split, strict=True):
        torch.testing.assert_close(w.grad, s.grad)
    with pytest.raises(ValueError):
        cross_modal_loss(base[0][:4], base[1][:4], base[2][:4], all_v1=base[0], all_a=base[2], offset=6)


def test_a_few_steps_of_audio_encoder_and_video_projection_lower_the_cross_modal_loss() -> None:
    torch.manual_seed(0)
    enc = AudioEncoder(base=8)
    video = torch.nn.Linear(32, 256)
    spec = torch.randn(8, 1, 64, 48)  # the 257 x 199 shapes are checked above; small here for speed
    f1, f2 = torch.randn(8, 32), torch.randn(8, 32)
    opt = torch.optim.Adam(list(enc.parameters()) + list(video.parameters()), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = cross_modal_loss(video(f1), video(f2), enc(spec))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def test_videos_without_audio_are_masked_out_of_every_term_also_when_split_over_ranks() -> None:
    """A mute video is a row whose audio embedding is a placeholder: with its mask the loss (and gradient)
    equals the loss of the videos with audio alone, in one process and split over 2 "ranks" whose shares
    of the mute videos differ (each rank's sum over its valid anchors / the global count, x the world)."""
    g = torch.Generator().manual_seed(2)
    base = [torch.randn(8, 12, generator=g, dtype=torch.float64) for _ in range(3)]
    base[2][[1, 2, 6]] = 0.0  # rows 1, 2 (rank 0) and 6 (rank 1) have no audio
    valid = torch.ones(8, dtype=torch.bool)
    valid[[1, 2, 6]] = False
    keep = torch.nonzero(valid).flatten()
    ref_in = [t[keep].clone().requires_grad_() for t in base]
    ref = cross_modal_loss(*ref_in)
    ref.backward()
    whole = cross_modal_loss(*base, valid=valid)
    torch.testing.assert_close(whole, ref.detach())
    split = [t.clone().requires_grad_() for t in base]
    parts = [
        2
        * cross_modal_loss(
            *(t[r * 4 : (r + 1) * 4] for t in split),
            all_v1=split[0],
            all_v2=split[1],
            all_a=split[2],
            offset=4 * r,
            valid=valid[r * 4 : (r + 1) * 4],
            all_valid=valid,
            denominator=int(valid.sum()),
        )
        for r in range(2)
    ]
    loss = (parts[0] + parts[1]) / 2
    loss.backward()
    torch.testing.assert_close(loss, ref.detach())
    for r, s in zip(ref_in, split, strict=True):
        torch.testing.assert_close(s.grad[keep], r.grad)
        assert float(s.grad[~valid].abs().sum()) == 0.0  # nothing flows to or from a mute video
