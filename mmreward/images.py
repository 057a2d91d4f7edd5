"""Conversion of PIL images, file paths and arrays to float tensors ``[3,H,W]`` in ``[0,1]``."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .errors import RewardError

ImageLike = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


def to_tensor(image: ImageLike) -> torch.Tensor:
    """One image (path, PIL, HWC uint8 array, or CHW float tensor) -> float32 ``[3,H,W]`` in ``[0,1]``."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise RewardError(f"image file not found: {path!r}")
        with Image.open(path) as im:
            image = im.convert("RGB")
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise RewardError(f"image array must be HxWx3, got shape {image.shape}")
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float() / scale
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise RewardError(f"image tensor must be 3xHxW, got shape {tuple(image.shape)}")
        return image.float()
    raise RewardError(f"unsupported image type {type(image).__name__}; expected a path, PIL image, array or tensor")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images ``[N,3,H,W]`` (or one ``[3,H,W]``) in ``[0,1]`` -> uint8 ``[N,H,W,3]`` (``[H,W,3]``)."""
    x = (images.detach().float().clamp(0, 1) * 255).round().byte()
    return x.movedim(-3, -1).cpu().numpy()


def to_pil(image: torch.Tensor) -> Image.Image:
    """A ``[3,H,W]`` tensor in ``[0,1]`` -> PIL RGB image."""
    return Image.fromarray(to_uint8(image))


def load_images(images: Sequence[ImageLike]) -> list[torch.Tensor]:
    """Convert a list of images (possibly of different sizes) to ``[3,H,W]`` tensors."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    return [to_tensor(im) for im in images]


def image_grid(tiles: Sequence[Image.Image], cols: int, gap: int = 4, fill=(160, 160, 160)) -> Image.Image:
    """Paste equally sized ``tiles`` row-major into a grid of ``cols`` columns."""
    if not tiles:
        raise ValueError("no tiles to arrange")
    w, h = tiles[0].size
    rows = (len(tiles) + cols - 1) // cols
    grid = Image.new("RGB", (cols * (w + gap) - gap, rows * (h + gap) - gap), fill)
    for i, t in enumerate(tiles):
        grid.paste(t, ((i % cols) * (w + gap), (i // cols) * (h + gap)))
    return grid


TILE = (192, 128)  #: size of a labelled grid cell (width, height) in pixels


def text_tile(text: str, width: int = 28, y: int = 40) -> Image.Image:
    """A white grid cell with ``text`` word-wrapped at ``width`` characters."""
    from PIL import ImageDraw

    lines, cur = [], ""
    for w in text.split():
        if cur and len(cur) + len(w) + 1 > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    tile = Image.new("RGB", TILE, "white")
    ImageDraw.Draw(tile).multiline_text((4, y), "\n".join(lines + [cur]), fill="black")
    return tile


def verdict_tile(image: np.ndarray, correct: bool) -> Image.Image:
    """A grid cell showing ``image`` (HxWx3 uint8, enlarged) on green (correct) or red (wrong)."""
    tile = Image.new("RGB", TILE, (40, 160, 60) if correct else (200, 40, 40))
    tile.paste(Image.fromarray(image).resize((120, 120), Image.NEAREST), (36, 4))
    return tile
