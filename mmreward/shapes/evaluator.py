"""The ShapesWorld evaluator: finds objects from pixels alone and judges an image against its prompt
by GenEval's rules.

Detection: estimate the background from the border, mark pixels far from it (after a 3x3 median
filter against noise), split them into connected components, and per component read

* the colour: nearest palette colour to the median of the component's own core pixels;
* the shape: nearest rendered template (L1 between coverage masks cropped to the bounding box
  and resampled to 24x24);
* the bounding box, used for counting and for relations (GenEval's centre-offset rule).

Judging follows GenEval's metadata: ``include`` clauses need at least ``count`` objects of the
class (of the colour, if given; relation to the objects matched by an earlier clause, if given);
``exclude`` clauses fail with ``count`` or more. The overall score is the mean of the per-category
accuracies, as GenEval reports it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

from .prompts import CATEGORIES, parse_prompt, relations
from .world import COLORS, SHAPES, Obj, Scene, render

TEMPLATE = 24
_PALETTE = np.array(list(COLORS.values()), dtype=np.float32) / 255
_COLOR_NAMES = list(COLORS)


@dataclass
class Detection:
    shape: str
    color: str
    box: tuple[float, float, float, float]  # normalised (x0, y0, x1, y1)
    area: int  # pixels
    shape_distance: float  # L1 distance to the chosen template (0 = perfect)


def _crop_resize(mask: np.ndarray, threshold: float = 0.5) -> np.ndarray | None:
    ys, xs = np.nonzero(mask >= threshold)
    if len(ys) == 0:
        return None
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    im = Image.fromarray(crop.astype(np.float32), mode="F")
    return np.asarray(im.resize((TEMPLATE, TEMPLATE), Image.BILINEAR), dtype=np.float32)


@lru_cache(maxsize=1)
def _templates() -> np.ndarray:
    """``[n_shapes, 24, 24]`` coverage masks of each shape cropped to its box."""
    out = []
    for shape in SHAPES:
        img = render(Scene([Obj(shape, "blue", 0.5, 0.5, 0.8)], background=(255, 255, 255)), size=96).astype(np.float32)
        cover = np.clip((255 - img).max(-1) / (255 - min(COLORS["blue"])), 0, 1)
        out.append(_crop_resize(cover))
    return np.stack(out)


def _as_float(image) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {arr.shape}")
    return arr.astype(np.float32) / 255 if arr.dtype == np.uint8 else arr.astype(np.float32)


def detect(image, threshold: float = 0.25, min_area: float = 6.0) -> list[Detection]:
    """Objects in an RGB image (HxWx3 uint8 / float in [0,1], or PIL), largest first.

    ``min_area`` is in pixels at 64x64 and scales with the image area.
    """
    img = _as_float(image)
    h, w = img.shape[:2]
    smooth = ndimage.median_filter(img, size=(3, 3, 1), mode="nearest")
    border = np.concatenate([smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1]])
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(smooth - bg, axis=-1)
    raw_dist = np.linalg.norm(img - bg, axis=-1)  # unfiltered: keeps thin star tips for the shape
    labels, n = ndimage.label(dist > threshold, structure=np.ones((3, 3)))
    templates = _templates()
    min_px = min_area * h * w / 64**2
    dets = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        comp = labels[sl] == k
        area = int(comp.sum())
        if area < min_px:
            continue
        d = np.where(comp, dist[sl], 0.0)
        core = comp & (d >= 0.8 * d.max())
        rgb = np.median(smooth[sl][core], axis=0)
        color = _COLOR_NAMES[int(np.argmin(((_PALETTE - rgb) ** 2).sum(-1)))]
        contrast = float(np.linalg.norm(_PALETTE[_COLOR_NAMES.index(color)] - bg))
        near = ndimage.binary_dilation(comp, iterations=1)
        cover = _crop_resize(np.clip(np.where(near, raw_dist[sl], 0.0) / max(contrast, 1e-6), 0, 1))
        if cover is None:
            continue
        errs = np.abs(templates - cover).mean(axis=(1, 2))
        ys, xs = sl
        box = (xs.start / w, ys.start / h, xs.stop / w, ys.stop / h)
        dets.append(Detection(SHAPES[int(np.argmin(errs))], color, box, area, float(errs.min())))
    return sorted(dets, key=lambda d: -d.area)


def judge(meta: dict, dets: list[Detection]) -> tuple[bool, str]:
    """GenEval's rules on detected objects; returns ``(correct, reason)``."""
    reasons, groups = [], []
    for req in meta["include"]:
        cls, n = req["class"], req["count"]
        found = [d for d in dets if d.shape == cls]
        ok = True
        if len(found) < n:
            ok = False
            reasons.append(f"expected {cls}>={n}, found {len(found)}")
        elif "color" in req:
            colored = [d for d in found if d.color == req["color"]]
            if len(colored) < n:
                ok = False
                reasons.append(f"expected {req['color']} {cls}>={n}, found colours {[d.color for d in found]}")
            found = colored
        found = found[:n]
        if ok and "position" in req:
            rel, target = req["position"]
            if groups[target] is None:
                ok = False
                reasons.append(f"no target for {cls} to be {rel}")
            else:
                for a in found:
                    for b in groups[target]:
                        got = relations(a.box, b.box)
                        if rel not in got:
                            ok = False
                            reasons.append(f"expected {cls} {rel} target, found {' and '.join(sorted(got)) or 'no relation'}")
                            break
                    if not ok:
                        break
        groups.append(found if ok else None)
    for req in meta.get("exclude", []):
        n_found = sum(d.shape == req["class"] for d in dets)
        if n_found >= req["count"]:
            reasons.append(f"expected {req['class']}<{req['count']}, found {n_found}")
    return not reasons, "; ".join(reasons)


