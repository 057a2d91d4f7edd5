"""Zero-shot CLIP rewards: CLIPScore and the VLM-RM goal–baseline projection reward."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .backbones import ClipBackbone
from .base import VisionReward
from .errors import RewardError

SCORE_MODES = ("cos", "hessel", "logit")


class CLIPScore(VisionReward):
    """Image–prompt agreement under a CLIP backbone.

    ``mode``:
      * ``"cos"``: cosine similarity in ``[-1,1]`` (HPSv2/InstructVideo convention);
      * ``"hessel"``: ``w * max(cos, 0)`` with ``w = 2.5`` (CLIPScore of Hessel et al., 2021);
      * ``"logit"``: ``exp(logit_scale) * cos`` (the PickScore / ReNO-CLIP convention).
    """

    def __init__(self, backbone: ClipBackbone, mode: str = "cos", w: float = 2.5) -> None:
        super().__init__()
        if mode not in SCORE_MODES:
            raise RewardError(f"unknown CLIPScore mode {mode!r}; choose one of {SCORE_MODES}")
        self.backbone = backbone
        self.mode = mode
        self.w = float(w)

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        img = self.backbone.embed_images(images)
        txt = self.backbone.encode_text(prompts)
        cos = (img * txt).sum(-1)
        if self.mode == "hessel":
            return self.w * cos.clamp(min=0)
        if self.mode == "logit":
            return self.backbone.logit_scale * cos
        return cos


def _as_list(prompts: str | Sequence[str], what: str) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise RewardError(f"{what} prompts are empty")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise RewardError(f"{what} prompt {i} is empty")
    return prompts


class ProjectionReward(VisionReward):
    """VLM-RM goal–baseline projection reward (Rocamonde et al., 2023, Def. 1).

    With ``s`` the normalised image embedding, ``g`` and ``b`` the means of the normalised goal and
    baseline prompt embeddings (not renormalised), ``d = g - b`` and the projection
    ``P = alpha * d d^T / ||d||^2 + (1 - alpha) * I``::

        R(s) = 1 - 0.5 * || (s - g) P ||^2

    ``alpha = 0`` gives ``1 - 0.5||s - g||^2`` (cosine similarity to the goal, up to a constant when
    ``||g|| = 1``); ``alpha = 1`` keeps only the component of ``s - g`` along the baseline→goal line.
    The reward takes no per-image prompts: the task is fixed at construction.
    """

    needs_prompts = False

    def __init__(
        self, backbone: ClipBackbone, goal: str | Sequence[str], baseline: str | Sequence[str], alpha: float = 0.0
    ) -> None:
        super().__init__()
        if not 0.0 <= float(alpha) <= 1.0:
            raise RewardError(f"alpha must be in [0,1], got {alpha}")
        self.backbone = backbone
        self.goal_prompts = _as_list(goal, "goal")
        self.baseline_prompts = _as_list(baseline, "baseline")
        self.alpha = float(alpha)
        self._embed_task()

    def _embed_task(self) -> None:
        with torch.no_grad():
            g = self.backbone.encode_text(self.goal_prompts).mean(0)
            b = self.backbone.encode_text(self.baseline_prompts).mean(0)
        d = g - b
        eye = torch.eye(d.numel(), device=d.device)
        if d.norm() < 1e-8:
            if self.alpha > 0:
                raise RewardError("goal and baseline embeddings coincide; the projection direction is undefined "
                                  "(alpha 0 needs none: the reward is then the cosine to the goal)")
            proj = eye  # alpha 0: P = I, whatever the direction (e.g. a policy rewarded by the baseline alone)
        else:
            d = d / d.norm()
            proj = self.alpha * torch.outer(d, d) + (1 - self.alpha) * eye
        self.register_buffer("goal", g, persistent=False)
        self.register_buffer("projection", proj, persistent=False)

    def embedding_reward(self, s: torch.Tensor) -> torch.Tensor:
        """Reward ``[B]`` for normalised image embeddings ``s`` ``[B,D]``."""
        y = (s - self.goal.to(s)) @ self.projection.to(s)
        return 1.0 - 0.5 * (y * y).sum(-1)

    def score_images(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        return self.embedding_reward(self.backbone.embed_images(images))
