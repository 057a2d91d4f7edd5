"""Dense conditions of ShapesWorld scenes, as ControlNet takes them, and the segmentation read back from pixels.

* :func:`segmentation`: per-pixel class ids ``[H, W]`` (0 background, 1..4 :data:`SHAPES`), rendered
  from the scene (the majority class of each pixel's supersampled block); :func:`palette_image` draws it
  as an ADE20K-style colour image (one fixed colour per class), :func:`from_palette` reads it back.
* :func:`edge_map`: a soft edge map ``[H, W]`` in ``[0, 1]`` (every object's outline, anti-aliased), the
  dense condition with a regression reward (the role of HED / LineArt).
* :func:`read_segmentation`: the segmentation of *any* image read from its pixels: foreground where the
  colour is far from the background, each object's class from the evaluator's shape classifier, the
  pixels of unrecognised objects marked :data:`IGNORE`. Exact on ground-truth renders up to their
  anti-aliased rims; it is the truth a generated image's segmentation is measured against.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .world import SHAPES, Scene, _polygon

SEG_CLASSES = ("background", *SHAPES)
IGNORE = 255
#: one colour per class (background black, as ADE20K's unlabelled colour)
PALETTE = np.array([(0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25)], dtype=np.uint8)


def _draw(scene: Scene, big: int, fill, outline_width: int = 0) -> Image.Image:
    im = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(im)
    for o in scene.objects:
        cx, cy, r = o.x * big, o.y * big, o.size * big / 2
        value = fill(o)
        if outline_width:
            if o.shape == "circle":
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=value, width=outline_width)
            else:
                pts = _polygon(o.shape, cx, cy, r)
                draw.line([*pts, pts[0]], fill=value, width=outline_width, joint="curve")
        elif o.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=value)
        else:
            draw.polygon(_polygon(o.shape, cx, cy, r), fill=value)
    return im


def segmentation(scene: Scene, size: int = 64, supersample: int = 4) -> np.ndarray:
    """uint8 ``[size, size]`` class ids (index into :data:`SEG_CLASSES`); later objects cover earlier ones,
    as in :func:`~mmreward.shapes.world.render`."""
    big = _draw(scene, size * supersample, lambda o: SHAPES.index(o.shape) + 1)
    blocks = np.asarray(big).reshape(size, supersample, size, supersample).transpose(0, 2, 1, 3)
    counts = np.stack([(blocks == c).sum((-1, -2)) for c in range(len(SEG_CLASSES))], -1)
    return counts.argmax(-1).astype(np.uint8)


def edge_map(scene: Scene, size: int = 64, width: float = 1.0, supersample: int = 4) -> np.ndarray:
    """float32 ``[size, size]`` in ``[0, 1]``: the objects' outlines ``width`` pixels wide, anti-aliased."""
    big = _draw(scene, size * supersample, lambda o: 255, outline_width=max(1, round(width * supersample)))
    return np.asarray(big.resize((size, size), Image.BOX), dtype=np.float32) / 255


def boundaries(seg: np.ndarray) -> np.ndarray:
    """``[H, W]`` float: 1 where a pixel's 4-neighbourhood holds another label (``IGNORE`` pixels, the
    unrecognised objects, count as one label), the pixel-truth edges of an image."""
    s = np.asarray(seg).astype(np.int16)
    edge = np.zeros(s.shape, bool)
    edge[:-1] |= s[:-1] != s[1:]
    edge[1:] |= s[1:] != s[:-1]
    edge[:, :-1] |= s[:, :-1] != s[:, 1:]
    edge[:, 1:] |= s[:, 1:] != s[:, :-1]
    return edge.astype(np.float32)


def palette_image(seg: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, 3]``: each class in its :data:`PALETTE` colour (ignored pixels white)."""
    seg = np.asarray(seg)
    out = np.full((*seg.shape, 3), 255, dtype=np.uint8)
    known = seg < len(SEG_CLASSES)
    out[known] = PALETTE[seg[known]]
    return out


def from_palette(image: np.ndarray) -> np.ndarray:
    """Class ids ``[H, W]`` of a palette image (the nearest palette colour of each pixel)."""
    rgb = np.asarray(image, dtype=np.float32)[..., :3]
    d = ((rgb[..., None, :] - PALETTE.astype(np.float32)) ** 2).sum(-1)
    return d.argmin(-1).astype(np.uint8)


def read_segmentation(image, threshold: float = 0.25, min_area: float = 6.0) -> np.ndarray:
    """uint8 ``[H, W]`` class ids of an RGB image read from its pixels: 0 where the colour is within
    ``threshold`` of the background (the evaluator's rule, after its 3x3 median filter), the recognised
    class of each object found by the evaluator elsewhere, :data:`IGNORE` on the pixels of unrecognised
    objects and of specks under ``min_area``."""
    from .evaluator import background_distance, find_objects, name_object
    from .shape_net import class_probabilities

    objects = find_objects(image, threshold, min_area)
    probs = class_probabilities([o["mask"] for o in objects])
    seg = np.where(background_distance(image) > threshold, IGNORE, 0).astype(np.uint8)
    for o, pr in zip(objects, probs, strict=True):
        det = name_object(o, pr)
        if det.shape is not None:
            seg[o["region"]] = SHAPES.index(det.shape) + 1
    return seg
