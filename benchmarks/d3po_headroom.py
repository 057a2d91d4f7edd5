"""How much a policy-improvement method could gain on ShapesWorld: the base model's best-of-N.

    python benchmarks/d3po_headroom.py [--n 8]

Draws ``n`` samples per prompt of the held-out evaluation suite (432 prompts) from the embedded model with
the training sampler of ``configs/d3po_shapes.yaml`` (DDIM, eta 1, its steps and guidance) and scores them
with the exact evaluator. Per category: the expected single-sample score (what the D3PO benchmark measures
with one seed), best-of-k for k = 1, 2, 4, ..., n (a prompt counts when any of its first k samples is
correct: the ceiling of a method that only re-weights what the model already draws), and the share of
prompts with no correct sample among the ``n``. Writes ``benchmarks/results/d3po_headroom.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
from d3po_shapes import RESULTS, ROOT, sample_suite, with_lora  # noqa: E402

from diffusion_align.config import SAMPLER_KEYS, DiffusionRLConfig  # noqa: E402
from mmreward.images import to_uint8  # noqa: E402
from mmreward.shapes import load_suite  # noqa: E402
from mmreward.shapes.evaluator import suite_scores  # noqa: E402
from mmreward.shapes.prompts import CATEGORIES  # noqa: E402


def best_of(correct: np.ndarray, k: int) -> float:
    """Share of rows ``correct [rows, n]`` with a correct sample among their first ``k``."""
    return float(correct[:, :k].any(1).mean())


def headroom(correct: np.ndarray, tags: list[str]) -> dict:
    """Per category and overall (the mean of the categories, as the evaluator's overall): the expected
    single-sample score, best-of-k for k = 1, 2, 4, ... n, and the share of rows never correct."""
    n = correct.shape[1]
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n]
    tags_arr = np.array(tags)
    per = {}
    for tag in CATEGORIES:
        c = correct[tags_arr == tag]
        per[tag] = {"mean": float(c.mean()), "best_of": {str(k): best_of(c, k) for k in ks},
                    "never_correct": float((~c.any(1)).mean())}
    overall = {"mean": float(np.mean([v["mean"] for v in per.values()])),
               "best_of": {str(k): float(np.mean([v["best_of"][str(k)] for v in per.values()])) for k in ks},
               "never_correct": float(np.mean([v["never_correct"] for v in per.values()]))}
    return {"per_category": per, "overall": overall}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.n < 1:
        raise SystemExit(f"--n must be >= 1, got {args.n}")
    torch.set_num_threads(args.threads)
    cfg = DiffusionRLConfig.from_yaml(ROOT / "configs" / "d3po_shapes.yaml")
    suite = load_suite("eval")
    pipe = with_lora(cfg, None)
    t0 = time.time()
    correct = np.zeros((len(suite), args.n), dtype=bool)
    for k in tqdm(range(args.n), desc="best-of-n samples"):
        seeds = [50_000 + k * len(suite) + i for i in range(len(suite))]  # new seeds, none shared with the eval's
        images = sample_suite(pipe, cfg, [m["prompt"] for m in suite], seeds)
        correct[:, k] = suite_scores(to_uint8(images), suite)["correct"]
    res = headroom(correct, [m["tag"] for m in suite])
    res.update({"n": args.n, "prompts": len(suite), "seconds": time.time() - t0,
                "sampler": {k: getattr(cfg, k) for k in SAMPLER_KEYS}})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "d3po_headroom.json").write_text(json.dumps(res, indent=2))
    write_markdown(res)
    return res


def write_markdown(res: dict) -> None:
    ks = list(res["overall"]["best_of"])
    rows = {**res["per_category"], "**overall**": res["overall"]}
    lines = ["# Best-of-N headroom of the embedded ShapesWorld model", "",
             f"Held-out evaluation suite ({res['prompts']} prompts), {res['n']} samples per prompt with D3PO's sampler; "
             "the exact evaluator. `benchmarks/d3po_headroom.py`.", "",
             "| category | single sample | " + " | ".join(f"best of {k}" for k in ks) + " | never correct |",
             "|---|---|" + "---|" * len(ks) + "---|"]
    for tag, v in rows.items():
        lines.append(f"| {tag} | {v['mean']:.3f} | " + " | ".join(f"{v['best_of'][k]:.3f}" for k in ks)
                     + f" | {v['never_correct']:.3f} |")
    (RESULTS / "d3po_headroom.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
