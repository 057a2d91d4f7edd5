"""Combining and hedging rewards: weighted sums, ensembles (mean / WCO / UWO) and running normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .base import VisionReward
from .errors import RewardError


class WeightedSum(VisionReward):
    """``sum_i w_i * r_i(images, prompts)``. :meth:`components` also returns each term.

    Args:
        terms: ``(name, reward, weight)`` triples.
    """

    def __init__(self, terms: Sequence[tuple[str, VisionReward, float]]) -> None:
        super().__init__()
        if not terms:
            raise RewardError("WeightedSum needs at least one reward")
        names = [n for n, _, _ in terms]
        if len(set(names)) != len(names):
            raise RewardError(f"duplicate reward names in {names}")
        self.names = names
        self.weights = [float(w) for _, _, w in terms]
        self.rewards = nn.ModuleList([r for _, r, _ in terms])
        self.needs_prompts = any(r.needs_prompts for r in self.rewards)

    def components(self, images: torch.Tensor, prompts=None) -> dict[str, torch.Tensor]:
        """Unweighted rewards of every term ``{name: [B]}`` plus ``"total"`` (the weighted sum)."""
        out = {n: r(images, prompts if r.needs_prompts else None) for n, r in zip(self.names, self.rewards, strict=False)}
        out["total"] = sum(w * out[n] for n, w in zip(self.names, self.weights, strict=False))
        return out

    def score_images(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        return self.components(images, prompts)["total"]


@dataclass
class EnsembleOutput:
    """Aggregated reward ``[B]``, member rewards ``[K,B]``, and their mean and standard deviation ``[B]``."""

    reward: torch.Tensor
    members: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


class Ensemble(VisionReward):
    """An ensemble of rewards aggregated conservatively (Coste et al., 2024).

    ``aggregation``:
      * ``"mean"``: ``mean_k r_k``;
      * ``"wco"`` (worst-case optimisation): ``min_k r_k``;
      * ``"uwo"`` (uncertainty-weighted optimisation): ``mean_k r_k - lam * Var_k r_k``.

    ``ddof`` sets the variance convention (0 as the reference's best-of-N code, 1 as its PPO code).
    """

    def __init__(
        self, members: Sequence[VisionReward], aggregation: str = "mean", lam: float = 0.5, ddof: int = 0
    ) -> None:
        super().__init__()
        if len(members) < 1:
            raise RewardError("an ensemble needs at least one member")
        if aggregation not in ("mean", "wco", "uwo"):
            raise RewardError(f"unknown aggregation {aggregation!r}; choose 'mean', 'wco' or 'uwo'")
        if ddof not in (0, 1) or (ddof == 1 and len(members) < 2):
            raise RewardError(f"ddof must be 0, or 1 with at least two members (got ddof={ddof}, {len(members)} members)")
        self.members = nn.ModuleList(members)
        self.aggregation = aggregation
        self.lam = float(lam)
        self.ddof = ddof
        self.needs_prompts = any(m.needs_prompts for m in self.members)

    def evaluate(self, images: torch.Tensor, prompts=None) -> EnsembleOutput:
        rs = torch.stack([m(images, prompts if m.needs_prompts else None) for m in self.members])
        mean = rs.mean(0)
        var = rs.var(0, correction=self.ddof) if len(self.members) > 1 else torch.zeros_like(mean)
        if self.aggregation == "mean":
            reward = mean
        elif self.aggregation == "wco":
            reward = rs.min(0).values
        else:
            reward = mean - self.lam * var
        return EnsembleOutput(reward=reward, members=rs, mean=mean, std=var.sqrt())

    def score_images(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        return self.evaluate(images, prompts).reward


class RunningNorm(nn.Module):
    """Running mean/variance normaliser for reward streams: ``(r - mean) / sqrt(var + eps)``.

    Statistics are merged batch-wise with Chan et al.'s parallel algorithm, are saved in the
    ``state_dict`` (so they survive checkpoint/resume), and are updated only in training mode
    unless ``update`` is given explicitly.
    """

    def __init__(self, eps: float = 1e-8, clip: float | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.clip = clip
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("m2", torch.zeros((), dtype=torch.float64))

    @property
    def var(self) -> torch.Tensor:
        return self.m2 / self.count.clamp(min=1)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        if not torch.isfinite(x).all():
            raise RewardError("RunningNorm.update got NaN or inf rewards")
        n = x.numel()
        if n == 0:
            return
        bmean = x.mean()
        bm2 = ((x - bmean) ** 2).sum()
        total = self.count + n
        delta = bmean - self.mean
        self.mean += delta * n / total
        self.m2 += bm2 + delta**2 * self.count * n / total
        self.count.copy_(total)

    def forward(self, x: torch.Tensor, update: bool | None = None) -> torch.Tensor:
        if self.training if update is None else update:
            self.update(x)
        y = (x - self.mean.to(x.dtype)) / torch.sqrt(self.var.to(x.dtype) + self.eps)
        return y.clamp(-self.clip, self.clip) if self.clip is not None else y
