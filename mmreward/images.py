"""Conversion of PIL images, file paths and arrays to float tensors ``[3,H,W]`` in ``[0,1]``."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .errors import RewardError

ImageLike = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


def open_image(path: str | os.PathLike) -> Image.Image:
    """The RGB image of file ``path``; a missing file or one that is not an image raises :class:`RewardError`
    naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise RewardError(f"image file not found: {path!r}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:  # PIL: UnidentifiedImageError (an OSError), truncated files...
        raise RewardError(f"{path}: not a readable image ({e})") from e


def to_tensor(image: ImageLike) -> torch.Tensor:
    """One image (path, PIL, HWC uint8 array, or CHW float tensor) -> float32 ``[3,H,W]`` in ``[0,1]``."""
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image)
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


GREEN, RED, GREY = (20, 120, 40), (190, 30, 30), (90, 90, 90)  #: colours of verdicts in labelled grids


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:
        return ImageFont.load_default()


def _wrap(text: str, font, width: int) -> list[str]:
    """``text`` broken into lines no wider than ``width`` pixels (long words get a line of their own)."""
    lines, cur = [], ""
    for word in text.split():
        trial = f"{cur} {word}".strip()
        if cur and font.getlength(trial) > width:
            lines.append(cur)
            cur = word
        else:
            cur = trial
    return lines + ([cur] if cur else [])


def labelled_grid(cells: Sequence[tuple[Image.Image, str, Sequence[tuple[str, tuple]]]], cols: int,
                  legend: str = "", size: int = 192, font_size: int = 14) -> Image.Image:
    """A grid a person can read: each cell is an image scaled to ``size`` px wide, its caption (word-wrapped,
    never cut) and lines of ``(text, colour)`` notes (reward, verdict) below it; ``legend`` (wrapped to the
    grid's width) above says what the notes mean. ``cells``: ``(image, caption, notes)``."""
    from PIL import ImageDraw

    if not cells:
        raise ValueError("no cells to arrange")
    font, pad = _font(font_size), 4
    line_h = font_size + 4
    def lines_of(caption, notes):  # every line of a cell, wrapped to its width, with its colour
        out = [(line, (0, 0, 0)) for line in _wrap(caption, font, size - 2 * pad)]
        return out + [(line, colour) for text, colour in notes for line in _wrap(text, font, size - 2 * pad)]

    wrapped = [lines_of(caption, notes) for _, caption, notes in cells]
    n_lines = max(len(w) for w in wrapped)
    tiles = []
    for (image, _, _), cell_lines in zip(cells, wrapped, strict=True):
        h = round(image.height * size / image.width)
        resample = Image.NEAREST if image.width * 2 <= size else Image.BICUBIC  # small renders stay crisp
        tile = Image.new("RGB", (size, h + pad + n_lines * line_h + pad), "white")
        tile.paste(image.convert("RGB").resize((size, h), resample), (0, 0))
        draw, y = ImageDraw.Draw(tile), h + pad
        for text, colour in cell_lines:
            draw.text((pad, y), text, fill=colour, font=font)
            y += line_h
        tiles.append(tile)
    grid = image_grid(tiles, cols, gap=6, fill=(200, 200, 200))
    if not legend:
        return grid
    lines = _wrap(legend, font, grid.width - 2 * pad)
    out = Image.new("RGB", (grid.width, len(lines) * line_h + 2 * pad + grid.height), "white")
    draw = ImageDraw.Draw(out)
    for k, line in enumerate(lines):
        draw.text((pad, pad + k * line_h), line, fill=(0, 0, 0), font=font)
    out.paste(grid, (0, len(lines) * line_h + 2 * pad))
    return out
