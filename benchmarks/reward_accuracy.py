"""Trained reward models on ShapesWorld preferences: accuracy, ensembles, best-of-N, training throughput.

    python benchmarks/reward_accuracy.py [--train-pairs 8000] [--test-pairs 2000] [--members 5]

Data (:mod:`mmreward.shapes.preferences`): a simulated annotator prefers the image that is correct for the
prompt and, among correct images, the one with larger objects; training pairs carry 20% label noise, the
held-out test pairs are scored against their noise-free labels. Rewards compared on the same test pairs:

* zero-shot: CLIPScore of the embedded ShapesWorld CLIP (``clip:assets/shapesworld-clip``);
* a trained head (``configs/reward_head_shapes.yaml``: the ImageReward/LAION MLP on the frozen CLIP), one
  per seed for the ensemble;
* the CLIP fine-tuned on the pairs (``configs/reward_clip_shapes.yaml``, PickScore-style);
* the ensemble of heads: mean, WCO (min) and UWO (mean − λ·var, λ = 0.5) (Coste et al., 2024).

Best-of-N (the overoptimisation setting of Coste et al.): for held-out prompts, pools of candidates (correct
or hard-negative scenes at random sizes); each reward picks its best of the first N; reported is the mean
true utility of the picks, against N. Throughput: training pairs per second against the same reward's
forward-only rate (pairs scored per second from images) measured in the same run.
Writes ``benchmarks/results/reward_accuracy.{json,md}`` and ``reward_accuracy_best_of_n.png``.
Training runs checkpoint and resume (rerun the command).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from charts import line_chart  # noqa: E402  (benchmarks/charts.py)
from tqdm import tqdm

from mmreward import load_reward
from mmreward.bench import evaluate, load_benchmark, score_candidates
from mmreward.preference import read_preferences
from mmreward.shapes.preferences import KINDS, SCALE_RANGE, faithful, generate, utility
from mmreward.shapes.prompts import CATEGORIES, hard_negatives, sample_meta, sample_scene
from mmreward.shapes.world import render
from mmreward.train_reward import RewardTrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
ZERO_SHOT = "clip:assets/shapesworld-clip"


def dataset(work: Path, name: str, pairs: int, noise: float, seed: int) -> Path:
    path = work / name / "preferences.jsonl"
    if not path.is_file() or len(path.read_text().splitlines()) != pairs:
        generate(work / name, pairs, noise, seed)
    return path


def train_run(config: str, work: Path, name: str, **overrides) -> tuple[str, dict]:
    """Train (or resume, or reuse) a reward from a config; returns ``(model folder, train result)``."""
    cfg = RewardTrainConfig.from_yaml(ROOT / "configs" / config)
    cfg = RewardTrainConfig.from_dict({**vars(cfg), "output_dir": str(work / name), **overrides})
    out = Path(cfg.output_dir)
    if (out / "result.json").is_file():
        return str(out / "model"), json.loads((out / "result.json").read_text())
    res = train(cfg, resume=(out / "checkpoint" / "state.safetensors").is_file())
    if "model" not in res:
        raise SystemExit(f"{name}: training stopped ({res['stopped_by']}); rerun to resume")
    (out / "result.json").write_text(json.dumps(res))
    return res["model"], res


def accuracy(reward, items) -> dict:
    res = evaluate(items, score_candidates(reward, items, progress=False))
    return {"accuracy": res["accuracy"], **{k: v["accuracy"] for k, v in res["per_category"].items()},
            "ece": res["calibration"]["ece"], "pairs": res["pairs"]}


def forward_rate(reward, items, n: int = 256) -> float:
    """Pairs per second scored from image files (both images through the reward), batch 64."""
    sub = items[:n]
    t0 = time.time()
    score_candidates(reward, sub, batch=64, progress=False)
    return len(sub) / (time.time() - t0)


def candidate_pools(prompts: int, per: int, seed: int) -> list[tuple[str, list, list[float]]]:
    """``(prompt, images [per] uint8, true utilities [per])``: correct or hard-negative scenes, random sizes."""
    rng = np.random.default_rng(seed)
    pools = []
    for i in range(prompts):
        meta = sample_meta(CATEGORIES[i % len(CATEGORIES)], rng)
        negs = hard_negatives(meta, rng)
        ims, util = [], []
        while len(ims) < per:
            m = meta if rng.random() < 0.5 else negs[int(rng.integers(len(negs)))]
            scene = sample_scene(m, rng, size_scale=float(rng.uniform(*SCALE_RANGE)))
            if m is not meta and faithful(meta, scene):
                continue
            ims.append(render(scene))
            util.append(utility(meta, scene))
        pools.append((meta["prompt"], ims, util))
    return pools


def best_of_n(scores: np.ndarray, util: np.ndarray, ns: list[int]) -> dict[str, float]:
    """Mean true utility of each prompt's top-scored candidate among its first N (``scores``, ``util``: ``[P, M]``)."""
    return {str(n): float(util[np.arange(len(util)), scores[:, :n].argmax(1)].mean()) for n in ns}


