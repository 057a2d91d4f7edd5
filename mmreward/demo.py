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
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import load_reward
from .assets import missing_asset_hint, resolve_asset
from .command import run_command, with_examples
from .errors import ModelLoadError
from .files import read_jsonl, refuse_to_replace
from .images import GREEN, GREY, RED, labelled_grid
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
    p.add_argument("--overwrite", action="store_true", help="replace the demo already in --out")
    with_examples(p, "mmalign demo --out outputs/demo", 'mmalign demo --reward "hfclip:openai/clip-vit-base-patch32" --t2i ""')
    args = p.parse_args(argv)

    out = Path(args.out)
    prepare_out(out, args.overwrite)
    reward = load_reward(args.reward)
    suite = load_suite("eval")
    rng = np.random.default_rng(args.seed)
    metas = []
    for tag in CATEGORIES:
        rows = [m for m in suite if m["tag"] == tag]
        metas += [rows[i] for i in rng.choice(len(rows), size=args.per_category, replace=False)]
    items = hard_negative_items(metas, seed=args.seed, size=64)

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
            ok = rows[-1]["correct"]
            tiles.append((Image.fromarray(img), captions[0].removeprefix("a photo of "), [
                (f"reward {scores[0]:.3f}", GREY),
                ("ranked first" if ok else f"ranked below: {captions[best_neg].removeprefix('a photo of ')}",
                 GREEN if ok else RED)]))
    (out / "prompts.jsonl").write_text("".join(json.dumps({"image": r["image"], "prompt": r["prompt"]}) + "\n" for r in rows))
    summary = {"reward": args.reward, "accuracy": float(np.mean([r["correct"] for r in rows])), "rows": rows}
    (out / "scores.json").write_text(json.dumps(summary, indent=2))
    labelled_grid(tiles, cols=2 * args.per_category, legend=(
        f"ShapesWorld renders with their prompt. reward: {args.reward} of the image and its prompt. "
        "Green 'ranked first': the true prompt scores above every hard negative (the same prompt with a colour, "
        "shape, count or relation swapped); red: the hard negative that scored higher.")).save(out / "grid.png")

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


RUN_FILES = ("scores.json", "grid.png", "samples.json", "samples.png")


def prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` holding a demo unless ``overwrite``, which deletes that demo's files first."""
    import shutil

    held = [f for f in (*RUN_FILES, "prompts.jsonl") if (out / f).exists()]
    if not refuse_to_replace(out, held, "a demo", overwrite):
        return
    if (out / "prompts.jsonl").is_file():
        for row in read_jsonl(out / "prompts.jsonl"):
            if isinstance(row.get("image"), str):
                (out / row["image"]).unlink(missing_ok=True)
    for f in (*RUN_FILES, "prompts.jsonl"):
        (out / f).unlink(missing_ok=True)
    shutil.rmtree(out / "samples", ignore_errors=True)


def sample_and_score(reward, model: str, metas: list[dict], seeds: int, out: Path) -> dict:
    """Part 2: one-step samples of ``model`` for ``metas``, scored by ``reward`` and by the evaluator."""
    from diffusers import DiffusionPipeline

    from .images import to_tensor as image_to_tensor
    from .shapes.evaluator import evaluate_image
    from .shapes.generate import sample_pipeline

    folder = resolve_asset(model)
    if not os.path.isdir(folder):
        raise ModelLoadError(f"--t2i: text-to-image pipeline folder not found: {model}{missing_asset_hint(model)} "
                             "(pass --t2i '' to skip part 2)")
    pipe = DiffusionPipeline.from_pretrained(folder)
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
            ok = verdict["correct"]
            tiles.append((im, prompts[i].removeprefix("a photo of "), [
                (f"reward {r:.3f}", GREY),
                ("evaluator: correct" if ok else f"evaluator: wrong ({verdict['reason']})", GREEN if ok else RED)]))
    (out / "samples" / "prompts.jsonl").write_text(
        "".join(json.dumps({"image": r["image"].removeprefix("samples/"), "prompt": r["prompt"]}) + "\n" for r in rows))
    ok = [r["reward"] for r in rows if r["correct"]]
    bad = [r["reward"] for r in rows if not r["correct"]]
    result = {"model": model, "steps": 1, "accuracy": float(np.mean([r["correct"] for r in rows])),
              "mean_reward_correct": float(np.mean(ok)) if ok else None,
              "mean_reward_wrong": float(np.mean(bad)) if bad else None, "rows": rows}
    (out / "samples.json").write_text(json.dumps(result, indent=2))
    labelled_grid(tiles, cols=2 * seeds, legend=(
        f"One-step samples of {model}, {seeds} seeds per prompt. reward: the reward of the sample and its prompt. "
        "evaluator: the ShapesWorld evaluator's verdict read from the pixels (green correct, red wrong, with the "
        "reason).")).save(out / "samples.png")
    print(f"\none-step samples of {model}: {result['accuracy']:.0%} of {len(rows)} correct by the evaluator; "
          f"mean reward {_fmt(result['mean_reward_correct'])} (correct) vs {_fmt(result['mean_reward_wrong'])} (wrong)")
    print(f"wrote {out}/samples.json, {out}/samples.png and {len(rows)} samples in {out}/samples/")
    return result


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    sys.exit(run_command(main))
