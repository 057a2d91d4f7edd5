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


def line_chart(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str,
               size: tuple[int, int] = (560, 360)) -> Image.Image:
    """A plain line chart of named ``(x, y)`` series (axes from 0 / the data range), drawn with PIL. The
    legend sits in a column right of the plot (the image grows to fit it), so it never covers a line."""
    from PIL import ImageDraw

    pts = [p for s in series.values() for p in s]
    if not pts:
        raise ValueError("no points to plot")
    plot_w, h = size
    legend_w = 28 + 6 * max(len(name) for name in series)  # PIL's default bitmap font: about 6 px a character
    w = plot_w + legend_w
    left, right, top, bottom = 56, 16, 24, 44
    x1 = max(x for x, _ in pts) or 1.0
    y0, y1 = min(y for _, y in pts), max(y for _, y in pts)
    pad = 0.1 * (y1 - y0 or 1.0)
    y0, y1 = y0 - pad, y1 + pad

    def to_px(x: float, y: float) -> tuple[float, float]:
        return left + (plot_w - left - right) * x / x1, h - bottom - (h - top - bottom) * (y - y0) / (y1 - y0)

    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([left, top, plot_w - right, h - bottom], outline="black")
    for k in range(5):
        yv = y0 + (y1 - y0) * k / 4
        xv = x1 * k / 4
        d.text((4, to_px(0, yv)[1] - 6), f"{yv:.3f}", fill="black")
        d.text((to_px(xv, y0)[0] - 8, h - bottom + 4), f"{xv:.0f}" if x1 >= 20 else f"{xv:.3g}", fill="black")
    d.text((left, h - 18), xlabel, fill="black")
    d.text((left, 6), ylabel, fill="black")
    colors = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75),
              (227, 119, 194), (127, 127, 127)]
    for i, (name, s) in enumerate(series.items()):
        c = colors[i % len(colors)]
        xy = [to_px(x, y) for x, y in sorted(s)]
        if len(xy) > 1:
            d.line(xy, fill=c, width=2)
        for px, py in xy:
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=c)
        ly = top + 4 + 16 * i
        d.line([(plot_w + 2, ly + 6), (plot_w + 18, ly + 6)], fill=c, width=3)
        d.text((plot_w + 22, ly), name, fill=c)
    return img
