"""Per-denoising-step losses of D3PO and DDPO, and DDPO's per-prompt advantage normalisation.

Shapes: one call covers one denoising step of a minibatch; log-probabilities are per-dimension means
(:mod:`diffusion_align.ddim_logprob`).
"""

from __future__ import annotations

import math
from collections import defaultdict, deque

import numpy as np
import torch
import torch.nn.functional as F


def d3po_loss(logp: torch.Tensor, ref_logp: torch.Tensor, pref: torch.Tensor, beta: float = 0.1,
              eps: float = 0.1) -> torch.Tensor:
    """D3PO (Yang et al., CVPR 2024) at one step of a pair of trajectories that share prompt and ``x_T``::

        r_k = clamp(exp(log π_θ − log π_ref), 1 − ε, 1 + ε)
        L = −log σ(β · (h_0 · log r_0 + h_1 · log r_1))

    ``logp``, ``ref_logp``: ``[P, 2]``; ``pref`` ``h``: ``[P, 2]``, ``(+1, −1)`` when the first image is
    preferred, ``(−1, +1)`` when the second is, ``(0, 0)`` for a tie (constant loss, no gradient).
    Returns the mean over pairs. The clamp is taken in log space (the same values and gradients): late
    denoising steps have a small σ, so once the policy moves, ``log π_θ − log π_ref`` can exceed what
    ``exp`` can represent, and ``exp`` then clamp would give ``0 · inf = NaN`` gradients."""
    log_ratio = torch.clamp(logp - ref_logp, math.log(1 - eps), math.log(1 + eps))
    return -F.logsigmoid(beta * (pref * log_ratio).sum(-1)).mean()


def ddpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip_range: float = 1e-4,
              adv_clip_max: float = 5.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DDPO's PPO-clip loss at one step: ``mean(max(−A·ρ, −A·clamp(ρ, 1 ± clip_range)))`` with
    ``ρ = exp(log π_θ − log π_old)`` and ``A`` clamped to ``±adv_clip_max``. All inputs ``[B]``.
    Also returns ``approx_kl = ½·mean(Δlogp²)`` and ``clipfrac`` (share of clipped ratios)."""
    adv = advantages.clamp(-adv_clip_max, adv_clip_max)
    ratio = torch.exp(logp - old_logp)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    stats = {"approx_kl": 0.5 * ((logp - old_logp) ** 2).mean().detach(),
             "clipfrac": ((ratio - 1).abs() > clip_range).float().mean().detach()}
    return loss, stats


class PerPromptStatTracker:
    """Advantages ``(r − mean)/(std + 1e-6)`` with statistics per prompt over the last ``buffer_size``
    rewards of that prompt; until a prompt has ``min_count`` rewards, the batch's statistics are used
    (ddpo-pytorch's ``PerPromptStatTracker``)."""

    def __init__(self, buffer_size: int = 16, min_count: int = 16):
        self.buffer_size, self.min_count = buffer_size, min_count
        self.stats: dict[str, deque] = defaultdict(lambda: deque(maxlen=buffer_size))

    def update(self, prompts: list[str], rewards: np.ndarray) -> np.ndarray:
        rewards = np.asarray(rewards, dtype=np.float64)
        if len(prompts) != len(rewards):
            raise ValueError(f"got {len(prompts)} prompts but {len(rewards)} rewards")
        out = np.empty_like(rewards)
        prompts_arr = np.array(prompts, dtype=object)
        for p in dict.fromkeys(prompts):
            mask = prompts_arr == p
            r = rewards[mask]
            self.stats[p].extend(r.tolist())
            if len(self.stats[p]) < self.min_count:
                mean, std = rewards.mean(), rewards.std()
            else:
                mean, std = np.mean(self.stats[p]), np.std(self.stats[p])
            out[mask] = (r - mean) / (std + 1e-6)
        return out

    def state_dict(self) -> dict[str, list[float]]:
        return {p: list(v) for p, v in self.stats.items()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.stats.clear()
        for p, v in state.items():
            self.stats[p].extend(v)


def pair_preferences(scores: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """``h`` ``[P, 2]`` for pairs ``[P, 2]`` of indices into ``scores`` ``[N]``: ``(+1, −1)`` when the first
    scores higher, ``(−1, +1)`` when the second does, ``(0, 0)`` on a tie."""
    s = torch.sign(scores[pairs[:, 0]] - scores[pairs[:, 1]])
    return torch.stack([s, -s], 1)
