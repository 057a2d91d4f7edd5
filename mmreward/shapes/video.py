"""ShapesWorld video: the scenes of :mod:`mmreward.shapes` animated, with three ground-truth scores read
from pixels by the audited image evaluator.

Objects move at constant velocity along straight lines over ``F`` frames (8 by default, 16 allowed). A
prompt is an image prompt of the grammar, optionally with a motion phrase for a single object
(``"a photo of a red circle moving left"``): that object crosses a fifth to a third of the frame in the named
direction. Without a motion phrase the whole scene drifts slowly and rigidly, so relations, counts and
separations hold in every frame.

Scores of a video (:func:`evaluate_video`):

* ``per_frame``: the mean over frames of the evaluator's verdict on the prompt's content clauses;
* ``consistent``: every frame shows the same multiset of recognised objects (shape, colour) and no object's
  centre moves more than ``max_jump`` (normalised units) between consecutive frames;
* ``motion`` (prompts with a motion phrase, else ``None``): the named object's net displacement from the
  first to the last frame points the prompted way (at least ``min_shift`` along it, more along than across).
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from .evaluator import Detection, detect, judge
from .prompts import parse_prompt, sample_scene
from .world import Scene, render

DIRECTIONS: dict[str, tuple[float, float]] = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0),
                                               "down": (0.0, 1.0)}
FRAMES = 8
MAX_JUMP = 0.15  #: largest centre move between consecutive frames of a consistent video (ground truth: <= 0.05)
MIN_SHIFT = 0.1  #: net displacement along the prompted direction that counts as moving (ground truth: >= 0.2)
_MOTION = re.compile(r"^(?P<base>.*?)\s+moving\s+(?P<dir>left|right|up|down)\.?$")


def can_move(meta: dict) -> bool:
    """Whether a motion phrase can name the prompt's object: one clause of one object, no relation."""
    inc = meta["include"]
    return len(inc) == 1 and inc[0]["count"] == 1 and "position" not in inc[0]


