"""The ShapesWorld evaluator: finds objects from pixels alone and judges an image against its prompt
by GenEval's rules.

Detection: estimate the background from the border, mark pixels far from it (after a 3x3 median
filter against noise), split them into connected components, separate touching objects inside a
component (distance-transform peaks joined by a neck, then a watershed: :func:`split_touching`), and
per object read

* the colour: nearest palette colour to the median of the object's own core pixels;
* the shape: a small classifier (:mod:`.shape_net`) on the object's coverage mask, cropped to a square
  box at 32x32, names it circle, square, triangle, star or blob. A blob, or an object whose best shape
  has probability under ``MIN_CONFIDENCE``, is *unrecognised* (``shape=None``, as a detection under
  GenEval's confidence threshold): it satisfies no clause and counts as an extra object;
* the bounding box, used for counting and for relations (GenEval's centre-offset rule).

Judging follows GenEval's metadata: ``include`` clauses need at least ``count`` objects of the
class (of the colour, if given; relation to the objects matched by an earlier clause, if given);
``exclude`` clauses fail with ``count`` or more. The overall score is the mean of the per-category
accuracies, as GenEval reports it. Each verdict comes with a reason that names the failed clause and
what was seen (:func:`judge`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from .prompts import CATEGORIES, INVERSE, parse_prompt, relations
from .shape_net import class_probabilities, crop_square
from .world import COLORS, SHAPES, Scene

_PALETTE = np.array(list(COLORS.values()), dtype=np.float32) / 255
_COLOR_NAMES = list(COLORS)


#: an object whose most probable named shape has less than this probability is unrecognised (the role of
#: GenEval's detector confidence threshold)
MIN_CONFIDENCE = 0.5


@dataclass
class Detection:
    shape: str | None  # None: unrecognised (no shape recognised); satisfies no clause, counts as an extra object
    color: str
    box: tuple[float, float, float, float]  # normalised (x0, y0, x1, y1)
    area: int  # pixels
    confidence: float  # the classifier's probability of ``best_shape`` (1 for ground truth)
    best_shape: str = ""  # the most probable named shape, also for an unrecognised object

    def __post_init__(self):
        self.best_shape = self.best_shape or self.shape or ""


def _as_float(image) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {arr.shape}")
    return arr.astype(np.float32) / 255 if arr.dtype == np.uint8 else arr.astype(np.float32)


def split_touching(comp: np.ndarray, min_height: float = 2.0, neck: float = 0.7) -> list[np.ndarray]:
    """The objects of one connected mask ``[h,w]`` (bool): touching objects separated by watershed.

    Each object is a peak of the distance transform (its inradius ``h`` in pixels, at least ``min_height``);
    two peaks are two objects when the widest path between them narrows below ``neck * h`` of the lower
    peak (a neck, where two shapes touch). A star's points, a square's corners and a squashed shape's
    ridge have no such neck and stay whole. Each pixel then goes to the nearest object core (above the
    neck's level), so the cut runs through the neck. Returns one mask per object (the input alone if no split).
    """
    dt = ndimage.distance_transform_edt(np.pad(comp, 1))[1:-1, 1:-1]
    best = None
    for t in np.arange(1.0, dt.max(), 0.5):
        cores, n = ndimage.label(dt > t, structure=np.ones((3, 3)))
        if n < 2:
            continue
        heights = ndimage.maximum(dt, cores, index=np.arange(1, n + 1))
        keep = [k + 1 for k, h in enumerate(heights) if h >= max(min_height, t / neck)]
        if len(keep) >= 2 and (best is None or len(keep) > len(best[1])):
            best = (cores, keep)
    if best is None:
        return [comp]
    cores, keep = best
    owner = np.zeros(comp.shape, np.int16)
    for j, k in enumerate(keep, start=1):
        owner[cores == k] = j
    # every pixel goes to the nearest object core: the cut runs along the neck, halfway between them
    _, (iy, ix) = ndimage.distance_transform_edt(owner == 0, return_indices=True)
    owner = owner[iy, ix]
    return [comp & (owner == j) for j in range(1, len(keep) + 1)]


def _distances(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 3x3 median-filtered image, the background colour (the median of its border) and each pixel's
    distance to it ``[H, W]`` (RGB in [0, 1])."""
    smooth = ndimage.median_filter(img, size=(3, 3, 1), mode="nearest")
    border = np.concatenate([smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1]])
    bg = np.median(border, axis=0)
    return smooth, bg, np.linalg.norm(smooth - bg, axis=-1)


def background_distance(image) -> np.ndarray:
    """``[H, W]``: each pixel's colour distance to the background, as :func:`find_objects` thresholds it."""
    return _distances(_as_float(image))[2]


