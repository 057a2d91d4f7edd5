"""The evaluator's shape classifier: a small CNN that names one object's coverage mask as a circle,
square, triangle or star, or as *blob* (an object a person would not name as any of the four).

Template matching (L1 between masks) tells clean shapes apart but not what people see in generated
64-px images: a rounded pentagon, a shell or a house shape is close to a circle or triangle by area,
yet nobody calls it one, while a blurred star keeps its points. The classifier is trained by
:mod:`.train_shape_net` on drawn shapes with the variations generators produce (bowed sides, rounded
corners, leaning apexes, blunt points, warps, blur) against a blob class (pentagons and hexagons, houses,
domes, teardrops, trapezoids, crescents, irregular and merged shapes). Its default weights ship in
``assets/shapesworld-shape-net`` (``config.json`` + ``model.safetensors``).

Input: ``[B, 1, 32, 32]`` coverage masks in [0, 1] from :func:`crop_square`; output: logits ``[B, 5]``
over :data:`CLASSES`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..assets import resolve_asset
from ..errors import ModelLoadError
from .world import SHAPES

CLASSES = (*SHAPES, "blob")
INPUT = 32  #: side of the classifier's input mask
DEFAULT_PATH = "assets/shapesworld-shape-net"  # resolved by mmreward.assets from any folder


def crop_square(cover: np.ndarray, threshold: float = 0.5, size: int = INPUT) -> np.ndarray | None:
    """A coverage mask ``[h,w]`` in [0,1] cropped to the box of its pixels >= ``threshold``, padded to a square
    (centred, so the aspect ratio is kept) and resampled (bilinear) to ``[size, size]``; ``None`` if empty."""
    ys, xs = np.nonzero(cover >= threshold)
    if len(ys) == 0:
        return None
    crop = cover[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32)
    h, w = crop.shape
    side = max(h, w) + 2  # a pixel of margin keeps the soft edge
    pad = np.zeros((side, side), np.float32)
    y0, x0 = (side - h) // 2, (side - w) // 2
    pad[y0 : y0 + h, x0 : x0 + w] = crop
    im = Image.fromarray(pad, mode="F").resize((size, size), Image.BILINEAR)
    return np.asarray(im, dtype=np.float32)


class ShapeNet(nn.Module):
    """Four 3x3 convolutions (the last three with stride 2), global average pooling, a linear layer."""

    def __init__(self, width: int = 32, n_classes: int = len(CLASSES)):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(2 * w, n_classes)
        self.config = {"width": width, "n_classes": n_classes, "classes": list(CLASSES), "input": INPUT}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def save_shape_net(model: ShapeNet, folder: str | Path, extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**model.config, **(extra or {})}, indent=2))


def load_shape_net(folder: str | Path = DEFAULT_PATH) -> tuple[ShapeNet, dict]:
    """``(model in eval mode, config)`` from a folder written by :func:`save_shape_net`."""
    from safetensors.torch import load_file

    folder = Path(resolve_asset(folder))
    if not (folder / "model.safetensors").is_file() or not (folder / "config.json").is_file():
        raise ModelLoadError(f"no shape classifier in {folder} (config.json + model.safetensors); "
                                "train one with `python -m mmreward.shapes.train_shape_net`")
    cfg = json.loads((folder / "config.json").read_text())
    if tuple(cfg["classes"]) != CLASSES:
        raise ValueError(f"{folder}/config.json: classes {cfg['classes']} differ from {list(CLASSES)}")
    model = ShapeNet(cfg["width"], cfg["n_classes"])
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval(), cfg


@lru_cache(maxsize=4)
def _cached(folder: str) -> tuple[ShapeNet, dict]:
    return load_shape_net(folder)


@torch.no_grad()
def class_probabilities(masks: list[np.ndarray], folder: str | Path = DEFAULT_PATH) -> np.ndarray:
    """``[N, 5]`` probabilities over :data:`CLASSES` for masks from :func:`crop_square`."""
    if not masks:
        return np.zeros((0, len(CLASSES)), np.float32)
    model, _ = _cached(str(folder))
    x = torch.from_numpy(np.stack(masks)[:, None])
    return torch.softmax(model(x), dim=-1).numpy()
