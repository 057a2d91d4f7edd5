"""The one interface every vision reward implements.

A reward is a ``torch.nn.Module`` called as ``reward(images, prompts) -> rewards``:

* ``images``: float tensor ``[B,3,H,W]`` in ``[0,1]`` (any ``H,W``), or a video ``[B,T,3,H,W]``;
* ``prompts``: a list of ``B`` strings, or one string used for every image;
* returns float32 rewards ``[B]`` (videos: the mean of the per-frame rewards).

Everything is differentiable w.r.t. ``images``. ``reward.score(...)`` is the convenience call for
PIL images and file paths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .errors import RewardError
from .images import ImageLike, load_images


def check_prompts(prompts: str | Sequence[str] | None, batch: int, required: bool = True) -> list[str] | None:
    """Validate prompts and broadcast a single string to ``batch`` items."""
    if prompts is None:
        if required:
            raise RewardError("this reward needs prompts, got None")
        return None
    if isinstance(prompts, str):
        prompts = [prompts] * batch
    prompts = list(prompts)
    if len(prompts) != batch:
        raise RewardError(f"got {batch} images but {len(prompts)} prompts; pass one prompt per image or a single string")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise RewardError(f"prompt {i} is a {type(p).__name__}, expected str")
        if required and not p.strip():
            raise RewardError(f"prompt {i} is empty")
    return prompts


def check_images(images: torch.Tensor) -> None:
    """Validate an image batch ``[B,3,H,W]`` float in ``[0,1]``."""
    if not isinstance(images, torch.Tensor):
        raise RewardError(
            f"images must be a float tensor [B,3,H,W] in [0,1], got {type(images).__name__}; "
            "use reward.score(...) for PIL images or paths"
        )
    if images.ndim != 4 or images.shape[1] != 3:
        raise RewardError(f"images must have shape [B,3,H,W] (or [B,T,3,H,W] for video), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise RewardError("empty image batch")
    if min(images.shape[-2:]) < 2:
        raise RewardError(f"image size {tuple(images.shape[-2:])} is too small (need at least 2x2 pixels)")
    if not images.is_floating_point():
        raise RewardError(f"images must be a float tensor in [0,1], got dtype {images.dtype}; convert with x.float() / 255")
    with torch.no_grad():
        if not torch.isfinite(images).all():
            raise RewardError("images contain NaN or inf values")
        lo, hi = images.min().item(), images.max().item()
    if lo < -0.05 or hi > 1.05:
        raise RewardError(f"images must be in [0,1], got values in [{lo:.3g}, {hi:.3g}] (divide uint8 images by 255)")


class VisionReward(nn.Module):
    """Base class. Subclasses implement :meth:`score_images` on validated ``[B,3,H,W]`` batches."""

    #: whether the reward reads the prompts (aesthetic-style rewards do not)
    needs_prompts: bool = True
    #: chunk size used by :meth:`score` for large lists of images
    batch_size: int = 32

    def score_images(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        """Rewards ``[B]`` for validated images ``[B,3,H,W]`` in ``[0,1]``."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor, prompts: str | Sequence[str] | None = None) -> torch.Tensor:
        if isinstance(images, torch.Tensor) and images.ndim == 5:
            return self.frame_rewards(images, prompts).mean(dim=1)
        check_images(images)
        prompts = check_prompts(prompts, images.shape[0], required=self.needs_prompts)
        rewards = self.score_images(images, prompts).float()
        check_rewards(rewards, images.shape[0], type(self).__name__)
        return rewards

    def frame_rewards(self, video: torch.Tensor, prompts: str | Sequence[str] | None = None) -> torch.Tensor:
        """Per-frame rewards ``[B,T]`` for a video ``[B,T,3,H,W]``; each frame is scored with its video's prompt."""
        if video.ndim != 5:
            raise RewardError(f"video must have shape [B,T,3,H,W], got {tuple(video.shape)}")
        b, t = video.shape[:2]
        prompts = check_prompts(prompts, b, required=self.needs_prompts)
        frame_prompts = None if prompts is None else [p for p in prompts for _ in range(t)]
        return self(video.reshape(b * t, *video.shape[2:]), frame_prompts).view(b, t)

    @torch.no_grad()
    def score(
        self, images: Sequence[ImageLike] | ImageLike, prompts: str | Sequence[str] | None = None
    ) -> torch.Tensor:
        """Convenience call: score PIL images, file paths or arrays (any sizes). Returns rewards ``[N]`` on CPU."""
        tensors = load_images(images)
        if not tensors:
            raise RewardError("no images given")
        prompts = check_prompts(prompts, len(tensors), required=self.needs_prompts)
        device, dtype = self.device, torch.float32
        out = []
        for i in range(0, len(tensors), self.batch_size):
            chunk = tensors[i : i + self.batch_size]
            chunk_prompts = None if prompts is None else prompts[i : i + self.batch_size]
            if len({tuple(t.shape) for t in chunk}) == 1:
                out.append(self(torch.stack(chunk).to(device, dtype), chunk_prompts))
            else:  # differently sized images: one at a time (preprocessing resizes each)
                out.extend(
                    self(t[None].to(device, dtype), None if chunk_prompts is None else chunk_prompts[j : j + 1])
                    for j, t in enumerate(chunk)
                )
        return torch.cat(out).cpu()

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")


def check_rewards(rewards: torch.Tensor, batch: int, name: str) -> None:
    """Raise :class:`RewardError` if ``rewards`` is not a finite ``[batch]`` tensor."""
    if rewards.shape != (batch,):
        raise RewardError(f"{name} returned rewards of shape {tuple(rewards.shape)}, expected ({batch},)")
    bad = ~torch.isfinite(rewards.detach())
    if bad.any():
        idx = bad.nonzero().flatten().tolist()
        raise RewardError(f"{name} returned non-finite rewards (NaN/inf) for items {idx[:10]}")
