"""Demo of the reward core on the embedded defaults.

1. Score ShapesWorld scenes against their prompt and its hard negatives (colour, shape, count or
   relation swapped) with a reward spec: ``scores.json``, ``grid.png``, the images and ``prompts.jsonl``.
2. Sample the embedded one-step text-to-image model for the same prompts and score each sample with
   the reward and with the exact evaluator: ``samples/`` (images + ``prompts.jsonl``),
   ``samples.json``, ``samples.png``.

    python -m mmreward.demo --out outputs/demo [--reward clip:assets/shapesworld-clip] [--t2i assets/shapesworld-t2i]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import load_reward
from .images import image_grid
from .shapes.clip_eval import hard_negative_items
from .shapes.data import to_tensor
from .shapes.prompts import CATEGORIES
from .shapes.suites import load_suite

DEFAULT_REWARD = "clip:assets/shapesworld-clip"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reward", default=DEFAULT_REWARD, help="reward spec string (see mmreward.factory)")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--per-category", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--t2i", default="assets/shapesworld-t2i", help="text-to-image pipeline folder ('' to skip part 2)")
    p.add_argument("--seeds", type=int, default=2, help="samples per prompt in part 2")
    args = p.parse_args(argv)

    if args.reward == DEFAULT_REWARD and not os.path.isdir("assets/shapesworld-clip"):
        raise SystemExit(
            "embedded ShapesWorld-CLIP not found at assets/shapesworld-clip (run from the repository root, "
            "or regenerate it with `python -m mmreward.shapes.train_clip`)"
        )
    reward = load_reward(args.reward)
    suite = load_suite("eval")
    rng = np.random.default_rng(args.seed)
    metas = []
    for tag in CATEGORIES:
        rows = [m for m in suite if m["tag"] == tag]
        metas += [rows[i] for i in rng.choice(len(rows), size=args.per_category, replace=False)]
    items = hard_negative_items(metas, seed=args.seed, size=64)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, tiles = [], []
    with torch.no_grad():
        for k, (img, meta, captions) in enumerate(items):
            x = to_tensor(img[None])
            scores = reward(x.expand(len(captions), -1, -1, -1), captions).tolist()
            best_neg = int(np.argmax(scores[1:])) + 1
            rows.append({
                "image": f"{k:03d}.png", "tag": meta["tag"], "prompt": captions[0], "reward": scores[0],
                "hardest_negative": captions[best_neg], "negative_reward": scores[best_neg],
                "correct": scores[0] > max(scores[1:]),
            })
            Image.fromarray(img).save(out / rows[-1]["image"])
            tiles.append(_tile(img, captions[0], scores[0], rows[-1]["correct"]))
    (out / "prompts.jsonl").write_text("".join(json.dumps({"image": r["image"], "prompt": r["prompt"]}) + "\n" for r in rows))
    summary = {"reward": args.reward, "accuracy": float(np.mean([r["correct"] for r in rows])), "rows": rows}
    (out / "scores.json").write_text(json.dumps(summary, indent=2))
    image_grid(tiles, cols=2 * args.per_category).save(out / "grid.png")

    print(f"reward: {args.reward}\n")
    print(f"{'category':<14} {'prompt':<52} {'reward':>7}  {'hardest negative':<52} {'reward':>7}  ok")
    for r in rows:
        print(f"{r['tag']:<14} {r['prompt']:<52} {r['reward']:7.3f}  {r['hardest_negative']:<52} "
              f"{r['negative_reward']:7.3f}  {'yes' if r['correct'] else 'NO'}")
    print(f"\ntrue prompt ranked above all hard negatives: {summary['accuracy']:.0%} of {len(rows)} images")
    print(f"wrote {out}/scores.json, {out}/grid.png and {len(rows)} images with prompts.jsonl")
    if args.t2i:
        summary["samples"] = sample_and_score(reward, args.t2i, metas, args.seeds, out)
    return summary


def sample_and_score(reward, model: str, metas: list[dict], seeds: int, out: Path) -> dict:
    """Part 2: one-step samples of ``model`` for ``metas``, scored by ``reward`` and by the evaluator."""
    from diffusers import DiffusionPipeline

    from .images import to_tensor as image_to_tensor
    from .shapes.evaluator import evaluate_image
    from .shapes.generate import sample_pipeline

    if not os.path.isdir(model):
        raise SystemExit(f"text-to-image pipeline not found at {model} (regenerate it with "
                         "`python -m diffusion_align.embedded.train_shapes_t2i`, or pass --t2i '' to skip)")
    pipe = DiffusionPipeline.from_pretrained(model)
    (out / "samples").mkdir(exist_ok=True)
    rows, tiles = [], []
    prompts = [m["prompt"] for m in metas]
    with torch.no_grad():
        for i, s, im in sample_pipeline(pipe, prompts, seeds=seeds, steps=1, progress=False):
            r = float(reward(image_to_tensor(im)[None], prompts[i]))
            verdict = evaluate_image(im, metas[i])
            rows.append({"image": f"samples/{i:03d}_{s}.png", "tag": metas[i]["tag"], "prompt": prompts[i],
                         "reward": r, "correct": verdict["correct"], "reason": verdict["reason"]})
            im.save(out / rows[-1]["image"])
            tiles.append(_tile(np.asarray(im), prompts[i], r, verdict["correct"]))
    (out / "samples" / "prompts.jsonl").write_text(
        "".join(json.dumps({"image": r["image"].removeprefix("samples/"), "prompt": r["prompt"]}) + "\n" for r in rows))
    ok = [r["reward"] for r in rows if r["correct"]]
    bad = [r["reward"] for r in rows if not r["correct"]]
    result = {"model": model, "steps": 1, "accuracy": float(np.mean([r["correct"] for r in rows])),
              "mean_reward_correct": float(np.mean(ok)) if ok else None,
              "mean_reward_wrong": float(np.mean(bad)) if bad else None, "rows": rows}
    (out / "samples.json").write_text(json.dumps(result, indent=2))
    image_grid(tiles, cols=2 * seeds).save(out / "samples.png")
    print(f"\none-step samples of {model}: {result['accuracy']:.0%} of {len(rows)} correct by the evaluator; "
          f"mean reward {_fmt(result['mean_reward_correct'])} (correct) vs {_fmt(result['mean_reward_wrong'])} (wrong)")
    print(f"wrote {out}/samples.json, {out}/samples.png and {len(rows)} samples in {out}/samples/")
    return result


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _tile(img: np.ndarray, prompt: str, score: float, ok: bool, scale: int = 3) -> Image.Image:
    im = Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)
    tile = Image.new("RGB", (im.width, im.height + 34), "white")
    tile.paste(im, (0, 0))
    d = ImageDraw.Draw(tile)
    words = prompt.removeprefix("a photo of ")
    d.text((2, im.height + 2), words[:32], fill="black")
    d.text((2, im.height + 18), f"r={score:.3f} {'ok' if ok else 'WRONG'}", fill="green" if ok else "red")
    return tile


if __name__ == "__main__":
    main()
