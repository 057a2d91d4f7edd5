"""ShapesWorld scenes: a vocabulary of shapes and colours, scene sampling and an anti-aliased renderer.

A scene is a list of objects with a shape, a colour, a centre ``(x, y)`` and a size, all in
normalised image units (``[0,1]``, ``y`` pointing down), drawn on a plain background. Rendering
supersamples with PIL and box-filters down, so edges are anti-aliased at any resolution.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 190),
    "orange": (245, 130, 30),
}
BACKGROUND = (240, 240, 240)
RELATIONS = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class Obj:
    """One object: ``shape`` in :data:`SHAPES`, ``color`` in :data:`COLORS`, centre ``(x, y)`` and ``size``
    (side / diameter) in normalised units."""

    shape: str
    color: str
    x: float
    y: float
    size: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        h = self.size / 2
        return (self.x - h, self.y - h, self.x + h, self.y + h)


@dataclass
class Scene:
    objects: list[Obj] = field(default_factory=list)
    background: tuple[int, int, int] = BACKGROUND

    def to_dict(self) -> dict:
        return {"objects": [asdict(o) for o in self.objects], "background": list(self.background)}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls([Obj(**o) for o in d["objects"]], tuple(d.get("background", BACKGROUND)))


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":  # apex up, base at the bottom of the box
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "star":  # five points, inner radius 0.45 r, pointing up, centred in its box
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        ys = [p[1] for p in pts]
        shift = (max(ys) + min(ys)) / 2 - cy
        return [(x, y - shift) for x, y in pts]
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def render(scene: Scene, size: int = 64, supersample: int = 4) -> np.ndarray:
    """Render ``scene`` to a ``[size, size, 3]`` uint8 RGB array (anti-aliased by supersampling)."""
    big = size * supersample
    im = Image.new("RGB", (big, big), tuple(scene.background))
    draw = ImageDraw.Draw(im)
    for o in scene.objects:
        if o.color not in COLORS:
            raise ValueError(f"unknown colour {o.color!r}; known: {tuple(COLORS)}")
        cx, cy, r = o.x * big, o.y * big, o.size * big / 2
        if o.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=COLORS[o.color])
        else:
            draw.polygon(_polygon(o.shape, cx, cy, r), fill=COLORS[o.color])
    return np.asarray(im.resize((size, size), Image.BOX))


def render_batch(scenes: list[Scene], size: int = 64) -> np.ndarray:
    """``[N, size, size, 3]`` uint8."""
    return np.stack([render(s, size) for s in scenes])


def _overlaps(o: Obj, others: list[Obj], gap: float) -> bool:
    return any(
        abs(o.x - p.x) < (o.size + p.size) / 2 + gap and abs(o.y - p.y) < (o.size + p.size) / 2 + gap for p in others
    )


def place(
    rng: np.random.Generator,
    shapes_colors: list[tuple[str, str]],
    size_range: tuple[float, float],
    existing: list[Obj] | None = None,
    margin: float = 0.04,
    gap: float = 0.08,
    max_tries: int = 200,
) -> list[Obj] | None:
    """Place objects at random non-overlapping positions (``None`` if it fails)."""
    objs = list(existing or [])
    for shape, color in shapes_colors:
        for _ in range(max_tries):
            s = rng.uniform(*size_range)
            lo, hi = margin + s / 2, 1 - margin - s / 2
            o = Obj(shape, color, float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)), float(s))
            if not _overlaps(o, objs, gap):
                objs.append(o)
                break
        else:
            return None
    return objs
