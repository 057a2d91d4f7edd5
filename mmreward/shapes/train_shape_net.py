"""Train the evaluator's shape classifier (:mod:`.shape_net`) on drawn shapes.

    python -m mmreward.shapes.train_shape_net --out assets/shapesworld-shape-net --real benchmarks/audit

Training masks are drawn once into a pool (``--pool``, sampled with left-right flips): one object at
9-34 px on a 64-px canvas, as the evaluator reads it (coverage, cropped to a square box, 32x32). A fifth
of the named shapes are drawn exactly as the world renders them; the rest vary as generators draw them
and people still name them: rotation, aspect, sides bowed in or out, rounded corners, a leaning apex, a
star's inner radius, point lengths and blunt tips, a small smooth warp, blur up to 1.1 px and coverage
noise. The ``blob`` class holds what people do not name as any of the four: regular pentagons to octagons,
houses, domes, teardrops, trapezoids, crescents, arrowheads, irregular polygons, lumpy blobs and two
shapes merged into one. With ``--real benchmarks/audit`` each step also takes ``--real-batch`` objects
of generated images that people named (the audit set's ``dev`` half, never its ``test`` half). Seeded; checkpoints every ``--ckpt-every`` steps to ``--work`` and resumes from
there; writes ``config.json`` + ``model.safetensors`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy import ndimage

from ..command import run_command, with_examples
from ..schedules import warmup_cosine
from ..trainer import StepTrainer, add_run_args, start_run
from .shape_net import CLASSES, ShapeNet, crop_square, save_shape_net

SS = 4  #: supersampling of the 64-px canvas
BLOB_KINDS = ("polygon", "house", "dome", "teardrop", "trapezoid", "crescent", "arrowhead", "irregular", "lumpy", "merged")


def _rot(pts, deg: float, c: tuple[float, float]):
    a = math.radians(deg)
    return [(c[0] + x * math.cos(a) - y * math.sin(a), c[1] + x * math.sin(a) + y * math.cos(a)) for x, y in pts]


def _bow(pts, bow: float, segments: int = 10):
    """Sides bent along their outward normal by ``bow`` x the side length (negative: inwards)."""
    out, n = [], len(pts)
    cx, cy = np.mean(pts, axis=0)
    for i in range(n):
        (x0, y0), (x1, y1) = pts[i], pts[(i + 1) % n]
        length = math.hypot(x1 - x0, y1 - y0) or 1.0
        nx, ny = (y1 - y0) / length, -(x1 - x0) / length
        if nx * ((x0 + x1) / 2 - cx) + ny * ((y0 + y1) / 2 - cy) < 0:
            nx, ny = -nx, -ny
        for k in range(segments):
            t = k / segments
            off = bow * length * math.sin(math.pi * t)
            out.append((x0 + t * (x1 - x0) + off * nx, y0 + t * (y1 - y0) + off * ny))
    return out


def _radial(n: int, r: float, rng, amp: float = 0.0, start: float = -math.pi / 2, jitter: float = 0.0):
    """``n`` points on a circle of radius ``r`` (plus a smooth radial wobble of relative amplitude ``amp``)."""
    k1, k2 = rng.integers(2, 6, size=2)
    p1, p2 = rng.uniform(0, 2 * math.pi, size=2)
    pts = []
    for i in range(n):
        a = start + 2 * math.pi * i / n + rng.uniform(-jitter, jitter)
        rr = r * (1 + amp * (0.6 * math.sin(k1 * a + p1) + 0.4 * math.sin(k2 * a + p2)))
        pts.append((rr * math.cos(a), rr * math.sin(a)))
    return pts


def _named(shape: str, r: float, rng) -> list:
    """Outline (centred at 0) of a named shape as a generator might draw it and a person still names it."""
    if shape == "circle":
        return _radial(64, r, rng, amp=rng.uniform(0, 0.06))
    if shape == "square":
        pts = [(-r, -r), (r, -r), (r, r), (-r, r)]
        pts = [(x * (1 + rng.uniform(-0.1, 0.1)), y * (1 + rng.uniform(-0.1, 0.1))) for x, y in pts]
        return _bow(pts, rng.uniform(-0.12, 0.07))
    if shape == "triangle":
        pts = [(rng.uniform(-0.3, 0.3) * r, -r), (r, r), (-r, r)]
        return _bow(pts, rng.uniform(-0.1, 0.07))
    inner = rng.uniform(0.32, 0.62)
    tips = r * rng.uniform(0.85, 1.1, size=5)
    return [((tips[k // 2] if k % 2 == 0 else inner * r) * math.cos(-math.pi / 2 + k * math.pi / 5),
             (tips[k // 2] if k % 2 == 0 else inner * r) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]


def _blob(kind: str, r: float, rng) -> list[list]:
    """Outlines (one or two polygons, centred at 0) of something that is none of the four shapes."""
    if kind == "polygon":
        return [_radial(int(rng.integers(5, 9)), r, rng, start=rng.uniform(0, 2 * math.pi))]
    if kind == "house":
        roof = rng.uniform(0.3, 0.9) * r
        return [[(-r, r), (r, r), (r, -r + roof), (0, -r), (-r, -r + roof)]]
    if kind == "dome":
        h = rng.uniform(-0.2, 0.5) * r
        arc = [(r * math.cos(a), h - r * math.sin(a)) for a in np.linspace(0, math.pi, 24)]
        return [arc + [(-r, r), (r, r)]]
    if kind == "teardrop":
        cr = rng.uniform(0.55, 0.75) * r
        cy = r - cr
        t = math.asin(min(0.99, cr / (r + cy)))
        arc = [(cr * math.cos(a), cy + cr * math.sin(a)) for a in np.linspace(-t, math.pi + t, 30)]
        return [[(0.0, -r)] + arc[::-1]]
    if kind == "trapezoid":
        top = rng.uniform(0.2, 0.65) * r
        return [[(-top, -r * 0.8), (top, -r * 0.8), (r, r * 0.8), (-r, r * 0.8)]]
    if kind == "crescent":
        outer = _radial(40, r, rng)
        d = rng.uniform(0.4, 0.8) * r
        inner = [(x + d, y) for x, y in _radial(40, r * rng.uniform(0.8, 1.0), rng)]
        return [outer, ("cut", inner)]
    if kind == "arrowhead":
        notch = rng.uniform(0.2, 0.7) * r
        return [[(0, -r), (r, r), (0, r - notch), (-r, r)]]
    if kind == "irregular":
        return [_radial(int(rng.integers(4, 8)), r, rng, amp=0.0, jitter=0.5, start=rng.uniform(0, 2 * math.pi))]
    if kind == "lumpy":
        return [_radial(64, r, rng, amp=rng.uniform(0.14, 0.3))]
    a, b = rng.choice(["circle", "square", "triangle", "star"], size=2)  # merged: two shapes overlapping heavily
    d = rng.uniform(0.25, 0.6) * r
    ang = rng.uniform(0, 2 * math.pi)
    pa = [(x - d * math.cos(ang) / 2, y - d * math.sin(ang) / 2) for x, y in _named(str(a), 0.75 * r, rng)]
    pb = [(x + d * math.cos(ang) / 2, y + d * math.sin(ang) / 2) for x, y in _named(str(b), 0.75 * r, rng)]
    return [pa, pb]


def _clean(shape: str, r: float) -> list:
    """The outline of a named shape exactly as :mod:`.world` renders it (centred at 0)."""
    if shape == "circle":
        return [(r * math.cos(a), r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 96, endpoint=False)]
    if shape == "square":
        return [(-r, -r), (r, -r), (r, r), (-r, r)]
    if shape == "triangle":
        return [(0.0, -r), (r, r), (-r, r)]
    return [((r if k % 2 == 0 else 0.45 * r) * math.cos(-math.pi / 2 + k * math.pi / 5),
             (r if k % 2 == 0 else 0.45 * r) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]


#: share of named-shape masks drawn exactly as the world renders them (ground truth must stay exact)
CLEAN_SHARE = 0.2


def draw(cls: str, rng: np.random.Generator) -> np.ndarray:
    """One training mask ``[32,32]`` of class ``cls`` (a shape of :data:`CLASSES`)."""
    big = 64 * SS
    size = rng.uniform(9, 34) * SS
    r = size / 2
    c = (big / 2 + rng.uniform(-1, 1) * SS, big / 2 + rng.uniform(-1, 1) * SS)
    if cls != "blob" and rng.random() < CLEAN_SHARE:
        im = Image.new("L", (big, big), 0)
        ImageDraw.Draw(im).polygon([(c[0] + x, c[1] + y) for x, y in _clean(cls, r)], fill=255)
        cover = (np.asarray(im) > 127).reshape(64, SS, 64, SS).mean(axis=(1, 3))
        out = crop_square(cover)
        return out if out is not None else np.zeros((32, 32), np.float32)
    polys = [_named(cls, r, rng)] if cls != "blob" else _blob(str(rng.choice(BLOB_KINDS)), r, rng)
    rot = rng.uniform(-20, 20) if cls != "blob" else rng.uniform(-180, 180) * (rng.random() < 0.5)
    aspect = math.exp(rng.uniform(-0.2, 0.2))
    im = Image.new("L", (big, big), 0)
    dr = ImageDraw.Draw(im)
    for poly in polys:
        fill = 255
        if isinstance(poly, tuple):  # ("cut", outline): erase it
            poly, fill = poly[1], 0
        pts = [(x * aspect, y / aspect) for x, y in poly]
        dr.polygon(_rot(pts, rot, c), fill=fill)
    mask = np.asarray(im) > 127
    rounding = rng.uniform(0, 0.22 if cls in ("square", "triangle", "blob") else 0.06) * size
    if rounding >= 1:  # opening by a disk, on the object's box only (distance transforms are the cost here)
        ys, xs = np.nonzero(mask)
        m = 2
        sl = (slice(max(ys.min() - m, 0), ys.max() + m + 1), slice(max(xs.min() - m, 0), xs.max() + m + 1))
        core = ndimage.distance_transform_edt(np.pad(mask[sl], 1))[1:-1, 1:-1] > rounding
        mask = mask.copy()
        mask[sl] = ndimage.distance_transform_edt(~core) <= rounding
    cover = mask.reshape(64, SS, 64, SS).mean(axis=(1, 3))
    # a small smooth warp, blur and coverage noise, as in generated images
    if rng.random() < 0.7:
        field = ndimage.gaussian_filter(rng.normal(size=(2, 64, 64)), (0, 6, 6))
        field *= rng.uniform(0, 1.2) / (np.abs(field).max() + 1e-8)
        yy, xx = np.mgrid[:64, :64].astype(float)
        cover = ndimage.map_coordinates(cover, [yy + field[0], xx + field[1]], order=1)
    cover = ndimage.gaussian_filter(cover, rng.uniform(0, 1.1))
    cover = cover / max(cover.max(), 1e-6) * rng.uniform(0.8, 1.0)
    cover = np.clip(cover + rng.normal(0, 0.03, cover.shape), 0, 1)
    out = crop_square(np.clip(cover / max(cover.max(), 1e-6), 0, 1))
    return out if out is not None else np.zeros((32, 32), np.float32)


#: sampling weights of the classes (blobs are one class drawn from ten kinds, so they get more)
CLASS_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.6)


def make_batch(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    p = np.array(CLASS_WEIGHTS) / sum(CLASS_WEIGHTS)
    y = rng.choice(len(CLASSES), size=n, p=p)
    x = np.stack([draw(CLASSES[k], rng) for k in y])
    return torch.from_numpy(x[:, None]), torch.from_numpy(y)


def labelled_objects(audit: str | Path, split: str = "dev", fold: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Objects of generated images named by people: the audit set's images of ``split`` (one split, or
    several joined by commas: ``"dev,test"``) whose labeller's
    object list (``seen``) matches the objects found one to one by colour (each colour naming one shape).
    ``fold=(k, n)`` keeps the images with ``id % n != k`` (cross-validation). Returns masks ``[N,1,32,32]``
    and class indices ``[N]``."""
    from PIL import Image

    from .evaluator import find_objects

    audit = Path(audit)
    labels = {x["id"]: x for x in map(json.loads, (audit / "labels.jsonl").read_text().splitlines())}
    masks, classes = [], []
    for it in map(json.loads, (audit / "items.jsonl").read_text().splitlines()):
        if it["split"] not in split.split(",") or (fold is not None and it["id"] % fold[1] == fold[0]):
            continue
        objs = find_objects(Image.open(audit / it["file"]))
        seen = [tuple(s.split()[::len(s.split()) - 1]) for s in labels[it["id"]]["seen"] if len(s.split()) >= 2]
        by_colour: dict[str, set] = {}
        for colour, shape in seen:
            by_colour.setdefault(colour, set()).add(shape)
        if (not objs or sorted(c for c, _ in seen) != sorted(o["color"] for o in objs)
                or any(len(v) > 1 for v in by_colour.values()) or any(s not in CLASSES for _, s in seen)):
            continue
        for o in objs:
            masks.append(o["mask"])
            classes.append(CLASSES.index(next(iter(by_colour[o["color"]]))))
    return torch.from_numpy(np.stack(masks)[:, None]), torch.tensor(classes)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="assets/shapesworld-shape-net")
    p.add_argument("--work", default="outputs/train_shape_net", help="checkpoint and log folder of the run")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--pool", type=int, default=20000, help="masks drawn once and sampled from")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--real", default=None, help="an audit folder (benchmarks/audit): also train on its people-named objects")
    p.add_argument("--real-split", default="dev", help="the audit splits to train on, comma-separated (never an "
                   "untouched test split)")
    p.add_argument("--real-fold", default=None, help="K/N: leave out the images with id %% N == K (cross-validation)")
    p.add_argument("--real-batch", type=int, default=16, help="people-named objects per step")
    p.add_argument("--stop-after", type=int, default=None, help="checkpoint and stop after this step (simulates a kill)")
    add_run_args(p)
    with_examples(p, "mmalign assets shape-net --out outputs/shape-net")
    args = p.parse_args(argv)
    start_run(args)
    rng = np.random.default_rng(args.seed)
    model = ShapeNet(args.width)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    # a fixed pool of drawn masks (the same for a resumed run), sampled with a random left-right flip
    xp, yp = make_batch(np.random.default_rng(20_000 + args.seed), args.pool)
    xv, yv = make_batch(np.random.default_rng(10_000 + args.seed), 2000)
    if args.real:
        fold = tuple(int(v) for v in args.real_fold.split("/")) if args.real_fold else None
        xr, yr = labelled_objects(args.real, args.real_split, fold)
        print(f"{len(yr)} people-named objects from {args.real} ({args.real_split})")

    def step(i: int) -> dict:
        model.train()
        idx = torch.from_numpy(rng.integers(0, args.pool, size=args.batch))
        x, y = xp[idx], yp[idx]
        if args.real:
            idx = torch.from_numpy(rng.integers(0, len(yr), size=args.real_batch))
            x, y = torch.cat([x, xr[idx]]), torch.cat([y, yr[idx]])
        flip = torch.from_numpy(rng.random(len(y)) < 0.5)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        for g in opt.param_groups:  # cosine decay (no warm-up)
            g["lr"] = warmup_cosine(i, args.steps, args.lr, warmup=1)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec = {"step": i + 1, "loss": loss.item()}
        if (i + 1) % args.ckpt_every == 0 or i + 1 == args.steps:
            model.eval()
            with torch.no_grad():
                rec["val_accuracy"] = (model(xv).argmax(-1) == yv).float().mean().item()
            trainer.logger.info(f"step {i + 1}: loss {loss.item():.3f}, synthetic val accuracy {rec['val_accuracy']:.3f}")
        return rec

    trainer = StepTrainer(args.work, args.steps, model, opt, step, np_rng=rng, checkpoint_every=args.ckpt_every,
                          stop_after=args.stop_after, name="shape-net", resume=args.resume, overwrite=args.overwrite, config=vars(args))
    trainer.run()
    if trainer.position < args.steps:
        return {"steps": trainer.position, "stopped": True}
    model.eval()
    with torch.no_grad():
        val = (model(xv).argmax(-1) == yv).float().mean().item()
    summary = {"steps": trainer.position, "wall_time_s": trainer.seconds, "synthetic_val_accuracy": val,
               "training": {k: v for k, v in vars(args).items() if k not in ("out", "work", "threads", "stop_after")}}
    save_shape_net(model, args.out, summary)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    sys.exit(run_command(main))
