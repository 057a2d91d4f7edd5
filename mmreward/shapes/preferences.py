"""Synthetic "human" preference pairs on ShapesWorld, with exact noise-free labels.

    python -m mmreward.shapes.preferences --out data/prefs/train --pairs 4000 --noise 0.2 --seed 0

The simulated annotator has a hidden utility for an image of a prompt::

    u = faithful + TASTE_WEIGHT · taste

``faithful`` (0/1) is the exact GenEval verdict of the scene for the prompt; ``taste`` is how large the
objects are drawn relative to the usual size (``mean size / nominal − 1``, about −0.3 to +0.4): like people, the
annotator prefers a correct image, and among correct images the one whose objects fill the frame. A pair
whose utilities differ by less than ``TIE_MARGIN`` is a tie. Two kinds of pairs, half each:

* ``alignment``: a correct image against one of a hard-negative prompt (a colour, shape, count or relation
  swapped), both at random sizes. Correctness always wins (the taste term spans less than 1), so a
  prompt–image score such as CLIPScore can get these right.
* ``taste``: two correct images at different sizes. The prompt does not decide these; only a reward
  that has learned the annotator's taste does.

Label noise: with probability ``noise`` a non-tied label is flipped (the ``truth`` field keeps the
noise-free choice). Writes ``images/NNNNN_{a,b}.png`` and ``preferences.jsonl`` (:mod:`mmreward.preference`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..command import run_command, with_examples
from ..errors import UserError
from ..preference import PreferenceExample, label_from_choice, write_preferences
from .evaluator import judge, scene_detections
from .prompts import CATEGORIES, hard_negatives, sample_meta, sample_scene
from .world import Scene, render

KINDS = ("alignment", "taste")
TASTE_WEIGHT = 1.0
TIE_MARGIN = 0.05
SCALE_RANGE = (0.8, 1.3)


def faithful(meta: dict, scene: Scene) -> bool:
    """Whether ``scene`` satisfies the prompt ``meta`` (exact, from the scene's geometry)."""
    return judge(meta, scene_detections(scene))[0]


def taste(scene: Scene) -> float:
    """Mean object size relative to the nominal size of a scene with that many objects, minus 1."""
    nominal = 0.28 if len(scene.objects) <= 2 else 0.23
    return float(np.mean([o.size for o in scene.objects]) / nominal - 1)


def utility(meta: dict, scene: Scene) -> float:
    return float(faithful(meta, scene)) + TASTE_WEIGHT * taste(scene)


def truth_choice(u: tuple[float, float]) -> int | None:
    """The noise-free choice between two utilities: the larger, ``None`` (a tie) within ``TIE_MARGIN``."""
    return None if abs(u[0] - u[1]) < TIE_MARGIN else int(u[1] > u[0])


def make_pair(meta: dict, kind: str, rng: np.random.Generator) -> tuple[list[Scene], int | None]:
    """Two scenes for ``meta`` of ``kind`` (random order) and the noise-free choice between them."""
    if kind not in KINDS:
        raise ValueError(f"unknown pair kind {kind!r}; known: {KINDS}")
    scales = rng.uniform(*SCALE_RANGE, size=2)
    good = sample_scene(meta, rng, size_scale=float(scales[0]))
    if kind == "taste":
        other = sample_scene(meta, rng, size_scale=float(scales[1]))
    else:
        negs = hard_negatives(meta, rng)
        for _ in range(20):
            other = sample_scene(negs[int(rng.integers(len(negs)))], rng, size_scale=float(scales[1]))
            if not faithful(meta, other):
                break
        else:
            raise RuntimeError(f"no hard negative of {meta['prompt']!r} fails it")
    scenes = [good, other] if rng.random() < 0.5 else [other, good]
    return scenes, truth_choice(tuple(utility(meta, s) for s in scenes))


def generate(out: str | Path, pairs: int, noise: float = 0.2, seed: int = 0, split: str = "train",
             size: int = 64, progress: bool = True) -> Path:
    """Write ``pairs`` examples (categories and kinds balanced) to ``out``; returns the JSONL path."""
    if not 0 <= noise < 0.5:
        raise ValueError(f"noise must be in [0, 0.5), got {noise}")
    if pairs < 1:
        raise ValueError(f"pairs must be >= 1, got {pairs}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    examples = []
    for i in tqdm(range(pairs), desc="preference pairs", disable=not progress):
        tag, kind = CATEGORIES[i % len(CATEGORIES)], KINDS[(i // len(CATEGORIES)) % len(KINDS)]
        meta = sample_meta(tag, rng, split)
        scenes, truth = make_pair(meta, kind, rng)
        choice = truth
        if truth is not None and rng.random() < noise:
            choice = 1 - truth
        paths = []
        for side, scene in zip("ab", scenes, strict=True):
            p = out / "images" / f"{i:05d}_{side}.png"
            Image.fromarray(render(scene, size)).save(p)
            paths.append(str(p))
        examples.append(PreferenceExample(meta["prompt"], paths, label_from_choice(choice, 2), category=kind,
                                          truth=label_from_choice(truth, 2)))
    return write_preferences(out / "preferences.jsonl", examples)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (images/ and preferences.jsonl)")
    p.add_argument("--pairs", type=int, default=4000)
    p.add_argument("--noise", type=float, default=0.2, help="share of non-tied labels flipped")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train", choices=["train", "held_out", "any"],
                   help="prompt compositions (ShapesWorld's held-out colour-shape pairs and relations)")
    with_examples(p, "mmalign shapes preferences --out prefs --pairs 4000 --noise 0.2")
    args = p.parse_args(argv)
    try:
        path = generate(args.out, args.pairs, args.noise, args.seed, args.split)
    except ValueError as e:
        if isinstance(e, UserError):
            raise
        raise UserError(str(e)) from e
    print(f"wrote {args.pairs} pairs to {path}")
    return path


if __name__ == "__main__":
    sys.exit(run_command(main))