def find_objects(image, threshold: float = 0.25, min_area: float = 6.0) -> list[dict]:
    """The objects of an RGB image (HxWx3 uint8 / float in [0,1], or PIL), largest first, before their shape
    is named: ``{"color", "box", "area", "mask", "region"}`` (``mask``: the classifier's ``[32,32]`` input;
    ``region``: the object's pixels, a ``[H, W]`` bool mask).
    ``min_area`` is in pixels at 64x64 and scales with the image area."""
    img = _as_float(image)
    h, w = img.shape[:2]
    smooth, bg, dist = _distances(img)
    raw_dist = np.linalg.norm(img - bg, axis=-1)  # unfiltered: keeps thin star tips for the shape
    labels, n = ndimage.label(dist > threshold, structure=np.ones((3, 3)))
    min_px = min_area * h * w / 64**2
    objects = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        comp = labels[sl] == k
        if comp.sum() < min_px:
            continue
        for part in split_touching(comp, min_height=2.0 * (h * w / 64**2) ** 0.5):
            if part.sum() >= min_px:
                obj = _read_object(part, comp & ~part, sl, smooth, dist, raw_dist, bg, (h, w))
                if obj is not None:
                    obj["region"] = np.zeros((h, w), dtype=bool)
                    obj["region"][sl] = part
                    objects.append(obj)
    return sorted(objects, key=lambda o: -o["area"])


def detect(image, threshold: float = 0.25, min_area: float = 6.0, min_confidence: float = MIN_CONFIDENCE,
           classifier: str | None = None) -> list[Detection]:
    """Objects in an RGB image (see :func:`find_objects`), largest first, each named by the classifier
    (``classifier``: a folder, default the shipped one). An object is unrecognised (``shape=None``) when
    the classifier finds it most likely a blob or gives no named shape ``min_confidence``."""
    objects = find_objects(image, threshold, min_area)
    probs = class_probabilities([o["mask"] for o in objects], *([classifier] if classifier else []))
    return [name_object(o, pr, min_confidence) for o, pr in zip(objects, probs)]


def name_object(obj: dict, probs: np.ndarray, min_confidence: float = MIN_CONFIDENCE) -> Detection:
    """The detection of one object of :func:`find_objects` from the classifier's probabilities ``[5]``
    over circle, square, triangle, star, blob: unrecognised when blob is the most probable class or the
    best named shape has less than ``min_confidence``."""
    k = int(np.argmax(probs[: len(SHAPES)]))
    named = int(np.argmax(probs)) < len(SHAPES) and probs[k] >= min_confidence
    return Detection(SHAPES[k] if named else None, obj["color"], obj["box"], obj["area"], float(probs[k]), SHAPES[k])


def _read_object(part, others, sl, smooth, dist, raw_dist, bg, size) -> dict | None:
    """Colour, box, area and the classifier's input mask of one object ``part`` (a mask within the slice
    ``sl`` of the image; ``others``: the rest of its component)."""
    h, w = size
    d = np.where(part, dist[sl], 0.0)
    core = part & (d >= 0.8 * d.max())
    rgb = np.median(smooth[sl][core], axis=0)
    color = _COLOR_NAMES[int(np.argmin(((_PALETTE - rgb) ** 2).sum(-1)))]
    contrast = float(np.linalg.norm(_PALETTE[_COLOR_NAMES.index(color)] - bg))
    near = ndimage.binary_dilation(part, iterations=1) & ~others
    cover = np.clip(np.where(near, raw_dist[sl], 0.0) / max(contrast, 1e-6), 0, 1)
    mask = crop_square(cover / max(float(cover.max()), 1e-6))
    if mask is None:
        return None
    ys, xs = np.nonzero(part)
    y0, x0 = sl[0].start, sl[1].start
    box = (float(x0 + xs.min()) / w, float(y0 + ys.min()) / h, float(x0 + xs.max() + 1) / w, float(y0 + ys.max() + 1) / h)
    return {"color": color, "box": box, "area": int(part.sum()), "mask": mask}


def describe(dets: list[Detection]) -> str:
    """What the evaluator saw, numbered as in ``detections`` (largest first): ``"object 1 red circle;
    object 2 unrecognised (best match star, 0.41)"``: the classifier's probability of that shape)."""
    if not dets:
        return "no objects"
    out = []
    for i, d in enumerate(dets, start=1):
        if d.shape is None:
            out.append(f"object {i} unrecognised (best match {d.best_shape}, {d.confidence:.2f})")
        else:
            out.append(f"object {i} {d.color} {d.shape}")
    return "; ".join(out)


def _plural(n: int, cls: str) -> str:
    return f"{n} {cls}" + ("s" if n != 1 else "")


