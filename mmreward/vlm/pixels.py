"""The image preprocessing of generative VLMs, in torch, so a judge's readouts are differentiable in the pixels.

Each module maps images ``[N,3,H,W]`` in ``[0,1]`` to the model's pixel inputs as its transformers image
processor would (same resize rule, interpolation, normalisation and layout):

* :class:`QwenPixels` (``Qwen2VLImageProcessor``: Qwen2-VL, Qwen2.5-VL): ``smart_resize`` to multiples of
  ``patch_size · merge_size`` within ``[min_pixels, max_pixels]``, bicubic, normalise, then the processor's
  patchify: ``pixel_values [N·gh·gw, 3·temporal_patch·patch²]`` and ``image_grid_thw [N,3]``.
* :class:`ClipPixels` (``CLIPImageProcessor``, ``SiglipImageProcessor``: LLaVA layouts): the suite's
  :class:`~mmreward.preprocess.ClipPreprocess` (shortest-side resize and centre crop, or a squash to a fixed
  size; normalise): ``pixel_values [N,3,S,S]``.

The processors resize uint8 images; these resize floats, so the values differ by the rounding to 1/255
(about 0.01 after normalisation) and not at all where no resize is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelLoadError
from ..preprocess import ClipPreprocess


def _stats(processor, name: str) -> torch.Tensor:
    return torch.tensor(list(getattr(processor, name)), dtype=torch.float32).view(1, 3, 1, 1)


class QwenPixels(nn.Module):
    """Qwen2-VL's dynamic-resolution preprocessing (``image_processor``: a ``Qwen2VLImageProcessor``)."""

    def __init__(self, image_processor) -> None:
        super().__init__()
        ip = image_processor
        size = ip.size if isinstance(ip.size, dict) else dict(ip.size)
        self.min_pixels = int(size.get("shortest_edge") or size.get("min_pixels"))
        self.max_pixels = int(size.get("longest_edge") or size.get("max_pixels"))
        self.patch, self.merge, self.temporal = int(ip.patch_size), int(ip.merge_size), int(ip.temporal_patch_size)
        self.do_resize = bool(getattr(ip, "do_resize", True))
        self.register_buffer("mean", _stats(ip, "image_mean"), persistent=False)
        self.register_buffer("std", _stats(ip, "image_std"), persistent=False)

    def resized_shape(self, h: int, w: int) -> tuple[int, int]:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        if not self.do_resize:
            return h, w
        return smart_resize(h, w, factor=self.patch * self.merge, min_pixels=self.min_pixels, max_pixels=self.max_pixels)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        n, c, h, w = images.shape
        nh, nw = self.resized_shape(h, w)
        x = images
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        x = (x - self.mean.to(x)) / self.std.to(x)
        p, m, tp = self.patch, self.merge, self.temporal
        gh, gw = nh // p, nw // p
        x = x.reshape(n, c, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, tp, -1, -1).reshape(n * gh * gw, c * tp * p * p)
        grid = torch.tensor([[1, gh, gw]] * n, dtype=torch.long, device=images.device)
        return {"pixel_values": x, "image_grid_thw": grid}


class ClipPixels(nn.Module):
    """CLIP / SigLIP preprocessing of LLaVA-layout models (``image_processor``: ``CLIPImageProcessor`` style):
    :class:`~mmreward.preprocess.ClipPreprocess` with transformers' rounding, the shortest side resized to
    ``size.shortest_edge`` then a centre crop of ``crop_size``, or a resize to ``size.height × size.width``."""

    def __init__(self, image_processor) -> None:
        super().__init__()
        ip = image_processor
        size = dict(ip.size)
        crop = dict(ip.crop_size) if getattr(ip, "do_center_crop", False) and getattr(ip, "crop_size", None) else None
        if size.get("shortest_edge"):
            if crop is None:
                raise ModelLoadError(f"{type(ip).__name__}: a shortest-side resize without a centre crop gives "
                                     "non-square inputs, which this judge does not support")
            out, resize, mode = (int(crop["height"]), int(crop["width"])), int(size["shortest_edge"]), "shortest"
        elif size.get("height") and size.get("width"):
            out, resize, mode = (int(size["height"]), int(size["width"])), None, "squash"
        else:
            raise ModelLoadError(f"{type(ip).__name__}: unsupported size {size}")
        if out[0] != out[1]:
            raise ModelLoadError(f"{type(ip).__name__}: non-square inputs {out} are not supported")
        interpolation = {2: "bilinear", 3: "bicubic"}.get(int(getattr(ip, "resample", 3)), "bicubic")
        self.pre = ClipPreprocess(out[0], tuple(ip.image_mean), tuple(ip.image_std), interpolation=interpolation,
                                  resize_mode=mode, crop="floor", resize=resize)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pre(images)}


def pixels_for(image_processor) -> nn.Module:
    """The torch preprocessing matching ``image_processor`` (a transformers image processor)."""
    name = type(image_processor).__name__
    if name.startswith("Qwen2VLImageProcessor"):
        return QwenPixels(image_processor)
    if name.startswith(("CLIPImageProcessor", "SiglipImageProcessor")):
        return ClipPixels(image_processor)
    raise ModelLoadError(f"no differentiable preprocessing for {name}; supported: Qwen2VLImageProcessor "
                         "(Qwen2-VL, Qwen2.5-VL), CLIPImageProcessor and SiglipImageProcessor (LLaVA layouts)")
