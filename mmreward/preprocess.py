"""Differentiable CLIP image preprocessing in torch (resize, centre crop, normalise).

Matches open_clip's and transformers' PIL pipelines (bicubic, antialiased resize of the
shortest side, centre crop, mean/std normalisation) but keeps the autograd graph, so rewards
can be used as differentiable objectives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipPreprocess(nn.Module):
    """Map images ``[B,3,H,W]`` in ``[0,1]`` to normalised model inputs ``[B,3,S,S]``.

    Args:
        size: output side length ``S`` in pixels.
        mean, std: per-channel normalisation.
        interpolation: ``"bicubic"`` or ``"bilinear"``.
        resize_mode: ``"shortest"`` (resize shortest side to ``S``, then centre crop, as
            open_clip and transformers do) or ``"squash"`` (resize to ``S x S``, as VLM-RM does).
        crop: where an odd margin of the centre crop goes: ``"round"`` (torchvision's ``CenterCrop``, used
            by open_clip: offset ``round(margin / 2)``) or ``"floor"`` (transformers: ``margin // 2``).
        resize: ``"shortest"`` mode's target for the shortest side before the crop (default ``size``;
            transformers processors may resize to more than they crop).
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        interpolation: str = "bicubic",
        resize_mode: str = "shortest",
        crop: str = "round",
        resize: int | None = None,
    ) -> None:
        super().__init__()
        if interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
        if resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode must be 'shortest' or 'squash', got {resize_mode!r}")
        if crop not in ("round", "floor"):
            raise ValueError(f"crop must be 'round' or 'floor', got {crop!r}")
        self.size = int(size)
        self.resize = self.size if resize is None else int(resize)
        if self.resize < self.size:
            raise ValueError(f"resize ({self.resize}) must be at least the crop size ({self.size})")
        self.crop = crop
        self.interpolation = interpolation
        self.resize_mode = resize_mode
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def resized_shape(self, h: int, w: int) -> tuple[int, int]:
        """Shape after the resize step (before cropping), following torchvision's rounding."""
        if self.resize_mode == "squash":
            return self.size, self.size
        s = self.resize
        if h <= w:
            return s, int(s * w / h)
        return int(s * h / w), s

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        nh, nw = self.resized_shape(h, w)
        x = images
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode=self.interpolation, align_corners=False, antialias=True)
        if (nh, nw) != (self.size, self.size):
            if self.crop == "round":
                top, left = int(round((nh - self.size) / 2.0)), int(round((nw - self.size) / 2.0))
            else:
                top, left = (nh - self.size) // 2, (nw - self.size) // 2
            x = x[..., top : top + self.size, left : left + self.size]
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        extra = f", resize={self.resize}" if self.resize != self.size else ""
        return (f"size={self.size}{extra}, interpolation={self.interpolation}, resize_mode={self.resize_mode}, "
                f"crop={self.crop}")