def scene_detections(scene: Scene, size: int = 64) -> list[Detection]:
    """The exact detections of a rendered scene, from its geometry (no pixels): ground truth for
    :func:`judge`, e.g. to know every caption that is true of a training image."""
    dets = [Detection(o.shape, o.color, o.box, int(round((o.size * size) ** 2)), 0.0) for o in scene.objects]
    return sorted(dets, key=lambda d: -d.area)


def evaluate_image(image, prompt_or_meta: str | dict) -> dict:
    meta = parse_prompt(prompt_or_meta) if isinstance(prompt_or_meta, str) else prompt_or_meta
    dets = detect(image)
    correct, reason = judge(meta, dets)
    return {
        "prompt": meta["prompt"], "tag": meta["tag"], "correct": correct, "reason": reason,
        "detections": [asdict(d) for d in dets],
    }


def summarize(per_image: list[dict]) -> dict:
    """``{"overall", "per_category", "n", "per_image"}``; overall is the mean of category accuracies."""
    per_cat = {}
    for tag in CATEGORIES:
        rows = [r["correct"] for r in per_image if r["tag"] == tag]
        if rows:
            per_cat[tag] = float(np.mean(rows))
    overall = float(np.mean(list(per_cat.values()))) if per_cat else 0.0
    return {"overall": overall, "per_category": per_cat, "n": len(per_image), "per_image": per_image}


def evaluate(images, prompts) -> dict:
    """Evaluate a list of images against prompts (strings or metadata)."""
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    return summarize([evaluate_image(im, p) for im, p in zip(images, prompts)])


def suite_scores(images, metas: list[dict]) -> dict:
    """Evaluator result of images against suite rows (metadata with ``held_out``): ``overall``,
    ``per_category``, ``n``, ``held_out_compositions`` (accuracy on rows with a held-out pair or
    relation), ``correct`` and ``detected`` (per image: the verdict, the number of shapes found)."""
    res = evaluate(images, metas)
    ok = np.array([r["correct"] for r in res["per_image"]])
    held = np.array([bool(m.get("held_out")) for m in metas])
    return {"overall": res["overall"], "per_category": res["per_category"], "n": res["n"],
            "held_out_compositions": float(ok[held].mean()) if held.any() else None, "correct": ok.tolist(),
            "detected": [len(r["detections"]) for r in res["per_image"]]}


def category_table(columns: dict[str, dict]) -> list[str]:
    """Markdown rows comparing evaluator results (``{column: {"per_category", "overall",
    "held_out_compositions"}}``): a row per category, overall, held-out compositions."""
    names = list(columns)
    rows = ["| category | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for tag in CATEGORIES:
        rows.append(f"| {tag} | " + " | ".join(f"{columns[k]['per_category'][tag]:.3f}" for k in names) + " |")
    rows.append("| **overall** | " + " | ".join(f"**{columns[k]['overall']:.3f}**" for k in names) + " |")
    rows.append("| held-out compositions | " + " | ".join(f"{columns[k]['held_out_compositions']:.3f}" for k in names) + " |")
    return rows