def pool_scores(reward, pools, batch: int = 256) -> np.ndarray:
    out = []
    for prompt, ims, _ in pools:
        x = torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).float() / 255
        out.append(torch.cat([reward(x[i : i + batch], prompt) for i in range(0, len(x), batch)]).numpy())
    return np.stack(out)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-pairs", type=int, default=8000)
    p.add_argument("--test-pairs", type=int, default=2000)
    p.add_argument("--members", type=int, default=5, help="heads in the ensemble (seeds 0..members-1)")
    p.add_argument("--pool-prompts", type=int, default=240)
    p.add_argument("--pool-size", type=int, default=64)
    p.add_argument("--work", default="outputs/bench_reward")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    train_path = dataset(work, "train", args.train_pairs, 0.2, 100)
    test_path = dataset(work, "test", args.test_pairs, 0.0, 101)
    items = load_benchmark(test_path)  # scored against the noise-free truth
    n_noisy = sum(e.label != e.truth for e in read_preferences(train_path))
    result: dict = {"data": {"train_pairs": args.train_pairs, "test_pairs": args.test_pairs, "label_noise": 0.2,
                             "train_labels_flipped": n_noisy, "kinds": list(KINDS)}, "accuracy": {}, "throughput": {}}

    zs = load_reward(ZERO_SHOT)
    result["accuracy"]["zero-shot CLIPScore"] = accuracy(zs, items)

    heads = []
    for s in range(args.members):
        folder, res = train_run("reward_head_shapes.yaml", work, f"heads/seed{s}", data=str(train_path), seed=s)
        heads.append(load_reward(f"head:{folder}"))
        result["accuracy"][f"head seed {s}"] = accuracy(heads[-1], items)
        if s == 0:
            result["throughput"]["head"] = {"train_pairs_per_s": res["pairs"] / res["train_s"], "embed_s": res["embed_s"],
                                            "forward_pairs_per_s": forward_rate(heads[-1], items),
                                            "note": "training on cached embeddings; forward from image files"}
    from mmreward.combine import Ensemble

    for agg in ("mean", "wco", "uwo"):
        result["accuracy"][f"ensemble {agg}"] = accuracy(Ensemble(heads, agg, 0.5), items)

    ft_folder, ft_res = train_run("reward_clip_shapes.yaml", work, "clip_finetune", data=str(train_path))
    ft = load_reward(f"clip:{ft_folder}?mode=logit")
    result["accuracy"]["fine-tuned CLIP"] = accuracy(ft, items)
    result["throughput"]["fine-tuned CLIP"] = {"train_pairs_per_s": ft_res["pairs"] / ft_res["train_s"],
                                               "forward_pairs_per_s": forward_rate(ft, items)}
    for v in result["throughput"].values():
        v["train_vs_forward"] = v["train_pairs_per_s"] / v["forward_pairs_per_s"]

    # best-of-N with every reward on the same candidate pools
    pools = candidate_pools(args.pool_prompts, args.pool_size, seed=102)
    util = np.array([u for _, _, u in pools])
    ns = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= args.pool_size]
    proxies = {"zero-shot CLIPScore": zs, "fine-tuned CLIP": ft, **{f"head seed {s}": h for s, h in enumerate(heads)},
               **{f"ensemble {a}": Ensemble(heads, a, 0.5) for a in ("mean", "wco", "uwo")}}
    with torch.no_grad():
        bon = {name: best_of_n(pool_scores(r, pools), util, ns) for name, r in tqdm(proxies.items(), desc="best-of-N")}
    bon["oracle (true utility)"] = best_of_n(util, util, ns)
    single = [bon[f"head seed {s}"] for s in range(args.members)]
    bon["head (mean of seeds)"] = {n: float(np.mean([b[n] for b in single])) for n in single[0]}
    result["best_of_n"] = {"prompts": args.pool_prompts, "pool": args.pool_size, "mean_true_utility": bon}

    best = max(("head seed 0", "fine-tuned CLIP", "ensemble mean", "ensemble wco", "ensemble uwo"),
               key=lambda k: result["accuracy"][k]["accuracy"])
    result["summary"] = {"best_trained": best, "best_accuracy": result["accuracy"][best]["accuracy"],
                         "zero_shot_accuracy": result["accuracy"]["zero-shot CLIPScore"]["accuracy"],
                         "gain_points": 100 * (result["accuracy"][best]["accuracy"]
                                               - result["accuracy"]["zero-shot CLIPScore"]["accuracy"])}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reward_accuracy.json").write_text(json.dumps(result, indent=2))
    write_markdown(result)
    chart = {k: [(float(n), v) for n, v in b.items()] for k, b in bon.items()
             if k in ("zero-shot CLIPScore", "fine-tuned CLIP", "head (mean of seeds)", "ensemble uwo", "ensemble wco",
                      "oracle (true utility)")}
    line_chart(chart, "N (candidates per prompt)", "mean true utility of the pick", RESULTS / "reward_accuracy_best_of_n.png")
    return result


