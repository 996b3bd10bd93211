"""Precise batch-norm statistics (vcache.learn.precise_bn) and their use at the end of `pretrain stica`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vcache.learn.precise_bn import recompute_bn_stats
from vcache.runtime.distributed import convert_batchnorm


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 2, 1))


def _batches(k: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)  # batches with different means, so the weighting shows
    return [torch.randn(2, 3, 4, 5, 5, generator=g) * (1 + i) + 2 * i for i in range(k)]


@pytest.mark.parametrize("dist", [False, True], ids=["BatchNorm", "DistBatchNorm"])
def test_statistics_are_the_equal_weight_average_of_the_batches(dist: bool) -> None:
    net = _net()
    if dist:
        net = convert_batchnorm(net, torch.device("cpu"))
    net.eval()
    conv, bn = net[0], net[1]
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "tracked" not in k}
    batches = _batches()
    with torch.no_grad():  # the reference: per-batch statistics of the conv output, averaged equally
        acts = [conv(x) for x in batches]
        mean = torch.stack([a.mean((0, 2, 3, 4)) for a in acts]).mean(0)
        var = torch.stack([a.var((0, 2, 3, 4), unbiased=True) for a in acts]).mean(0)
    n = recompute_bn_stats(net, batches, net)
    assert n == 3
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-5)
    assert bn.momentum == 0.1 and not net.training and not bn.training  # left as they were
    for k, v in weights.items():
        assert torch.equal(net.state_dict()[k], v), k


def test_no_batches_keeps_the_statistics() -> None:
    net = _net()
    net.train()
    net(_batches(1)[0])
    before = (net[1].running_mean.clone(), net[1].running_var.clone())
    assert recompute_bn_stats(net, [], net) == 0
    assert torch.equal(net[1].running_mean, before[0]) and torch.equal(net[1].running_var, before[1])
    assert net.training


def test_pretrain_stica_ends_with_statistics_that_fit_its_weights(tiny_dataset, tmp_path) -> None:
    """A short run at a high learning rate: with precise BN the saved trunk in eval mode gives features on
    the scale train mode gives on the same clips; the running averages alone (bn_batches 0) do not."""
    from vcache.data.datasets import load_manifest
    from vcache.learn.stica import ViewConfig
    from vcache.models import build_backbone
    from vcache.pretrain.stica import PretrainSticaConfig, pretrain_stica

    manifest = load_manifest("folder", tiny_dataset)
    views = ViewConfig(
        spatial_medium_size=2, spatial_small_size=1, temporal_medium_size=2, temporal_small_size=1
    )
    x = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (6, 3, 24, 32, 32)).astype(np.float32))
    ratios = {}
    for bn in (0, 3):
        cfg = PretrainSticaConfig(backbone="r2plus1d_18_narrow", clip_frames=24, frame_stride=1,
                                  input_size=32, views=views, width=32, epochs=2, batch_size=2, lr=0.2,
                                  warmup_epochs=0, workers=0, bn_batches=bn)  # fmt: skip
        out = tmp_path / f"bn{bn}.pt"
        res = pretrain_stica(manifest, out, cfg, device="cpu")
        assert res.bn_batches == bn
        trunk = build_backbone(None, checkpoint=out)
        with torch.no_grad():
            trunk.train()
            _, train_map = trunk(x)
            trunk.eval()
            _, eval_map = trunk(x)
        ratios[bn] = float(eval_map.std() / train_map.std())
    assert 0.5 < ratios[3] < 2.0, ratios
    assert not 0.5 < ratios[0] < 2.0, ratios
