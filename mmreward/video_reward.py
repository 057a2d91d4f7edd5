"""Video rewards from any image reward: InstructVideo's Segmental Video Reward (SegVR) with its Temporally
Attenuated Reward (TAR).

The ``F`` frames are split into ``S`` segments of ``F // S`` frames; one frame per segment is scored by the
image reward, picked at random within the segment (``sampling="tsn"``, the reference: ``g(i) = i·span +
U{0..span−1}``), at the segment's middle (``"uniform"``) or every frame is scored (``"all"``, ``S = F``).
Each score is weighted by ``f_i = exp(−λ·|g(i) − F//2|)`` and the video's reward is

    R = (1/S) Σ_i f_i · r(frame g(i), prompt)          (the reference: unnormalised weights)
    R = Σ_i f_i · r_i / Σ_i f_i                        (normalize=True)

``λ = 0`` turns TAR off (the plain segment mean). InstructVideo minimises ``mean(1 − R)``. Everything is
differentiable with respect to the video's pixels (only the sampled frames receive gradients).

    reward = load_video_reward("clip:assets/shapesworld-clip", segments=4, lambda_tar=1.0)
    r = reward(video, prompts)                           # video [B,F,3,H,W] in [0,1] -> [B]
    out = reward.evaluate(video, prompts, generator=g)   # .reward [B], .frames/.weights/.scores [B,S]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from .base import VisionReward, check_prompts
from .errors import RewardError

SAMPLING = ("tsn", "uniform", "all")


@dataclass
class VideoScore:
    reward: torch.Tensor  # [B] float32
    frames: torch.Tensor  # [B, S] long: the frame index g(i) scored in each segment
    weights: torch.Tensor  # [B, S] the TAR weights f_i
    scores: torch.Tensor  # [B, S] the image reward of each scored frame


class SegmentalVideoReward(nn.Module):
    """``reward(video [B,F,3,H,W] in [0,1], prompts) -> [B]`` from an image reward (see the module doc)."""

    def __init__(self, image_reward: VisionReward, segments: int = 4, sampling: str = "tsn", lambda_tar: float = 1.0,
                 normalize: bool = False) -> None:
        super().__init__()
        if sampling not in SAMPLING:
            raise RewardError(f"unknown sampling {sampling!r}; choose one of {SAMPLING}")
        if segments < 1:
            raise RewardError(f"segments must be >= 1, got {segments}")
        if not lambda_tar >= 0:
            raise RewardError(f"lambda_tar must be >= 0, got {lambda_tar}")
        self.image_reward, self.segments, self.sampling = image_reward, int(segments), sampling
        self.lambda_tar, self.normalize = float(lambda_tar), bool(normalize)

    def sample_frames(self, batch: int, frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[batch, S]`` frame indices, one per segment (``S = frames`` for ``"all"``)."""
        if self.sampling == "all":
            return torch.arange(frames).expand(batch, frames).clone()
        if frames < self.segments:
            raise RewardError(f"a video of {frames} frames cannot be split into {self.segments} segments")
        span = frames // self.segments  # the reference's segment_span (trailing frames beyond S·span unused)
        start = torch.arange(self.segments) * span
        if self.sampling == "uniform":
            return (start + span // 2).expand(batch, -1).clone()
        return start + torch.randint(0, span, (batch, self.segments), generator=generator)

    def evaluate(self, video: torch.Tensor, prompts: str | Sequence[str] | None = None,
                 generator: torch.Generator | None = None) -> VideoScore:
        if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[2] != 3:
            raise RewardError(f"video must be a tensor [B,F,3,H,W], got {getattr(video, 'shape', type(video))}")
        b, f = video.shape[:2]
        prompts = check_prompts(prompts, b, required=self.image_reward.needs_prompts)
        idx = self.sample_frames(b, f, generator).to(video.device)
        s = idx.shape[1]
        picked = video[torch.arange(b, device=video.device)[:, None], idx]  # [B, S, 3, H, W]
        flat_prompts = None if prompts is None else [p for p in prompts for _ in range(s)]
        scores = self.image_reward(picked.reshape(b * s, *video.shape[2:]), flat_prompts).view(b, s)
        weights = torch.exp(-self.lambda_tar * (idx - f // 2).abs().float())
        reward = (weights * scores).sum(1) / (weights.sum(1) if self.normalize else s)
        return VideoScore(reward, idx, weights, scores)

    def forward(self, video: torch.Tensor, prompts: str | Sequence[str] | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        return self.evaluate(video, prompts, generator).reward


def load_video_reward(spec: str, segments: int = 4, sampling: str = "tsn", lambda_tar: float = 1.0,
                      normalize: bool = False, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> SegmentalVideoReward:
    """The segmental video reward of the image reward named by ``spec`` (any spec of :func:`load_reward`)."""
    from .factory import load_reward

    return SegmentalVideoReward(load_reward(spec, device=device, dtype=dtype), segments, sampling, lambda_tar,
                                normalize)