def write_markdown(r: dict) -> None:
    cats = list(KINDS)
    lines = ["# Reward-model accuracy on ShapesWorld preferences", "",
             f"{r['data']['test_pairs']} held-out pairs scored against noise-free labels; trained on "
             f"{r['data']['train_pairs']} pairs with {int(100 * r['data']['label_noise'])}% label noise. "
             "Alignment pairs: a correct image against a hard negative; taste pairs: two correct images, the "
             "annotator prefers larger objects. `benchmarks/reward_accuracy.py`.", "",
             "| reward | accuracy | " + " | ".join(cats) + " | ECE |", "|---|---|" + "---|" * len(cats) + "---|"]
    for name, a in r["accuracy"].items():
        lines.append(f"| {name} | {a['accuracy']:.3f} | " + " | ".join(f"{a.get(c, float('nan')):.3f}" for c in cats)
                     + f" | {a['ece']:.3f} |")
    s = r["summary"]
    lines += ["", f"Best trained reward: **{s['best_trained']}**, {s['best_accuracy']:.3f} "
              f"({s['gain_points']:+.1f} points over zero-shot CLIPScore, {s['zero_shot_accuracy']:.3f}).", "",
              f"Best-of-N ({r['best_of_n']['prompts']} prompts, pools of {r['best_of_n']['pool']}): mean true utility of the pick.", ""]
    bon = r["best_of_n"]["mean_true_utility"]
    ns = list(next(iter(bon.values())))
    lines += ["| reward | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
    lines += [f"| {k} | " + " | ".join(f"{v[n]:.3f}" for n in ns) + " |" for k, v in bon.items()]
    lines += ["", "![best-of-N](reward_accuracy_best_of_n.png)", "", "Throughput (pairs per second, 2 CPU cores):", "",
              "| reward | training | forward only | training / forward |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['train_pairs_per_s']:.1f} | {v['forward_pairs_per_s']:.1f} | {v['train_vs_forward']:.2f} |"
              for k, v in r["throughput"].items()]
    lines.append("\nThe head trains on embeddings computed once (its training rate excludes that pass); the fine-tuned "
                 "CLIP runs both towers forward and backward at every step.")
    (RESULTS / "reward_accuracy.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
