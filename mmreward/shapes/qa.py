"""Questions and answers about ShapesWorld scenes, with hallucinated answers, and a VL-RewardBench-format set.

    python -m mmreward.shapes.qa --out data/shapes_vlrb --items 400 --seed 1 --split held_out
    python -m mmreward.bench --reward "vlm:assets/shapesworld-judge?template=answers-pairwise" \\
        --data data/shapes_vlrb/shapes_vlrb.json

Every answer is read from the scene itself (exact ground truth); its hallucinated twin changes one fact:

* ``count``: "How many circles are there?" → "There are three circles." / a count off by one;
* ``colour``: "What colour is the square?" (a shape shown once) → "The square is red." / another colour;
* ``relation``: "Where is the star relative to the circle?" (two shapes shown once, one clear relation by
  GenEval's rule at twice its threshold) → "The star is left of the circle." / the inverse relation;
* ``absent``: "What is in the image?" → the objects shown / the same list with an object that is not there.

The set file is VL-RewardBench's: a JSON list of ``{"id", "query", "response": [2 answers],
"human_ranking": [rank, rank] (0 = better), "image", "query_source": category}``, images as PNGs beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ..command import run_command, with_examples
from .prompts import CATEGORIES, INVERSE, NUMBERS, POSITION_THRESHOLD, relations, sample_meta, sample_scene
from .world import COLORS, SHAPES, Scene, render

QA_CATEGORIES = ("count", "colour", "relation", "absent")
HELD_OUT_TAGS = ("colors", "position", "color_attr")  #: prompt categories with held-out compositions


def _plural(n: int, shape: str) -> str:
    return f"{NUMBERS.get(n, str(n))} {shape}s" if n != 1 else f"one {shape}"


def _a(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def describe_objects(objects: list[tuple[str, str]]) -> str:
    """'A red circle and a blue square.' for ``[(shape, colour), ...]`` (counts grouped, in order of first
    appearance)."""
    groups: dict[tuple[str, str], int] = {}
    for shape, colour in objects:
        groups[(shape, colour)] = groups.get((shape, colour), 0) + 1
    parts = [_a(f"{c} {s}") if n == 1 else f"{NUMBERS.get(n, str(n))} {c} {s}s" for (s, c), n in groups.items()]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[0].upper() + text[1:] + "."


def question(scene: Scene, category: str, rng: np.random.Generator) -> dict | None:
    """``{"category", "question", "answer", "wrong"}`` about ``scene``, or None when the scene cannot pose
    that kind of question (no shape shown once, no clear relation)."""
    objs = scene.objects
    shapes = [o.shape for o in objs]
    single = [o for o in objs if shapes.count(o.shape) == 1]
    if category == "count":
        shape = str(rng.choice(sorted(set(shapes))))
        n = shapes.count(shape)
        wrong = n + 1 if n == 1 or (n < 4 and rng.random() < 0.5) else n - 1
        verb = lambda k: "is" if k == 1 else "are"  # noqa: E731
        return {"category": category, "question": f"How many {shape}s are there?",
                "answer": f"There {verb(n)} {_plural(n, shape)}.", "wrong": f"There {verb(wrong)} {_plural(wrong, shape)}."}
    if category == "colour":
        if not single:
            return None
        o = single[int(rng.integers(len(single)))]
        other = str(rng.choice([c for c in COLORS if c != o.color]))
        return {"category": category, "question": f"What colour is the {o.shape}?",
                "answer": f"The {o.shape} is {o.color}.", "wrong": f"The {o.shape} is {other}."}
    if category == "relation":
        pairs = []
        for a in single:
            for b in single:
                if a is not b:
                    rel = relations(a.box, b.box, threshold=2 * POSITION_THRESHOLD)
                    if len(rel) == 1:
                        pairs.append((a, b, next(iter(rel))))
        if not pairs:
            return None
        a, b, rel = pairs[int(rng.integers(len(pairs)))]
        return {"category": category, "question": f"Where is the {a.shape} relative to the {b.shape}?",
                "answer": f"The {a.shape} is {rel} the {b.shape}.", "wrong": f"The {a.shape} is {INVERSE[rel]} the {b.shape}."}
    if category == "absent":
        shown = [(o.shape, o.color) for o in objs]
        missing = [s for s in SHAPES if s not in shapes]
        if not missing:
            return None
        extra = (str(rng.choice(missing)), str(rng.choice(list(COLORS))))
        hallucinated = list(shown)
        hallucinated.insert(int(rng.integers(len(shown) + 1)), extra)
        return {"category": category, "question": "What is in the image?", "answer": describe_objects(shown),
                "wrong": describe_objects(hallucinated)}
    raise ValueError(f"unknown question category {category!r}; known: {QA_CATEGORIES}")


def sample_item(rng: np.random.Generator, category: str, split: str = "train") -> tuple[Scene, dict]:
    """A scene (prompt category drawn uniformly; ``split`` as :func:`sample_meta`, ``held_out`` drawing from the
    categories that have held-out compositions) and a question about it."""
    tags = HELD_OUT_TAGS if split == "held_out" else CATEGORIES
    for _ in range(100):
        meta = sample_meta(str(rng.choice(tags)), rng, split)
        scene = sample_scene(meta, rng, allow_held_out=split != "train")
        qa = question(scene, category, rng)
        if qa is not None:
            return scene, {**qa, "prompt": meta["prompt"]}
    raise RuntimeError(f"no scene posed a {category!r} question in 100 draws")


def write_vlrb(out: str | Path, items: int, seed: int = 1, split: str = "held_out", size: int = 64) -> Path:
    """``items`` questions (spread evenly over :data:`QA_CATEGORIES`) in VL-RewardBench's format; the right
    answer is first or second at random. Returns the set file."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(items):
        category = QA_CATEGORIES[i % len(QA_CATEGORIES)]
        scene, qa = sample_item(rng, category, split)
        name = f"images/{i:05d}.png"
        Image.fromarray(render(scene, size)).save(out / name)
        right_first = bool(rng.random() < 0.5)
        records.append({"id": f"shapes-{i:05d}", "query": qa["question"],
                        "response": [qa["answer"], qa["wrong"]] if right_first else [qa["wrong"], qa["answer"]],
                        "human_ranking": [0, 1] if right_first else [1, 0], "image": name, "query_source": category,
                        "prompt": qa["prompt"], "scene": scene.to_dict()})
    path = out / "shapes_vlrb.json"
    path.write_text(json.dumps(records, indent=1))
    return path


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for shapes_vlrb.json and images/")
    p.add_argument("--items", type=int, default=400)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--split", default="held_out", choices=["train", "held_out", "any"],
                   help="scenes of training compositions, held-out ones, or any")
    p.add_argument("--overwrite", action="store_true")
    with_examples(p, "python -m mmreward.shapes.qa --out data/shapes_vlrb --items 400")
    args = p.parse_args(argv)
    from ..errors import UserError

    if (Path(args.out) / "shapes_vlrb.json").exists() and not args.overwrite:
        raise UserError(f"{args.out}/shapes_vlrb.json exists; pass --overwrite to replace it")
    if args.items < 1:
        raise UserError(f"--items must be at least 1, got {args.items}")
    path = write_vlrb(args.out, args.items, args.seed, args.split)
    print(f"{args.items} items written to {path}")
    return path


if __name__ == "__main__":
    sys.exit(run_command(main))
