"""Per-pixel reward models: they read a dense condition back from an image (ControlNet++ / Ctrl-U).

* :class:`SegmentationReward`: a transformers semantic segmenter (``SegformerForSemanticSegmentation`` or any
  ``AutoModelForSemanticSegmentation``: hub id or folder; the embedded default ``assets/shapesworld-segformer``
  is a small Segformer trained on clean ShapesWorld renders). Logits are upsampled (bilinear) to the label's
  size; the per-pixel loss is cross-entropy (``ignore_index`` 255).
* :class:`EdgeReward`: a small fully convolutional edge estimator (``config.json`` + ``model.safetensors``,
  the embedded default ``assets/shapesworld-edge-net``); the per-pixel loss is the squared error against the
  edge map in ``[0, 1]``.

Both take images ``[B, 3, H, W]`` in ``[0, 1]`` and preprocess in torch, so gradients reach the pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .assets import resolve_asset
from .errors import ModelLoadError

IGNORE = 255
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _check_images(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")


class SegmentationReward(nn.Module):
    """``logits(images) -> [B, C, H, W]`` at the images' size; ``loss_map(images, labels) -> [B, H, W]``."""

    def __init__(self, model: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def num_labels(self) -> int:
        return self.model.config.num_labels

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs) -> SegmentationReward:
        from transformers import AutoModelForSemanticSegmentation

        from .hub import require_hub

        path = resolve_asset(name_or_path)
        if not Path(path).is_dir():
            require_hub(name_or_path, f"the segmentation model {name_or_path!r}", "pass its local folder")
        try:
            model = AutoModelForSemanticSegmentation.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load the segmentation model {name_or_path!r}: {e}") from e
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        pre = Path(path) / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text())
            mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
        return cls(model, mean, std)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images)
        out = self.model(pixel_values=(images - self.mean) / self.std).logits
        return F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def loss_map(self, images: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Per-pixel cross-entropy ``[B, H, W]`` against class ids ``labels`` ``[B, H, W]`` (0 where ignored)."""
        logits = self.logits(images) if logits is None else logits
        return F.cross_entropy(logits, labels.long(), ignore_index=IGNORE, reduction="none")


class EdgeNet(nn.Module):
    """Dilated 3x3 convolutions at full resolution: ``[B, 3, H, W]`` -> edge logits ``[B, 1, H, W]``."""

    def __init__(self, width: int = 24, dilations: tuple[int, ...] = (1, 1, 2, 4, 1)):
        super().__init__()
        layers, c = [], 3
        for d in dilations:
            layers += [nn.Conv2d(c, width, 3, padding=d, dilation=d), nn.ReLU()]
            c = width
        self.body = nn.Sequential(*layers, nn.Conv2d(width, 1, 1))
        self.config = {"width": width, "dilations": list(dilations)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class EdgeReward(nn.Module):
    """``predict(images) -> [B, H, W]`` edge maps in ``[0, 1]``; ``loss_map(images, edges) -> [B, H, W]``."""

    def __init__(self, net: EdgeNet):
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, folder: str) -> EdgeReward:
        from safetensors.torch import load_file

        path = Path(resolve_asset(folder))
        if not (path / "model.safetensors").is_file() or not (path / "config.json").is_file():
            raise ModelLoadError(f"no edge estimator in {folder} (config.json + model.safetensors); train one with "
                                 "`mmalign assets dense-rewards`")
        cfg = json.loads((path / "config.json").read_text())
        net = EdgeNet(cfg["width"], tuple(cfg["dilations"]))
        net.load_state_dict(load_file(str(path / "model.safetensors")))
        return cls(net)

    def save_pretrained(self, folder: str | Path, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.net.state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({**self.net.config, **(extra or {})}, indent=2))

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images)
        return torch.sigmoid(self.net(images * 2 - 1))[:, 0]

    def loss_map(self, images: torch.Tensor, edges: torch.Tensor, pred: torch.Tensor | None = None) -> torch.Tensor:
        pred = self.predict(images) if pred is None else pred
        return (pred - edges) ** 2
