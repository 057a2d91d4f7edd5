"""Whether a trained judge whose image-pair readout is at chance learns it from more pair items: short fine-tunes.

    python benchmarks/vlm_judge_pair_probe.py [--judge assets/shapesworld-judge] [--steps 400]

Each variant starts from the weights of ``--judge`` and fine-tunes the language model and projector (the image tower
frozen) on batches of 24 image pairs and 8 ``yes`` items, then measures the ``pairwise`` readout (P("1") >
0.5 is right) on 128 fresh hard-negative pairs (the training distribution: the other image shows a colour,
shape, count or relation swap) and on 64 easy pairs (the other image shows another prompt). Variants:

* ``shipped layout``: the judge's chat template (``<image>`` ``<image>`` then the question);
* ``labelled images``: "image 1: <image> image 2: <image>" then the question;
* ``text first``: the question, then the labelled images (each image token can attend to the prompt);
* ``easy pairs``: the shipped layout with half the pairs' negatives replaced by another prompt's image;
* ``grey negative`` (control): the negative image is flat grey, so the answer needs no prompt at all.

Writes ``benchmarks/results/vlm_judge_pair_probe.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmreward.shapes.data import to_tensor
from mmreward.shapes.prompts import CATEGORIES, sample_meta, sample_scene
from mmreward.shapes.train_clip import augment
from mmreward.shapes.world import render
from mmreward.vlm import train_judge as tj
from mmreward.vlm.judge import VLMJudge
from mmreward.vlm.templates import load_template

RESULTS = Path(__file__).parent / "results"
#: name → (chat layout, share of easy pairs, grey negative)
VARIANTS = {
    "shipped layout": ("shipped", 0.0, False),
    "labelled images": ("labelled", 0.0, False),
    "text first": ("text-first", 0.0, False),
    "easy pairs": ("shipped", 0.5, False),
    "grey negative": ("shipped", 0.0, True),
}


def chat(processor, layout: str, message: str, images: int) -> str:
    if images == 1 or layout == "shipped":
        return tj.chat_text(processor, message, images)
    if layout == "labelled":
        return f"user: image 1: <image>\nimage 2: <image>\n{message}\nassistant:"
    return f"user: {message}\nimage 1: <image>\nimage 2: <image>\nassistant:"


def pair_item(rng: np.random.Generator, easy: float, grey: bool):
    """One ``images`` training item; with probability ``easy`` the negative is a render of another prompt,
    with ``grey`` a flat grey image."""
    images, message, reply, tag = tj.make_item("images", rng)
    neg = 1 if reply == "1" else 0
    if grey or rng.random() < easy:
        images = [im.copy() for im in images]
        if grey:
            images[neg][:] = 128
        else:
            prompt = message.split('"')[1]
            while True:
                meta = sample_meta(str(rng.choice(CATEGORIES)), rng, "train")
                if meta["prompt"] != prompt:
                    break
            images[neg] = render(sample_scene(meta, rng, allow_held_out=False))
    return images, message, reply, tag


@torch.no_grad()
def pair_accuracy(model, processor, layout: str, items: list) -> dict:
    judge = VLMJudge(model, processor, load_template("pairwise"))
    per: dict[str, list[float]] = {}
    said_1 = []
    for s in range(0, len(items), 16):
        batch = items[s:s + 16]
        ims = to_tensor(np.stack([im for it in batch for im in it[0]]))
        logits = judge.next_token_logits([chat(processor, layout, m, 2) for _, m, _, _ in batch], ims)
        p1 = logits[:, judge.answer_ids].softmax(-1)[:, 0]
        said_1 += (p1 > 0.5).tolist()
        for p, it in zip(p1.tolist(), batch, strict=True):
            per.setdefault(it[3], []).append(float((p > 0.5) == (it[2] == "1")))
    return {"accuracy": round(float(np.mean([v for vs in per.values() for v in vs])), 3),
            "per_category": {c: round(float(np.mean(v)), 2) for c, v in sorted(per.items())},
            "said_1": round(float(np.mean(said_1)), 3)}


def run_variant(name: str, args, eval_hard: list, eval_easy: list) -> dict:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    layout, easy, grey = VARIANTS[name]
    torch.manual_seed(args.seed)
    model = AutoModelForImageTextToText.from_pretrained(args.judge, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(args.judge)
    grey_rng = np.random.default_rng(7)
    hard = eval_hard if not grey else [pair_item(grey_rng, 0.0, True) for _ in eval_hard]
    before = pair_accuracy(model, processor, layout, hard)["accuracy"]
    opt = torch.optim.AdamW([q for n, q in model.named_parameters() if "vision_tower" not in n], lr=args.lr,
                            weight_decay=1e-2)
    rng, g = np.random.default_rng(args.seed), torch.Generator().manual_seed(args.seed)
    curve, t0 = [], time.time()
    for i in tqdm(range(args.steps), desc=name, leave=False):
        model.train().requires_grad_(True)
        model.model.vision_tower.requires_grad_(False)
        items = [pair_item(rng, easy, grey) for _ in range(24)] + [tj.make_item("yes", rng) for _ in range(8)]
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for n_images in (1, 2):
            group = [it for it in items if len(it[0]) == n_images]
            x = augment(to_tensor(np.stack([im for it in group for im in it[0]])), g)
            images = [(a.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for a in x]
            enc = tj.encode_batch(processor, [chat(processor, layout, m, n_images) for _, m, _, _ in group],
                                  [r for _, _, r, _ in group], images)
            loss = model(**enc).loss * len(group) / len(items)
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (i + 1) % 100 == 0:
            acc = pair_accuracy(model, processor, layout, hard[:64])["accuracy"]
            curve.append({"step": i + 1, "loss": round(total, 4), "hard_pairs_64": acc})
            tqdm.write(f"{name}: step {i + 1} loss {total:.4f} hard-pair accuracy (64) {acc:.3f}")
    after = pair_accuracy(model, processor, layout, hard)
    easy_after = pair_accuracy(model, processor, layout, eval_easy)["accuracy"]
    return {"layout": layout, "easy_share": easy, "grey_negative": grey, "before": before,
            "after": after["accuracy"], "said_1_after": after["said_1"], "after_per_category": after["per_category"], "easy_pairs_after": easy_after,
            "curve": curve, "seconds": round(time.time() - t0, 1)}


def write(res: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vlm_judge_pair_probe.json").write_text(json.dumps(res, indent=2))
    cats = sorted({c for r in res["variants"].values() for c in r["after_per_category"]})
    lines = ["# Image-pair readout of the embedded judge: fine-tune probes", "",
             f"Each row fine-tunes {res['judge']} for {res['steps']} steps (lr {res['lr']}, image tower frozen; "
             "24 image pairs + 8 `yes` items a batch) and reads `pairwise` (P(\"1\") > 0.5 is right). Hard pairs: "
             f"{res['n_hard']} fresh pairs whose other image is a hard negative; easy pairs: {res['n_easy']} whose "
             "other image shows another prompt. The grey-negative control is measured on grey-negative pairs.", "",
             "| variant | hard pairs before | hard pairs after | answers \"1\" (after) | easy pairs after | " + " | ".join(cats) + " |",
             "|---|---|---|---|---|" + "---|" * len(cats)]
    for name, r in res["variants"].items():
        lines.append(f"| {name} | {r['before']:.3f} | {r['after']:.3f} | {r['said_1_after']:.2f} | {r['easy_pairs_after']:.3f} | "
                     + " | ".join(f"{r['after_per_category'].get(c, float('nan')):.2f}" for c in cats) + " |")
    lines += ["", "Hard-pair accuracy on 64 pairs every 100 steps:", ""]
    for name, r in res["variants"].items():
        lines.append(f"- {name}: " + ", ".join(f"{c['hard_pairs_64']:.2f}" for c in r["curve"]))
    (RESULTS / "vlm_judge_pair_probe.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--judge", default="assets/shapesworld-judge")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(12345)
    eval_hard = [pair_item(rng, 0.0, False) for _ in range(128)]
    eval_easy = [pair_item(rng, 1.0, False) for _ in range(64)]
    res = {"judge": args.judge, "steps": args.steps, "lr": args.lr, "n_hard": len(eval_hard), "n_easy": len(eval_easy),
           "variants": {name: run_variant(name, args, eval_hard, eval_easy) for name in args.variants}}
    write(res)
    print((RESULTS / "vlm_judge_pair_probe.md").read_text())
    return res


if __name__ == "__main__":
    main()
