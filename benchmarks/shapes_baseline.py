"""ShapesWorld baseline: evaluator accuracy on ground truth (clean, blurred, noisy), the embedded
CLIP's hard-negative caption accuracy, and the embedded text-to-image models' GenEval-style scores
(one-step and multi-step), per category.

    python benchmarks/shapes_baseline.py [--seeds 4] [--clip assets/shapesworld-clip]
        [--t2i assets/shapesworld-t2i] [--teacher assets/shapesworld-t2i-teacher]

Writes ``benchmarks/results/shapes_baseline.json`` and ``.md``, and ``shapes_t2i_samples.png`` (a grid
of samples, green = correct by the evaluator, red = wrong). ``--t2i ''`` / ``--teacher ''`` skip a model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from mmreward import load_backbone
from mmreward.images import image_grid, text_tile, verdict_tile
from mmreward.shapes import evaluate, load_suite, render, sample_scene
from mmreward.shapes.clip_eval import hard_negative_accuracy, hard_negative_items
from mmreward.shapes.evaluator import category_table
from mmreward.shapes.generate import sample_pipeline
from mmreward.shapes.prompts import CATEGORIES
from mmreward.shapes.suites import COMPOSITIONAL

RESULTS = Path(__file__).parent / "results"


def evaluator_accuracy(metas: list[dict], seeds: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    rows = [m for m in metas for _ in range(seeds)]
    clean = np.stack([render(sample_scene(m, rng)) for m in rows]).astype(np.float32) / 255
    noise_rng = np.random.default_rng(seed + 1)
    variants = {
        "clean": clean,
        "blur_sigma1": ndimage.gaussian_filter(clean, sigma=(0, 1, 1, 0)),
        "noise_sigma0.05": np.clip(clean + noise_rng.normal(0, 0.05, clean.shape), 0, 1),
    }
    out = {}
    for name, imgs in variants.items():
        t = time.time()
        res = evaluate(list(imgs), rows)
        out[name] = {"overall": res["overall"], "per_category": res["per_category"], "n": res["n"],
                     "seconds_per_image": (time.time() - t) / len(rows)}
    return out


#: (name, model argument, steps, guidance): how each embedded generator is scored
GENERATOR_SETTINGS = (
    ("one_step", "t2i", 1, 0.0),
    ("two_step", "t2i", 2, 0.0),
    ("four_step", "t2i", 4, 0.0),
    ("teacher_ddim20_cfg3", "teacher", 20, 3.0),
)


def generator_scores(pipes: dict, suite: list[dict], seeds: int) -> tuple[dict, dict]:
    """Evaluator scores of each setting in :data:`GENERATOR_SETTINGS` whose model is in ``pipes``;
    also returns the images (``{setting: [n_prompts*seeds uint8 arrays]}``) for the sample grid."""
    out, images = {}, {}
    prompts = [m["prompt"] for m in suite]
    for name, which, steps, guidance in GENERATOR_SETTINGS:
        if which not in pipes:
            continue
        t = time.time()
        rows, imgs = [], []
        for i, _, im in sample_pipeline(pipes[which], prompts, seeds, steps, guidance, batch=96):
            rows.append(suite[i])
            imgs.append(np.asarray(im))
        sample_time = time.time() - t
        res = evaluate(imgs, rows)
        ok = np.array([r["correct"] for r in res["per_image"]])
        held = np.array([bool(m.get("held_out")) for m in rows])
        compositional = np.array([m["tag"] in COMPOSITIONAL for m in rows])
        out[name] = {
            "model": str(pipes[which].name_or_path), "steps": steps, "guidance": guidance,
            "overall": res["overall"], "per_category": res["per_category"], "n": res["n"],
            "held_out_compositions": float(ok[held].mean()),
            "seen_compositions": float(ok[compositional & ~held].mean()),
            "seconds_per_image": sample_time / len(rows),
        }
        images[name] = (imgs, ok)
    return out, images


def sample_grid(suite: list[dict], seeds: int, images: dict, per_category: int = 2) -> Image.Image:
    """Rows: prompts (``per_category`` of each category); columns: each setting's first 2 seeds."""
    picks = [i for tag in CATEGORIES for i in [k for k, m in enumerate(suite) if m["tag"] == tag][:per_category]]
    tiles = []
    for i in picks:
        tiles.append(text_tile(suite[i]["prompt"].removeprefix("a photo of ")))
        for imgs, ok in images.values():
            tiles += [verdict_tile(imgs[i * seeds + s], ok[i * seeds + s]) for s in range(min(2, seeds))]
    header = [text_tile("")] + [text_tile(f"{name} seed {s}", y=50) for name in images for s in range(min(2, seeds))]
    return image_grid(header + tiles, cols=1 + len(images) * min(2, seeds))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=4, help="renders per evaluation prompt")
    p.add_argument("--clip", default="assets/shapesworld-clip")
    p.add_argument("--t2i", default="assets/shapesworld-t2i", help="one-step pipeline folder ('' to skip)")
    p.add_argument("--teacher", default="assets/shapesworld-t2i-teacher", help="multi-step pipeline folder ('' to skip)")
    p.add_argument("--only-clip", action="store_true", help="re-measure only the CLIP section of the existing results")
    args = p.parse_args()

    suite = load_suite("eval")
    if args.only_clip:
        result = json.loads((RESULTS / "shapes_baseline.json").read_text())
    else:
        result = {"suite": {"prompts": len(suite), "per_category": {t: sum(m["tag"] == t for m in suite) for t in CATEGORIES}}}
        result["evaluator_ground_truth"] = evaluator_accuracy(suite, args.seeds)

    backbone = load_backbone(f"clip:{args.clip}")
    items = hard_negative_items(suite * args.seeds, seed=777)
    result["clip_hard_negative_accuracy"] = {"model": args.clip, **hard_negative_accuracy(backbone, items)}
    seen = [it for it in items if not it[1]["held_out"]]
    result["clip_hard_negative_accuracy"]["seen_compositions"] = hard_negative_accuracy(backbone, seen)["overall"]

    images = {}
    if not args.only_clip:
        from diffusers import DiffusionPipeline

        pipes = {k: DiffusionPipeline.from_pretrained(v) for k, v in (("t2i", args.t2i), ("teacher", args.teacher)) if v}
        result["generator"], images = generator_scores(pipes, suite, args.seeds)

    RESULTS.mkdir(parents=True, exist_ok=True)
    if images:
        sample_grid(suite, args.seeds, images).save(RESULTS / "shapes_t2i_samples.png")
    (RESULTS / "shapes_baseline.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "shapes_baseline.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    ev = r["evaluator_ground_truth"]
    clip = r["clip_hard_negative_accuracy"]
    lines = ["## ShapesWorld baseline", "", "Evaluator accuracy on ground-truth renders of the evaluation suite "
             f"({ev['clean']['n']} images):", "", "| category | clean | blur σ=1 px | noise σ=0.05 |", "|---|---|---|---|"]
    for tag in CATEGORIES:
        lines.append(f"| {tag} | " + " | ".join(f"{ev[v]['per_category'][tag]:.3f}" for v in ev) + " |")
    lines.append("| **overall** | " + " | ".join(f"**{ev[v]['overall']:.3f}**" for v in ev) + " |")
    lines += ["", f"ShapesWorld-CLIP (`{clip['model']}`) picks the true caption over all hard negatives "
              f"(colour / shape / count / relation swapped), {clip['n']} fresh images:", "",
              "| category | accuracy |", "|---|---|"]
    for tag, v in clip["per_category"].items():
        lines.append(f"| {tag} | {v:.3f} |")
    lines += [f"| **overall** | **{clip['overall']:.3f}** |",
              f"| held-out compositions only | {clip.get('held_out', float('nan')):.3f} |",
              f"| seen compositions only | {clip['seen_compositions']:.3f} |", ""]
    gen = r.get("generator") or {}
    if gen:
        names = list(gen)
        n = next(iter(gen.values()))["n"]
        lines += [f"Embedded text-to-image models scored by the evaluator on the evaluation suite ({n} images per "
                  "setting: 4 seeds per prompt):", "", *category_table(gen)]
        lines += ["| seen compositions | " + " | ".join(f"{gen[k]['seen_compositions']:.3f}" for k in names) + " |",
                  "| sampling steps (guidance) | " + " | ".join(f"{gen[k]['steps']} ({gen[k]['guidance']:g})" for k in names) + " |",
                  "| seconds per image (CPU) | " + " | ".join(f"{gen[k]['seconds_per_image']:.4f}" for k in names) + " |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
