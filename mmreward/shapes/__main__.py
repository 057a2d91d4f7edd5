"""ShapesWorld command line.

    python -m mmreward.shapes evaluate --images DIR --out results.json
    python -m mmreward.shapes render --prompts eval --out DIR [--seeds 4]
    python -m mmreward.shapes generate --model PATH --prompts eval --out DIR [--seeds 4] [--steps 1]

``generate`` samples a diffusers pipeline (hub id or folder) for every prompt and seed; ``evaluate`` reads ``DIR/prompts.jsonl`` (``{"image": "a.png", "prompt": "..."}`` per line) and writes
``{"overall": x, "per_category": {...}, "per_image": [...]}``. ``render`` writes ground-truth
renders of a prompt suite in the same layout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..assets import missing_asset_hint, resolve_asset
from ..command import run_command, with_examples
from ..errors import InputFileError, ModelLoadError
from ..files import numbered_jsonl, refuse_to_replace
from ..images import open_image


def cmd_evaluate(args) -> dict:
    from .evaluator import evaluate_image, summarize
    from .prompts import parse_prompt

    root = Path(args.images)
    index = root / "prompts.jsonl"
    if not index.is_file():
        raise InputFileError(f"no prompts.jsonl in {root} (expected lines like "
                             '{"image": "a.png", "prompt": "a photo of a red circle"})')
    rows = numbered_jsonl(index, "image index", keys=("image", "prompt"))[: args.limit]
    per_image = []
    for n, row in tqdm(rows, desc="evaluate", disable=args.quiet):
        path = root / row["image"]
        try:
            meta = parse_prompt(row["prompt"])
        except ValueError as e:
            raise InputFileError(f"{index}, line {n}: {e}; `mmalign shapes evaluate` scores ShapesWorld prompts only "
                                 "(docs/shapesworld.md lists the grammar)") from e
        if not path.is_file():
            raise InputFileError(f"{index}, line {n}: image not found: {path}")
        result = evaluate_image(open_image(path), meta)
        per_image.append({"image": row["image"], **result})
    summary = summarize(per_image)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("overall", "per_category", "n")}, indent=2))
    return summary


def check_out_folder(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that already holds images (a ``prompts.jsonl``) unless ``--overwrite``, which removes
    the images that index lists."""
    index = out / "prompts.jsonl"
    if not refuse_to_replace(out, ["prompts.jsonl"] if index.is_file() else [], "images", overwrite):
        return
    for row in numbered_jsonl(index):
        if isinstance(row[1].get("image"), str):
            (out / row[1]["image"]).unlink(missing_ok=True)
    index.unlink()


def cmd_render(args) -> None:
    from .prompts import sample_scene
    from .suites import load_suite
    from .world import render

    metas = load_suite(args.prompts)[: args.limit]
    out = Path(args.out)
    check_out_folder(out, args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    lines = []
    for i, meta in enumerate(tqdm(metas, desc="render", disable=args.quiet)):
        for s in range(args.seeds):
            name = f"{i:05d}_{s}.png"
            Image.fromarray(render(sample_scene(meta, rng), args.size)).save(out / name)
            lines.append(json.dumps({"image": name, "prompt": meta["prompt"]}))
    (out / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} images to {out}")


def cmd_generate(args) -> None:
    from diffusers import DiffusionPipeline

    from .generate import sample_pipeline
    from .suites import load_suite

    metas = load_suite(args.prompts)[: args.limit]
    if not metas:
        raise InputFileError(f"--prompts {args.prompts}: no prompts")
    out = Path(args.out)
    check_out_folder(out, args.overwrite)
    model = resolve_asset(args.model)
    try:
        pipe = DiffusionPipeline.from_pretrained(model).to(args.device)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"--model: could not load a diffusers pipeline from {args.model!r}"
                             f"{missing_asset_hint(args.model)}: {str(e)[:300]}") from e
    out.mkdir(parents=True, exist_ok=True)
    prompts = [m["prompt"] for m in metas]
    lines = []
    for i, s, im in sample_pipeline(pipe, prompts, args.seeds, args.steps, args.guidance, args.batch, args.seed,
                                    progress=not args.quiet):
        name = f"{i:05d}_{s}.png"
        im.save(out / name)
        lines.append(json.dumps({"image": name, "prompt": prompts[i]}))
    (out / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} images to {out}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("evaluate", help="score images against their prompts")
    e.add_argument("--images", required=True, help="folder with images and prompts.jsonl")
    e.add_argument("--out", required=True, help="results JSON")
    e.add_argument("--limit", type=int, default=None, help="only the first N images")
    e.add_argument("--quiet", action="store_true")
    r = sub.add_parser("render", help="ground-truth renders of a prompt suite")
    r.add_argument("--prompts", default="eval", help="'eval', 'train' or a JSONL file")
    r.add_argument("--out", required=True)
    r.add_argument("--seeds", type=int, default=1)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--size", type=int, default=64)
    r.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    r.add_argument("--overwrite", action="store_true", help="replace the images already in --out")
    r.add_argument("--quiet", action="store_true")
    g = sub.add_parser("generate", help="sample a text-to-image pipeline for a prompt suite")
    g.add_argument("--model", default="assets/shapesworld-t2i", help="diffusers pipeline folder or hub id")
    g.add_argument("--prompts", default="eval", help="'eval', 'train' or a JSONL file")
    g.add_argument("--out", required=True)
    g.add_argument("--seeds", type=int, default=4, help="images per prompt (seeds seed..seed+n-1)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", type=int, default=1, help="sampling steps (1 = one-step)")
    g.add_argument("--guidance", type=float, default=0.0)
    g.add_argument("--batch", type=int, default=32)
    g.add_argument("--device", default="cpu")
    g.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    g.add_argument("--overwrite", action="store_true", help="replace the images already in --out")
    g.add_argument("--quiet", action="store_true")
    with_examples(e, "mmalign shapes evaluate --images out/reno --out out/reno/eval.json")
    with_examples(r, "mmalign shapes render --prompts eval --out out/renders")
    with_examples(g, "mmalign shapes generate --model assets/shapesworld-t2i --prompts eval --out out/samples")
    args = p.parse_args(argv)
    {"evaluate": cmd_evaluate, "render": cmd_render, "generate": cmd_generate}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(run_command(main))
