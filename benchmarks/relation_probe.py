"""Do the suite's rewards read relations? On exact ShapesWorld renders of the evaluation suite's position
rows, how often each reward scores a scene showing the prompt's relation above one showing the inverse
relation (the same two objects, left <-> right or above <-> below), for held-out and trained relations.

    python benchmarks/relation_probe.py [--rewards clip:assets/shapesworld-clip head:outputs/reward_head/model]

A reward that reads the relation scores the true scene higher (1.0); one that reads only the objects
scores both alike (0.5); one that mistakes an unseen caption for the trained caption with the same words
("a circle above a triangle" for "a triangle above a circle") prefers the inverse scene (below 0.5).
Writes ``benchmarks/results/relation_probe.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from mmreward import load_reward
from mmreward.shapes import load_suite
from mmreward.shapes.data import to_tensor
from mmreward.shapes.prompts import counterfactual, sample_scene
from mmreward.shapes.world import render

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def scenes(rows: list[dict], per_row: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Renders ``[N,3,64,64]`` in [0,1] of scenes true for each row and of scenes with the inverse relation."""
    rng = np.random.default_rng(seed)
    true, inverse, prompts = [], [], []
    for m in rows:
        cf = counterfactual(m)
        for _ in range(per_row):
            true.append(render(sample_scene(m, rng)))
            inverse.append(render(sample_scene(cf, rng)))
            prompts.append(m["prompt"])
    return to_tensor(np.stack(true)), to_tensor(np.stack(inverse)), prompts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rewards", nargs="+", default=[f"clip:{ROOT / 'assets/shapesworld-clip'}"])
    p.add_argument("--per-row", type=int, default=4, help="scene pairs per suite row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "relation_probe.json"))
    args = p.parse_args()
    torch.set_num_threads(2)
    rows = [m for m in load_suite("eval") if m["tag"] == "position"]
    groups = {"held-out relations": [m for m in rows if m.get("held_out")],
              "trained relations": [m for m in rows if not m.get("held_out")]}
    result = {"per_row": args.per_row, "rows": {k: len(v) for k, v in groups.items()}, "rewards": {}}
    for spec in args.rewards:
        reward = load_reward(spec)
        result["rewards"][spec] = {}
        for name, sel in groups.items():
            true, inverse, prompts = scenes(sel, args.per_row, args.seed)
            with torch.no_grad():
                a, b = reward(true, prompts), reward(inverse, prompts)
            result["rewards"][spec][name] = {"true_over_inverse": float((a > b).float().mean() + 0.5 * (a == b).float().mean()),
                                             "pairs": len(prompts), "mean_margin": float((a - b).mean())}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    names = list(groups)
    lines = ["## Do the rewards read relations?", "",
             f"Exact renders of the evaluation suite's position rows, {args.per_row} scene pairs per row: the share of "
             "pairs in which the reward scores the scene with the prompt's relation above the scene with the inverse "
             "relation (1.0 reads relations, 0.5 ignores them, below 0.5 reads them backwards).", "",
             "| reward | " + " | ".join(f"{n} ({result['rows'][n]} rows)" for n in names) + " |", "|---|" + "---|" * len(names)]
    for spec, r in result["rewards"].items():
        lines.append(f"| `{spec.replace(str(ROOT) + '/', '')}` | "
                     + " | ".join(f"{r[n]['true_over_inverse']:.3f}" for n in names) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
