"""D3PO (and DDPO, its baseline) on ShapesWorld: the exact evaluator's score of the embedded multi-step
model on the held-out evaluation suite, before and during fine-tuning, against training time.

    python benchmarks/d3po_shapes.py [--methods d3po ddpo] [--minutes 60] [--chunks 6]

Each method trains from ``configs/<method>_shapes.yaml`` (the evaluator labels D3PO's pairs / is DDPO's
reward): D3PO for ``--minutes`` of training wall time in ``--chunks`` resumed pieces, DDPO to the same
epoch counts (the same number of samples, drawn for the same prompts with the same seeds); after each
piece the checkpoint's LoRA adapters are evaluated on the evaluation suite (432 prompts with GenEval's seeds,
``--eval-seeds`` more at +1000, +2000, ... averaged; the training sampler: DDIM, eta 1, the config's steps
and guidance). Evaluation time is not training time.

Also measured: held-out compositions, sample diversity across seeds (mean pairwise RMS pixel distance
between 4 seeds of 24 prompts), sampling and training throughput against plain inference of the same
pipeline in the same run. The base evaluation and each finished method are kept in ``--work``, so
``--methods ddpo`` later adds DDPO to an earlier D3PO run. Writes ``benchmarks/results/d3po_shapes.{json,md}``, ``d3po_shapes_curve.png``
and ``d3po_shapes_samples.png`` (before | after per method; green = correct, red = wrong).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from charts import line_chart  # benchmarks/charts.py
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from diffusion_align.config import SAMPLER_KEYS, DiffusionRLConfig
from diffusion_align.rollout import initial_noise, sample_rollouts
from diffusion_align.sampling import load_pipeline
from diffusion_align.train import train
from mmreward.images import image_grid, text_tile, to_uint8, verdict_tile
from mmreward.shapes import load_suite
from mmreward.shapes.evaluator import category_table, suite_scores
from mmreward.shapes.generate import repeat_counts
from mmreward.shapes.prompts import CATEGORIES

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


@torch.no_grad()
def sample_suite(pipe, cfg: DiffusionRLConfig, prompts: list[str], seeds: list[int], batch: int = 48) -> torch.Tensor:
    """Images ``[N,3,H,W]`` of the policy's sampler (x_T and step noise both from each row's seed)."""
    out = []
    for k in range(0, len(prompts), batch):
        p, s = prompts[k : k + batch], seeds[k : k + batch]
        ro = sample_rollouts(pipe, pipe.unet, p, initial_noise(pipe, s), [x + 7919 for x in s], steps=cfg.sample_steps,
                             eta=cfg.sample_eta, guidance=cfg.guidance_scale, sde_steps=cfg.sde_steps)
        out.append(ro.images)
    return torch.cat(out)


def diversity(images: torch.Tensor, groups: int, per: int) -> float:
    """Mean pairwise RMS distance (pixels in [0,1]) between the ``per`` images of each of ``groups`` prompts."""
    x = images.reshape(groups, per, -1)
    d = [((x[g, a] - x[g, b]) ** 2).mean().sqrt().item() for g in range(groups) for a in range(per) for b in range(a + 1, per)]
    return float(np.mean(d))


def objects_per_image(detected: list[int], suite: list[dict]) -> dict[str, float]:
    """Mean number of shapes detected per image (``suite_scores``' ``detected``), per category."""
    return {tag: float(np.mean([c for c, m in zip(detected, suite) if m["tag"] == tag])) for tag in CATEGORIES}


def evaluate_policy(pipe, cfg, suite, div_rows, seeds: int = 1) -> tuple[dict, torch.Tensor]:
    """Evaluator scores on the suite, averaged over ``seeds`` seeds per prompt (GenEval's seed first, then
    +1000, +2000, ...), with ``per_seed_overall``; the images returned are those of the first seed."""
    prompts = [m["prompt"] for m in suite]
    first = repeat_counts(prompts)  # GenEval seed 0 per prompt; a repeated prompt takes the next seed
    t0 = time.time()
    runs, images = [], None
    for r in range(seeds):
        imgs = sample_suite(pipe, cfg, prompts, [s + 1000 * r for s in first])
        runs.append(suite_scores(to_uint8(imgs), suite))
        if r == 0:
            images = imgs
    res = {"overall": float(np.mean([x["overall"] for x in runs])),
           "per_category": {k: float(np.mean([x["per_category"][k] for x in runs])) for k in runs[0]["per_category"]},
           "n": sum(x["n"] for x in runs), "seeds": seeds,
           "held_out_compositions": float(np.mean([x["held_out_compositions"] for x in runs])),
           "per_seed_overall": [x["overall"] for x in runs], "correct": runs[0]["correct"],
           "objects_per_image": objects_per_image(runs[0]["detected"], suite)}  # first seed: what the policy draws
    div_prompts = [m["prompt"] for m in div_rows for _ in range(4)]
    div_images = sample_suite(pipe, cfg, div_prompts, [1000 + s for _ in div_rows for s in range(4)])
    res["diversity"] = diversity(div_images, len(div_rows), 4)
    res["eval_s"] = time.time() - t0
    return res, images


def with_lora(cfg: DiffusionRLConfig, folder: Path | None):
    pipe = load_pipeline(cfg.pretrained, "cpu")
    if folder is not None:
        pipe.load_lora_weights(str(folder))
    return pipe


@torch.no_grad()
def plain_inference_rate(cfg: DiffusionRLConfig, n: int = 32) -> float:
    """Samples per second of the pipeline's own ``__call__`` (DDIM, same steps and guidance), batch ``n``."""
    from diffusers import DDIMScheduler

    pipe = load_pipeline(cfg.pretrained, "cpu")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    prompts = [m["prompt"] for m in load_suite("eval")[:n]]
    pipe(prompts[:2], num_inference_steps=cfg.sample_steps, guidance_scale=cfg.guidance_scale)  # warm-up
    t0 = time.time()
    pipe(prompts, num_inference_steps=cfg.sample_steps, guidance_scale=cfg.guidance_scale, eta=cfg.sample_eta,
         generator=torch.Generator().manual_seed(0))
    return n / (time.time() - t0)


def training_score(rows: list[dict], every: int = 60) -> list[dict]:
    """The feedback's mean score on the training samples, averaged over blocks of ``every`` epochs."""
    rows = [r for r in rows if "score_mean" in r]
    return [{"epochs": f"{rows[k]['epoch']}-{rows[min(k + every, len(rows)) - 1]['epoch']}",
             "score": float(np.mean([r["score_mean"] for r in rows[k : k + every]]))} for k in range(0, len(rows), every)]


def run_method(method: str, args, suite, div_rows, base: dict, plain: float, match: list[dict] | None = None) -> dict:
    """Train ``method`` in chunks, evaluating after each. ``match`` (D3PO's curve): train to the same epoch
    counts, i.e. the same number of samples on the same prompts, instead of for ``--minutes``. ``plain``:
    plain inference samples/s measured in this invocation, kept with the method's throughput (a method
    finished in an earlier session, maybe on another machine, keeps its own)."""
    cfg = DiffusionRLConfig.from_cli(str(ROOT / "configs" / f"{method}_shapes.yaml"), args.set)
    out = Path(args.work) / method
    if out.exists() and not args.resume:
        shutil.rmtree(out)
    curve = [{"minutes": 0.0, "epochs": 0, "pairs": 0, "samples": 0, "overall": base["overall"],
              "held_out_compositions": base["held_out_compositions"]}]
    if args.resume and (out / "curve.json").is_file():  # chunks finished by an earlier invocation
        curve = json.loads((out / "curve.json").read_text())
    targets = [c["epochs"] for c in match[1:]] if match else [None] * args.chunks
    done_now = 0
    for k, target in enumerate(targets, 1):
        if k < len(curve):
            continue
        if args.max_chunks is not None and done_now >= args.max_chunks:
            tqdm.write(f"{method}: stopping after {done_now} chunk(s) (--max-chunks); --resume continues")
            return None
        budget = {"max_minutes": None, "num_epochs": target} if target else {
            "max_minutes": args.minutes * k / len(targets), "num_epochs": 100000}
        run = DiffusionRLConfig.from_dict({**vars(cfg), "output_dir": str(out), **budget, "checkpoint_every": 1000, "grid_every": 10})
        resume = (out / "checkpoint" / "state.safetensors").is_file()
        info = train(run, resume=resume, progress=True)
        if info["stopped_by"] == "interrupt":
            raise SystemExit(f"{method}: interrupted; the checkpoint in {out} is kept (--resume redoes this chunk)")
        result, images = evaluate_policy(with_lora(cfg, out / "checkpoint"), cfg, suite, div_rows, args.eval_seeds)
        curve.append({"minutes": info["elapsed"] / 60, "epochs": info["epoch"], "pairs": info["pairs"],
                      "samples": info["samples"], "updates": info["updates"], "overall": result["overall"],
                      "held_out_compositions": result["held_out_compositions"], "per_category": result["per_category"],
                      "objects_per_image": result["objects_per_image"]})
        save_file({"images": torch.from_numpy(to_uint8(images))}, out / "eval_images.safetensors")
        (out / "last_eval.json").write_text(json.dumps({k: v for k, v in result.items() if k != "correct"}))
        (out / "curve.json").write_text(json.dumps(curve, indent=1))
        done_now += 1
        tqdm.write(f"{method}: {curve[-1]}")
    result = json.loads((out / "last_eval.json").read_text())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    sampled = [r for r in rows if "samples_per_s" in r]  # rates as totals over totals, not means of ratios
    sample_s, train_s = sum(r["sample_s"] for r in sampled), sum(r["train_s"] for r in rows)
    n_samples, n_pairs = sum(r["samples_per_s"] * r["sample_s"] for r in sampled), sum(r.get("pairs", 0) for r in rows)
    r = {"config": vars(cfg), "curve": curve, "final": result, "training_score": training_score(rows),
         "gain": result["overall"] - base["overall"], "matched_to": "d3po epochs" if match else f"{args.minutes} min",
         "plain_inference_samples_per_s": plain,
         "throughput": {"samples_per_s_sampling": n_samples / sample_s,
                        "pairs_per_s_training": n_pairs * cfg.num_inner_epochs / train_s if n_pairs else None,
                        "samples_per_s_training": n_samples / train_s}}
    (out / "result.json").write_text(json.dumps(r, indent=2))
    return r


def cached_base(work: Path, cfg0: DiffusionRLConfig, suite, div_rows, seeds: int = 1) -> tuple[dict, torch.Tensor]:
    """The base model's evaluation, reused from ``work`` when the sampler and seeds are the same (it is
    deterministic)."""
    key = {k: v for k in SAMPLER_KEYS if (v := getattr(cfg0, k)) is not None}  # unset keys left out: older caches match
    key = key | ({"eval_seeds": seeds} if seeds > 1 else {})
    path = work / "base_eval.json"
    cached = json.loads(path.read_text()) if path.is_file() else {}
    if cached.get("sampler") == key:
        return cached["result"], load_file(work / "base_images.safetensors")["images"]
    base, images = evaluate_policy(with_lora(cfg0, None), cfg0, suite, div_rows, seeds)
    base = {k: v for k, v in base.items() if k != "correct"}
    images = torch.from_numpy(to_uint8(images))
    work.mkdir(parents=True, exist_ok=True)
    save_file({"images": images}, work / "base_images.safetensors")
    path.write_text(json.dumps({"sampler": key, "result": base}))
    return base, images


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["d3po", "ddpo"], choices=["d3po", "ddpo"])
    p.add_argument("--minutes", type=float, default=60.0, help="D3PO's training wall time")
    p.add_argument("--chunks", type=int, default=6, help="evaluation points along the run")
    p.add_argument("--work", default="outputs/bench_d3po")
    p.add_argument("--resume", action="store_true", help="continue the runs in --work (finished chunks are kept)")
    p.add_argument("--max-chunks", type=int, default=None, help="train at most this many chunks per method now (--resume continues)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="d3po_shapes", help="stem of the result files in benchmarks/results/")
    p.add_argument("--eval-seeds", type=int, default=1, help="seeds per held-out prompt (scores averaged)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the methods' configs (probes; e.g. --set train_first_steps=4)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    work = Path(args.work)
    suite = load_suite("eval")
    div_rows = [m for tag in CATEGORIES for m in [x for x in suite if x["tag"] == tag][:4]]
    cfg0 = DiffusionRLConfig.from_cli(str(ROOT / "configs" / "d3po_shapes.yaml"), args.set)  # the sampler as the runs have it
    base, base_images = cached_base(work, cfg0, suite, div_rows, args.eval_seeds)
    plain = plain_inference_rate(cfg0)
    result = {"suite": {"prompts": len(suite), "seeds": args.eval_seeds}, "base": base, "plain_inference_samples_per_s": plain,
              "minutes": args.minutes, "methods": {}}
    for method in ("d3po", "ddpo"):  # D3PO first: DDPO is matched to its number of samples
        if method in args.methods:
            match = result["methods"]["d3po"]["curve"] if method == "ddpo" and "d3po" in result["methods"] else None
            r = run_method(method, args, suite, div_rows, base, plain, match)
            if r is not None:
                result["methods"][method] = r
            else:  # stopped early (--max-chunks): its curve so far
                result.setdefault("partial", {})[method] = json.loads((work / method / "curve.json").read_text())
        elif (work / method / "result.json").is_file():  # finished earlier in this work folder
            result["methods"][method] = json.loads((work / method / "result.json").read_text())
            tqdm.write(f"{method}: results of the earlier run in {work / method}")
        if method in result["methods"]:
            t = result["methods"][method]["throughput"]
            t["sampling_vs_plain"] = t["samples_per_s_sampling"] / result["methods"][method].get("plain_inference_samples_per_s", plain)
            (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    if not result["methods"]:  # only partial runs (--max-chunks): keep the published results as they are
        tqdm.write(f"no method finished; partial curves: {json.dumps(result.get('partial'))}")
        return result
    write_markdown(result, args.name)
    series = {m: [(c["samples"], c["overall"]) for c in r["curve"]] for m, r in result["methods"].items()}
    line_chart(series, f"samples drawn (D3PO: {result['minutes']:.0f} min on 2 CPU cores)", "evaluator overall (held-out suite)",
               RESULTS / f"{args.name}_curve.png")
    images = {"base": base_images} | {m: load_file(work / m / "eval_images.safetensors")["images"] for m in result["methods"]}
    sample_grid(suite, images).save(RESULTS / f"{args.name}_samples.png")
    return result


def write_markdown(result: dict, name: str = "d3po_shapes") -> None:
    cols = {"base": result["base"]} | {m: r["final"] for m, r in result["methods"].items()}
    lines = ["# D3PO / DDPO on ShapesWorld", "",
             f"Held-out evaluation suite ({result['suite']['prompts']} prompts, {result['suite']['seeds']} seed(s) each), the exact evaluator; "
             f"D3PO trained {result['minutes']:.0f} min on 2 CPU cores, DDPO the same number of samples. "
             "`benchmarks/d3po_shapes.py`.", ""]
    lines += category_table(cols)
    lines.append("| diversity (pairwise RMS) | " + " | ".join(f"{c['diversity']:.3f}" for c in cols.values()) + " |")
    if all("objects_per_image" in c for c in cols.values()):  # what the policy draws (first seed)
        lines += ["", "Shapes detected per image (first seed):", "", "| category | " + " | ".join(cols) + " |",
                  "|---|" + "---|" * len(cols)]
        lines += [f"| {tag} | " + " | ".join(f"{c['objects_per_image'][tag]:.2f}" for c in cols.values()) + " |"
                  for tag in CATEGORIES]
    lines += ["", "| method | gain (overall) | pairs / samples | sampling samples/s (vs plain) | training pairs/s | training samples/s |",
              "|---|---|---|---|---|---|"]
    for m, r in result["methods"].items():
        t = r["throughput"]
        last = r["curve"][-1]
        lines.append(f"| {m} | {r['gain']:+.3f} | {last['pairs']} / {last['samples']} | {t['samples_per_s_sampling']:.2f} "
                     f"({t['sampling_vs_plain']:.2f}× of {r.get('plain_inference_samples_per_s', result['plain_inference_samples_per_s']):.2f}) "
                     f"| {t['pairs_per_s_training'] or 0:.2f} | {t['samples_per_s_training']:.2f} |")
    lines += ["", "Sampling is set against plain inference of the same pipeline (its own `__call__`) measured in the same run as the method.", "",
              "Curve (overall score against training time and labelled pairs):", "",
              "| method | minutes | epochs | pairs | samples | overall | held-out compositions |", "|---|---|---|---|---|---|---|"]
    for m, r in result["methods"].items():
        for c in r["curve"]:
            lines.append(f"| {m} | {c['minutes']:.1f} | {c.get('epochs', '')} | {c['pairs']} | {c['samples']} | {c['overall']:.3f} | {c['held_out_compositions']:.3f} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def sample_grid(suite: list[dict], images: dict[str, torch.Tensor], rows_per_cat: int = 2):
    from mmreward.shapes.evaluator import evaluate_image

    tiles, cols = [], 1 + len(images)
    for tag in CATEGORIES:
        idx = [i for i, m in enumerate(suite) if m["tag"] == tag][:rows_per_cat]
        for i in idx:
            tiles.append(text_tile(suite[i]["prompt"]))
            for ims in images.values():
                im = ims[i].numpy()
                tiles.append(verdict_tile(im, evaluate_image(im, suite[i])["correct"]))
    return image_grid(tiles, cols=cols)


if __name__ == "__main__":
    main()
