"""Build the ShapesWorld evaluator audit set: generated images of held-out evaluation-suite prompts from
every image source the suite's figures rest on, chosen by a seeded random draw (never hand-picked).

    python benchmarks/evaluator_audit_set.py build --d3po-lora outputs/audit_d3po/lora   # images + items.jsonl
    python benchmarks/evaluator_audit_set.py sheets --out outputs/audit_sheets          # contact sheets to label
    python benchmarks/evaluator_audit_set.py build --d3po-lora L --per-category 10 --seed 2028 --split test2
                                                  # a further, untouched round appended to the set

Sources (``--per-category`` rows of each of the six categories per source, 20 by default, so 600 images):

* ``one_step``: ``assets/shapesworld-t2i``, 1 step; ``four_step``: the same model, 4 LCM steps;
* ``teacher``: ``assets/shapesworld-t2i-teacher``, DDIM-20, guidance 3;
* ``reno``: one-step images after ReNO (50 iterations on the shipped CLIP, the benchmark's settings);
* ``d3po``: the teacher with D3PO LoRA adapters, sampled by the training sampler (DDIM-10, eta 1, CFG 3).

Each source draws its own rows (with replacement across sources) and a random seed per image. Every
image gets a split, ``dev`` or ``test``, stratified by source and category, fixed here before any
label is read; ``--split NAME`` instead gives every image of a new round that split (ids continue after
the existing items, which are kept). Writes ``benchmarks/audit/images/NNNN.png`` (64x64, as generated) and
``benchmarks/audit/items.jsonl`` (``id, file, prompt, tag, meta, source, seed, split``); ``sheets`` writes
what the labellers see (prompt and image at 4x, nothing else).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from mmreward.shapes import load_suite
from mmreward.shapes.prompts import CATEGORIES

sys.path.insert(0, str(Path(__file__).parent))
from evaluator_audit import read_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AUDIT = Path(__file__).parent / "audit"
SOURCES = ("one_step", "four_step", "teacher", "reno", "d3po")


def draw_rows(per_category: int, seed: int) -> list[dict]:
    """``[{source, meta, seed}]``: per source and category, ``per_category`` distinct suite rows and a seed each."""
    suite = load_suite("eval")
    rng = np.random.default_rng(seed)
    out = []
    for source in SOURCES:
        for tag in CATEGORIES:
            rows = [m for m in suite if m["tag"] == tag]
            for k in rng.choice(len(rows), size=per_category, replace=False):
                out.append({"source": source, "meta": rows[int(k)], "seed": int(rng.integers(0, 2**31 - 1))})
    return out


def split_of(items: list[dict], seed: int) -> list[str]:
    """Half ``dev``, half ``test`` within every (source, category) cell, by a seeded permutation."""
    rng = np.random.default_rng(seed + 1)
    split = [""] * len(items)
    for source in SOURCES:
        for tag in CATEGORIES:
            idx = [i for i, it in enumerate(items) if it["source"] == source and it["meta"]["tag"] == tag]
            for j, i in enumerate(rng.permutation(idx)):
                split[int(i)] = "dev" if j < len(idx) // 2 else "test"
    return split


@torch.no_grad()
def pipeline_images(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float) -> list[np.ndarray]:
    pipe.set_progress_bar_config(disable=True)
    out = []
    for k in range(0, len(prompts), 40):
        gens = [torch.Generator().manual_seed(s) for s in seeds[k : k + 40]]
        res = pipe(prompts[k : k + 40], num_inference_steps=steps, guidance_scale=guidance, generator=gens)
        out += [np.asarray(im) for im in res.images]
    return out


def reno_images(model: str, reward_spec: str, prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
    from diffusers import DiffusionPipeline

    from diffusion_align.inputs import noise_for_seeds
    from diffusion_align.reno import RenoConfig, make_generator, reno
    from mmreward import load_reward
    from mmreward.images import to_uint8

    gen = make_generator(DiffusionPipeline.from_pretrained(model))
    reward = load_reward(reward_spec)
    cfg = RenoConfig(iters=50, lr=5.0, reg_weight=0.01, grad_clip=0.1)
    out = []
    for k in range(0, len(prompts), 16):
        p, s = prompts[k : k + 16], seeds[k : k + 16]
        res = reno(gen, reward, p, noise_for_seeds(gen.latent_shape(len(p)), s, "cpu"), cfg, progress=False)
        out += list(to_uint8(res.best))
        print(f"reno {k + len(p)}/{len(prompts)}", flush=True)
    return out


def d3po_images(lora: str, prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
    from d3po_shapes import sample_suite, with_lora

    from diffusion_align.config import DiffusionRLConfig
    from mmreward.images import to_uint8

    cfg = DiffusionRLConfig.from_cli(str(ROOT / "configs/d3po_shapes.yaml"), [])
    pipe = with_lora(cfg, Path(lora))
    return list(to_uint8(sample_suite(pipe, cfg, prompts, seeds)))


def build(args) -> None:
    from diffusers import DiffusionPipeline

    items_path = AUDIT / "items.jsonl"
    existing = read_jsonl(items_path) if items_path.is_file() else []
    if existing and not args.split:
        raise SystemExit(f"{items_path} already holds {len(existing)} items; add a further round with --split NAME")
    if args.split and any(it["split"] == args.split for it in existing):
        raise SystemExit(f"{items_path}: split {args.split!r} already exists; pick a new name")
    rows = draw_rows(args.per_category, args.seed)
    splits = [args.split] * len(rows) if args.split else split_of(rows, args.seed)
    images: list[np.ndarray | None] = [None] * len(rows)
    for source in SOURCES:
        idx = [i for i, r in enumerate(rows) if r["source"] == source]
        prompts, seeds = [rows[i]["meta"]["prompt"] for i in idx], [rows[i]["seed"] for i in idx]
        if source in ("one_step", "four_step"):
            pipe = DiffusionPipeline.from_pretrained(args.t2i)
            ims = pipeline_images(pipe, prompts, seeds, 1 if source == "one_step" else 4, 0.0)
        elif source == "teacher":
            ims = pipeline_images(DiffusionPipeline.from_pretrained(args.teacher), prompts, seeds, 20, 3.0)
        elif source == "reno":
            ims = reno_images(args.t2i, args.reward, prompts, seeds)
        else:
            ims = d3po_images(args.d3po_lora, prompts, seeds)
        for i, im in zip(idx, ims):
            images[i] = im
        print(f"{source}: {len(ims)} images", flush=True)
    # ids in a seeded shuffled order, so neighbouring ids (and sheets) mix sources and categories
    order = np.random.default_rng(args.seed + 2).permutation(len(rows))
    (AUDIT / "images").mkdir(parents=True, exist_ok=True)
    first = max((it["id"] for it in existing), default=-1) + 1
    items = []
    for new_id, i in enumerate(order, start=first):
        r, file = rows[int(i)], f"images/{new_id:04d}.png"
        Image.fromarray(images[int(i)]).save(AUDIT / file)
        items.append({"id": new_id, "file": file, "prompt": r["meta"]["prompt"], "tag": r["meta"]["tag"],
                      "meta": r["meta"], "source": r["source"], "seed": r["seed"], "split": splits[int(i)]})
    with open(items_path, "a") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")
    print(f"wrote {len(items)} items (ids {first}-{first + len(items) - 1}) to {AUDIT}")


def sheets(args) -> None:
    """Contact sheets (``sheet_NNN.png``, 8 images at ``--scale``x with id and prompt), one 8x zoom per image
    (``zoom/NNNN.png``) and ``to_label.jsonl`` (id, prompt): the only files a labeller gets. ``--split``
    keeps one split's items (e.g. a new round)."""
    items = [it for it in read_jsonl(AUDIT / "items.jsonl") if not args.split or it["split"] == args.split]
    out = Path(args.out)
    (out / "zoom").mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default(size=15)
    side, head, cols = 64 * args.scale, 44, 4
    with open(out / "to_label.jsonl", "w") as f:
        for it in items:
            f.write(json.dumps({"id": it["id"], "prompt": it["prompt"]}) + "\n")
    for it in items:
        im = Image.open(AUDIT / it["file"]).convert("RGB")
        im.resize((512, 512), Image.NEAREST).save(out / "zoom" / f"{it['id']:04d}.png")
    for s in range(0, len(items), 8):
        chunk = items[s : s + 8]
        sheet = Image.new("RGB", (cols * (side + 8), 2 * (side + head + 8)), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for j, it in enumerate(chunk):
            x, y = (j % cols) * (side + 8), (j // cols) * (side + head + 8)
            draw.text((x + 2, y + 2), f"#{it['id']:04d}", fill=(0, 0, 0), font=font)
            draw.text((x + 2, y + 22), it["prompt"].removeprefix("a photo of "), fill=(0, 0, 0), font=font)
            im = Image.open(AUDIT / it["file"]).convert("RGB").resize((side, side), Image.NEAREST)
            sheet.paste(im, (x, y + head))
        sheet.save(out / f"sheet_{s // 8:03d}.png")
    reference_sheet(font).save(out / "reference.png")
    print(f"wrote {(len(items) + 7) // 8} sheets to {out}")


def reference_sheet(font) -> Image.Image:
    """Every shape in every colour as the world renders them (64 px, shown at 2x): the vocabulary."""
    from mmreward.shapes.world import COLORS, SHAPES, Obj, Scene, render

    cell = 128
    sheet = Image.new("RGB", (90 + cell * len(COLORS), 24 + cell * len(SHAPES)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, color in enumerate(COLORS):
        draw.text((90 + j * cell + 4, 4), color, fill=(0, 0, 0), font=font)
    for i, shape in enumerate(SHAPES):
        draw.text((4, 24 + i * cell + 56), shape, fill=(0, 0, 0), font=font)
        for j, color in enumerate(COLORS):
            im = Image.fromarray(render(Scene([Obj(shape, color, 0.5, 0.5, 0.5)]))).resize((cell, cell), Image.NEAREST)
            sheet.paste(im, (90 + j * cell, 24 + i * cell))
    return sheet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--per-category", type=int, default=20)
    b.add_argument("--seed", type=int, default=2026)
    b.add_argument("--t2i", default=str(ROOT / "assets/shapesworld-t2i"))
    b.add_argument("--teacher", default=str(ROOT / "assets/shapesworld-t2i-teacher"))
    b.add_argument("--reward", default=f"clip:{ROOT / 'assets/shapesworld-clip'}")
    b.add_argument("--d3po-lora", required=True, help="LoRA folder of a D3PO run (its checkpoint/ or lora/)")
    b.add_argument("--split", default=None, help="a further round: every new image gets this split (appended)")
    s = sub.add_parser("sheets")
    s.add_argument("--split", default=None, help="only the items of this split")
    s.add_argument("--out", default="outputs/audit_sheets")
    s.add_argument("--scale", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(2)
    build(args) if args.cmd == "build" else sheets(args)


if __name__ == "__main__":
    main()