def with_motion(meta: dict, direction: str) -> dict:
    """The video prompt of ``meta`` with ``moving <direction>``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; choose one of {sorted(DIRECTIONS)}")
    if not can_move(meta):
        raise ValueError(f"a motion phrase needs a prompt of one object: {meta['prompt']!r}")
    content = {k: v for k, v in meta.items() if k not in ("motion", "prompt")}
    return {**content, "motion": direction, "prompt": f"{meta['prompt']} moving {direction}"}


def parse_video_prompt(prompt: str) -> dict:
    """The meta of a video prompt (an image prompt, with ``"motion"`` when it has a motion phrase);
    ``ValueError`` for a prompt outside the grammar."""
    text = " ".join(prompt.strip().lower().split())
    m = _MOTION.match(text)
    if m is None:
        return parse_prompt(text)
    return with_motion(parse_prompt(m["base"]), m["dir"])


def content_meta(meta: dict) -> dict:
    """The image prompt of a video prompt (what every frame must show)."""
    if "motion" not in meta:
        return meta
    return {**{k: v for k, v in meta.items() if k != "motion"}, "prompt": re.sub(r"\s+moving \w+$", "", meta["prompt"])}


def _inside(scene: Scene, dx: float, dy: float, margin: float = 0.02) -> bool:
    return all(margin <= o.x + dx - o.size / 2 and o.x + dx + o.size / 2 <= 1 - margin
               and margin <= o.y + dy - o.size / 2 and o.y + dy + o.size / 2 <= 1 - margin for o in scene.objects)


def sample_video_scenes(meta: dict, rng: np.random.Generator, frames: int = FRAMES,
                        allow_held_out: bool = True) -> list[Scene]:
    """``frames`` scenes that show ``meta`` in every frame, its motion (if any) as constant velocity;
    ``allow_held_out=False`` never colours an unnamed object with a held-out colour–shape pair (training)."""
    if frames < 2:
        raise ValueError(f"a video needs at least 2 frames, got {frames}")
    for _ in range(200):
        scene = sample_scene(content_meta(meta), rng, allow_held_out, size_scale=0.85 if "motion" in meta else 1.0)
        if "motion" in meta:
            ux, uy = DIRECTIONS[meta["motion"]]
            total = float(rng.uniform(0.2, 0.33))
        else:  # a slow rigid drift in a random direction
            angle = float(rng.uniform(0, 2 * np.pi))
            ux, uy, total = np.cos(angle), np.sin(angle), float(rng.uniform(0.0, 0.1))
        step = total / (frames - 1)
        # start so that the whole path stays in the frame: shift the sampled layout back by half the path
        start = Scene([replace(o, x=o.x - ux * total / 2, y=o.y - uy * total / 2) for o in scene.objects])
        if _inside(start, 0, 0) and _inside(start, ux * total, uy * total):
            return [Scene([replace(o, x=o.x + ux * step * t, y=o.y + uy * step * t) for o in start.objects])
                    for t in range(frames)]
    raise RuntimeError(f"could not place a video for {meta['prompt']!r}")


def render_video(scenes: list[Scene], size: int = 64) -> np.ndarray:
    """uint8 ``[F, H, W, 3]`` frames of ``scenes``."""
    return np.stack([render(s, size) for s in scenes])


def sample_video(meta: dict, rng: np.random.Generator, frames: int = FRAMES, size: int = 64,
                 allow_held_out: bool = True) -> np.ndarray:
    """A ground-truth video ``[F, H, W, 3]`` uint8 of ``meta``."""
    return render_video(sample_video_scenes(meta, rng, frames, allow_held_out), size)


def sample_video_meta(rng: np.random.Generator, split: str = "train", motion_share: float = 0.5) -> dict:
    """A random video prompt: with probability ``motion_share`` one object with a motion phrase (a random
    direction), else a prompt of a random category (categories drawn uniformly)."""
    from .prompts import CATEGORIES, sample_meta

    if rng.random() < motion_share:
        meta = sample_meta(str(rng.choice(["single_object", "colors"])), rng, split)
        return with_motion(meta, str(rng.choice(list(DIRECTIONS))))
    return sample_meta(str(rng.choice(CATEGORIES)), rng, split)


def _centre(d: Detection) -> np.ndarray:
    x0, y0, x1, y1 = d.box
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2])


def _largest_jump(a: list[Detection], b: list[Detection]) -> float:
    """The largest centre move between two frames with the same objects, matching each (shape, colour)
    group greedily by distance."""
    worst = 0.0
    for key in {(d.shape, d.color) for d in a}:
        pa = [_centre(d) for d in a if (d.shape, d.color) == key]
        pb = [_centre(d) for d in b if (d.shape, d.color) == key]
        dist = np.array([[np.linalg.norm(p - q) for q in pb] for p in pa])
        while dist.size:
            i, j = np.unravel_index(np.argmin(dist), dist.shape)
            worst = max(worst, float(dist[i, j]))
            dist = np.delete(np.delete(dist, i, 0), j, 1)
    return worst


def evaluate_video(frames, prompt_or_meta: str | dict, max_jump: float = MAX_JUMP, min_shift: float = MIN_SHIFT) -> dict:
    """The three scores of a video (``frames``: ``[F, H, W, 3]`` uint8 or a list of images) and why; also
    ``pair_consistency``, the share of consecutive frame pairs that pass the consistency test (a graded
    version of ``consistent``, which needs every pair to pass)."""
    meta = parse_video_prompt(prompt_or_meta) if isinstance(prompt_or_meta, str) else prompt_or_meta
    content = content_meta(meta)
    dets = [detect(f) for f in frames]
    verdicts = [judge(content, d) for d in dets]
    objects = [sorted((d.shape, d.color) for d in ds if d.shape is not None) for ds in dets]
    recognised = [[d for d in ds if d.shape is not None] for ds in dets]
    # each consecutive pair: the same recognised objects, and then no jump larger than max_jump
    same = [a == b for a, b in zip(objects, objects[1:], strict=False)]
    jumps = [_largest_jump(ra, rb) if s else np.inf for s, ra, rb in zip(same, recognised, recognised[1:], strict=False)]
    pairs = [j <= max_jump for j in jumps]
    consistent, reasons = all(pairs), []
    if not all(same):
        k = next(i for i, o in enumerate(objects) if o != objects[0])
        reasons.append(f"frame {k} shows {objects[k] or 'nothing recognised'}, frame 0 {objects[0]}")
    elif not consistent:
        k = int(np.argmax(jumps))
        reasons.append(f"an object jumps {jumps[k]:.2f} between frames {k} and {k + 1}")
    motion = None
    if "motion" in meta:
        clause = content["include"][0]
        named = [[d for d in ds if d.shape == clause["class"] and d.color == clause.get("color", d.color)]
                 for ds in (recognised[0], recognised[-1])]
        if not named[0] or not named[1]:
            motion = False
            reasons.append(f"the {clause['class']} is not in the {'first' if not named[0] else 'last'} frame")
        else:
            shift = _centre(named[1][0]) - _centre(named[0][0])
            u = np.array(DIRECTIONS[meta["motion"]])
            along, across = float(shift @ u), float(abs(shift[0] * u[1] - shift[1] * u[0]))
            motion = along >= min_shift and along > across
            if not motion:
                reasons.append(f"moves {along:+.2f} {meta['motion']} and {across:.2f} across (needs >= {min_shift})")
    failed = [f"frame {i}: {r}" for i, (c, r) in enumerate(verdicts) if not c]
    return {"prompt": meta["prompt"], "tag": meta["tag"], "per_frame": float(np.mean([c for c, _ in verdicts])),
            "frames_correct": [bool(c) for c, _ in verdicts], "consistent": consistent,
            "pair_consistency": float(np.mean(pairs)) if pairs else 1.0, "motion": motion,
            "reason": "; ".join(reasons + failed[:3])}
