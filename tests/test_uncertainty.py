"""Ctrl-U's uncertainty-weighted per-pixel loss against the formulas written out pixel by pixel."""

import math

import pytest
import torch

from mmreward.uncertainty import regression_uncertainty, segmentation_uncertainty, uncertainty_weighted_loss


def test_segmentation_uncertainty_is_kl_aux_to_primary_per_pixel():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 3, 4, generator=g)
    u = segmentation_uncertainty(p, q, u_scale=0.5)
    assert u.shape == (2, 3, 4)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                pp = [math.exp(x) for x in p[b, :, i, j].tolist()]
                qq = [math.exp(x) for x in q[b, :, i, j].tolist()]
                pp, qq = [x / sum(pp) for x in pp], [x / sum(qq) for x in qq]
                kl = sum(qc * math.log(qc / pc) for pc, qc in zip(pp, qq))
                assert u[b, i, j].item() == pytest.approx(0.5 * kl, rel=1e-5)
    assert segmentation_uncertainty(p, p).abs().max() < 1e-6  # agreement: no uncertainty
    with pytest.raises(ValueError, match="one shape"):
        segmentation_uncertainty(p, q[:, :4])


def test_regression_uncertainty():
    a, b = torch.rand(2, 1, 3, 3), torch.rand(2, 1, 3, 3)
    torch.testing.assert_close(regression_uncertainty(a, b, u_scale=0.1), 0.1 * (a - b).abs()[:, 0])
    torch.testing.assert_close(regression_uncertainty(a[:, 0], b[:, 0]), (a - b).abs()[:, 0])


def test_weighted_loss_matches_the_reference_reduction_and_passes_gradients():
    g = torch.Generator().manual_seed(1)
    loss = torch.rand(3, 2, 2, generator=g)
    u = torch.rand(3, 2, 2, generator=g).requires_grad_(True)
    pix = torch.tensor([[[1, 1], [1, 0]], [[0, 0], [0, 1]], [[1, 1], [1, 1]]], dtype=torch.bool)
    rewarded = torch.tensor([True, True, False])
    out = uncertainty_weighted_loss(loss, u, rewarded, pix)
    rewards, us = [], []
    for b in range(2):  # the rewarded samples
        cells = [(i, j) for i in range(2) for j in range(2) if pix[b, i, j]]
        rewards.append(sum(math.exp(-u[b, i, j].item()) * loss[b, i, j].item() for i, j in cells) / len(cells))
        us.append(u[b].mean().item())  # over all pixels, as the reference
    assert out.reward.item() == pytest.approx(sum(rewards) / 2, rel=1e-5)
    assert out.uncertainty.item() == pytest.approx(sum(us) / 2, rel=1e-5)
    (out.reward + out.uncertainty).backward()
    assert u.grad[2].abs().sum() == 0 and u.grad[0, 1, 1] == pytest.approx(1 / 8)  # unscored pixel: only the +U term
    # d/du of exp(-u)·L/n + u/(HW·B'): lower where the loss is higher (the weighting moves U up there)
    assert u.grad[0, 0, 0] < 1 / 8
    nothing = uncertainty_weighted_loss(loss, u.detach(), torch.zeros(3, dtype=torch.bool))
    assert nothing.reward == 0 and nothing.uncertainty == 0
    with pytest.raises(ValueError, match="sample_mask has 2 entries"):
        uncertainty_weighted_loss(loss, u, rewarded[:2])
