"""Uncertainty-weighted per-pixel reward losses (Ctrl-U), usable with any per-pixel reward.

The reward model reads the condition back from two generations under the same condition (a primary and an
auxiliary one); where its two readings disagree it is unreliable, and the per-pixel reward loss is
down-weighted there:

    L = λ_r · masked_mean(exp(−U) ⊙ L_rew) + mean(U)

with ``U`` the per-pixel disagreement, not detached, so the ``+ U`` term keeps ``U`` from growing just to
dodge the loss (the ``loss·e^{−s} + s`` form of learned aleatoric weighting).

* segmentation: ``U = u_scale · Σ_c p_aux,c · (log p_aux,c − log p_primary,c)`` = ``u_scale · KL(aux ‖ primary)``
  per pixel (the reference's ``KLDivLoss(log_softmax(primary), softmax(aux))`` summed over classes);
* dense regression (edges, depth): ``U = u_scale · |ĉ1 − ĉ2|`` (mean over channels). The reference code keeps
  ``u_scale`` 1 inside the weight and scales only the regulariser (``+ u_scale · mean(U)``) for these.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


def segmentation_uncertainty(primary: torch.Tensor, aux: torch.Tensor, u_scale: float = 1.0) -> torch.Tensor:
    """``[B, H, W]``: ``u_scale`` · KL(softmax(aux) ‖ softmax(primary)) over the class dim of logits ``[B, C, H, W]``."""
    if primary.shape != aux.shape or primary.dim() != 4:
        raise ValueError(f"expected two [B, C, H, W] logit maps of one shape, got {tuple(primary.shape)} and "
                         f"{tuple(aux.shape)}")
    log_p, log_q = F.log_softmax(primary, 1), F.log_softmax(aux, 1)
    return u_scale * (log_q.exp() * (log_q - log_p)).sum(1)


def regression_uncertainty(primary: torch.Tensor, aux: torch.Tensor, u_scale: float = 1.0) -> torch.Tensor:
    """``[B, H, W]``: ``u_scale`` · |primary − aux| of two dense predictions ``[B, H, W]`` or ``[B, C, H, W]``
    (mean over channels)."""
    if primary.shape != aux.shape or primary.dim() not in (3, 4):
        raise ValueError(f"expected two [B, (C,) H, W] maps of one shape, got {tuple(primary.shape)} and "
                         f"{tuple(aux.shape)}")
    d = (primary - aux).abs()
    return u_scale * (d.mean(1) if d.dim() == 4 else d)


class WeightedLoss(NamedTuple):
    reward: torch.Tensor  #: scalar: the uncertainty-weighted reward loss
    uncertainty: torch.Tensor  #: scalar: the mean uncertainty, the regulariser


def uncertainty_weighted_loss(loss_map: torch.Tensor, u: torch.Tensor, sample_mask: torch.Tensor | None = None,
                              pixel_mask: torch.Tensor | None = None) -> WeightedLoss:
    """The two terms of Ctrl-U's loss ``λ_r · reward + uncertainty``, as the reference computes them.

    ``loss_map``, ``u``: ``[B, H, W]``, the per-pixel reward loss and uncertainty. ``pixel_mask`` ``[B, H, W]``
    (optional): the scored pixels (ignored labels off). ``sample_mask`` ``[B]`` (optional): the rewarded samples
    (``t ≤ t_max``). Per sample, ``reward_b`` = mean over the scored pixels of ``exp(−u) ⊙ loss_map`` and
    ``u_b`` = mean of ``u`` over all pixels; both are then averaged over the rewarded samples (sums divided by
    the count + 1e-10, so a batch with nothing rewarded gives zeros).
    """
    if loss_map.shape != u.shape or loss_map.dim() != 3:
        raise ValueError(f"loss_map {tuple(loss_map.shape)} and u {tuple(u.shape)} must both be [B, H, W]")
    pm = torch.ones_like(loss_map) if pixel_mask is None else pixel_mask.to(loss_map.dtype)
    if pm.shape != loss_map.shape:
        raise ValueError(f"pixel_mask {tuple(pixel_mask.shape)} must be the loss map's shape {tuple(loss_map.shape)}")
    sm = torch.ones(len(loss_map), dtype=loss_map.dtype, device=loss_map.device) if sample_mask is None \
        else sample_mask.to(loss_map.dtype).reshape(-1)
    if len(sm) != len(loss_map):
        raise ValueError(f"sample_mask has {len(sm)} entries for a batch of {len(loss_map)}")
    per_sample = (pm * torch.exp(-u) * loss_map).sum((1, 2)) / (pm.sum((1, 2)) + 1e-10)
    n = sm.sum() + 1e-10
    return WeightedLoss((sm * per_sample).sum() / n, (sm * u.mean((1, 2))).sum() / n)