def judge(meta: dict, dets: list[Detection]) -> tuple[bool, str]:
    """GenEval's rules on detected objects; returns ``(correct, reason)``: the reason names each clause
    that failed and what the evaluator saw (``"star not found: object 1 red circle; object 2
    unrecognised (best match star, 0.41)"``). Unrecognised objects satisfy no clause."""
    reasons, groups = [], []
    for req in meta["include"]:
        cls, n = req["class"], req["count"]
        found = [d for d in dets if d.shape == cls]
        ok = True
        if len(found) < n:
            ok = False
            what = f"{cls} not found" if n == 1 else f"{_plural(n, cls)} expected, {len(found)} found"
            reasons.append(f"{what}: {describe(dets)}")
        elif "color" in req:
            colored = [d for d in found if d.color == req["color"]]
            if len(colored) < n:
                ok = False
                reasons.append(f"no {req['color']} {cls}: the {cls}s are {', '.join(d.color for d in found)}")
            found = colored
        found = found[:n]
        if ok and "position" in req:
            rel, target = req["position"]
            if groups[target] is None:  # the target's clause failed and says why
                ok = False
            else:
                for a in found:
                    for b in groups[target]:
                        got = relations(a.box, b.box)
                        if rel not in got:
                            ok = False
                            reasons.append(f"{cls} not {rel} the {meta['include'][target]['class']}: "
                                           f"it is {' and '.join(sorted(got)) or 'at no clear offset from'} it")
                            break
                    if not ok:
                        break
        groups.append(found if ok else None)
    for req in meta.get("exclude", []):
        n_found = sum(d.shape == req["class"] for d in dets)
        if n_found >= req["count"]:
            reasons.append(f"at most {_plural(req['count'] - 1, req['class'])} expected, {n_found} found")
    return not reasons, "; ".join(reasons)


def scene_detections(scene: Scene, size: int = 64) -> list[Detection]:
    """The exact detections of a rendered scene, from its geometry (no pixels): ground truth for
    :func:`judge`, e.g. to know every caption that is true of a training image."""
    dets = [Detection(o.shape, o.color, o.box, int(round((o.size * size) ** 2)), 1.0) for o in scene.objects]
    return sorted(dets, key=lambda d: -d.area)


def inverse_relation(meta: dict, dets: list[Detection]) -> bool | None:
    """For a prompt with a relation ("a circle left of a square"): whether the image shows the *inverse*
    one, both named objects found and some pair of them with centres in the opposite relation by GenEval's
    rule (the circle right of the square). ``None`` for prompts without a relation."""
    for req in meta["include"]:
        if "position" in req:
            rel, target = req["position"]
            a = [d for d in dets if d.shape == req["class"]]
            b = [d for d in dets if d.shape == meta["include"][target]["class"]]
            return any(INVERSE[rel] in relations(x.box, y.box) for x in a for y in b if x is not y)
    return None


def evaluate_image(image, prompt_or_meta: str | dict) -> dict:
    """``{"prompt", "tag", "correct", "reason", "detections"}`` (plus ``"inverse"``, see
    :func:`inverse_relation`, for prompts with a relation)."""
    meta = parse_prompt(prompt_or_meta) if isinstance(prompt_or_meta, str) else prompt_or_meta
    dets = detect(image)
    correct, reason = judge(meta, dets)
    out = {"prompt": meta["prompt"], "tag": meta["tag"], "correct": correct, "reason": reason,
           "detections": [asdict(d) for d in dets]}
    inverse = inverse_relation(meta, dets)
    if inverse is not None:
        out["inverse"] = inverse
    return out


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
    relation), ``inverse_relation`` (share of the rows with a relation whose image shows the inverse one),
    ``correct``, ``detected`` and ``inverse`` (per image: the verdict, the number of objects found, the
    inverse relation or ``None``)."""
    res = evaluate(images, metas)
    ok = np.array([r["correct"] for r in res["per_image"]])
    held = np.array([bool(m.get("held_out")) for m in metas])
    inverse = [r["inverse"] for r in res["per_image"] if "inverse" in r]
    return {"overall": res["overall"], "per_category": res["per_category"], "n": res["n"],
            "held_out_compositions": float(ok[held].mean()) if held.any() else None,
            "inverse_relation": float(np.mean(inverse)) if inverse else None, "correct": ok.tolist(),
            "detected": [len(r["detections"]) for r in res["per_image"]],
            "inverse": [r.get("inverse") for r in res["per_image"]]}


def category_table(columns: dict[str, dict]) -> list[str]:
    """Markdown rows comparing evaluator results (``{column: {"per_category", "overall",
    "held_out_compositions"}}``): a row per category scored, overall, held-out compositions."""
    names = list(columns)
    rows = ["| category | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for tag in [t for t in CATEGORIES if t in columns[names[0]]["per_category"]]:
        rows.append(f"| {tag} | " + " | ".join(f"{columns[k]['per_category'][tag]:.3f}" for k in names) + " |")
    rows.append("| **overall** | " + " | ".join(f"**{columns[k]['overall']:.3f}**" for k in names) + " |")
    rows.append("| held-out compositions | " + " | ".join(f"{columns[k]['held_out_compositions']:.3f}" for k in names) + " |")
    return rows
