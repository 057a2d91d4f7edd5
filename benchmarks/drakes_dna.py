"""DRAKES on the ground-truth DNA world: the paper's Table 1 (Wang et al. 2025) for the pretrained model,
best-of-N selection with the reward oracle, DRAKES without the KL term and DRAKES.

    python benchmarks/drakes_dna.py [--minutes 15] [--samples 640]

Each fine-tuning run trains ``configs/drakes_dna.yaml`` (``alpha: 0`` for "without KL") for ``--minutes`` of
wall time on 2 cores; best-of-N spends the same wall time sampling from the pretrained model (N as many
candidates per output as fit in it) and keeps the candidate the reward oracle scores highest.

Metrics on ``--samples`` generated sequences (the paper's columns, with the world's ground truth added):

- **Pred-Act**: median activity predicted by the *evaluation* oracle (trained on the other split);
  **True-Act**: median hidden activity (exact); gains also in standard deviations of natural activity;
- **Access %**: share of sequences with the hidden accessibility (the ATAC analogue, exact);
- **3-mer corr**: Pearson correlation of 3-mer frequencies with the top 1% most active natural sequences;
- **Log-lik**: median exact log-likelihood under the true generator (natural sequences: their own median);
- **Diversity**: mean pairwise Hamming distance.

Also: memory (peak RSS), optimiser steps per second, and truncated backprop (K steps) against full
backprop (all steps) timed in the same run. Writes ``benchmarks/results/drakes_dna.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from charts import line_chart  # noqa: E402  (benchmarks/charts.py)

from diffusion_align.dna.mdlm import load_model, sample
from diffusion_align.dna.oracle import load_oracle
from diffusion_align.dna.world import DNAWorld, diversity, kmer_correlation
from diffusion_align.drakes import DrakesConfig, relaxed_trajectory, train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def evaluate(x: torch.Tensor, world: DNAWorld, eval_oracle, top_natural: torch.Tensor, natural_std: float) -> dict:
    onehot = torch.nn.functional.one_hot(x, 4).float()
    pred = torch.cat([eval_oracle(onehot[k : k + 512]) for k in range(0, len(x), 512)])
    act = world.activity(x)
    return {"pred_activity_median": float(pred.median()), "true_activity_median": float(act.median()),
            "true_activity_mean": float(act.mean()),
            "accessible": float(world.accessible(x).double().mean()),
            "kmer3_corr": kmer_correlation(x, top_natural),
            "log_lik_median": float(world.log_likelihood(x).median()),
            "diversity": diversity(x), "natural_activity_std": natural_std}


def smoothed_curve(rows: list[dict], points: int = 50) -> list[dict]:
    """The training log in ``points`` windows: each window's last step and elapsed time, and its means of the
    batch reward, the evaluation oracle's reward and the path KL."""
    w = max(1, len(rows) // points)
    out = []
    for k in range(0, len(rows), w):
        win = rows[k : k + w]
        out.append({"epoch": win[-1]["epoch"], "elapsed_s": win[-1]["elapsed_s"],
                    **{c: float(np.mean([r[c] for r in win])) for c in ("reward", "kl", "eval_reward") if c in win[0]}})
    return out


def best_of_n(model, reward, n_out: int, n: int, steps: int, seed: int) -> torch.Tensor:
    """For each of ``n_out`` outputs, ``n`` candidates from ``model``; keep the one ``reward`` scores highest."""
    g = torch.Generator().manual_seed(seed)
    cand = sample(model, n_out * n, steps=steps, generator=g, progress=True).view(n_out, n, -1)
    with torch.no_grad():
        scores = torch.cat([reward(torch.nn.functional.one_hot(c, 4).float()) for c in cand.view(-1, cand.shape[-1]).split(1024)])
    return cand[torch.arange(n_out), scores.view(n_out, n).argmax(1)]


def backprop_speed(cfg: DrakesConfig, repeats: int = 3) -> dict:
    """Seconds per trajectory batch (forward + backward) with gradients through the last K steps and through
    all steps, same model and batch, measured back to back; and the activation memory each keeps for the
    backward pass (bytes of the tensors autograd saves, counted by a saved-tensors hook)."""
    model = load_model(cfg.pretrained).train()
    ref = load_model(cfg.pretrained).requires_grad_(False)
    reward = load_oracle(cfg.reward)
    out, saved = {}, [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    for name, k in (("truncated", cfg.truncate_steps), ("full", cfg.sample_steps)):
        times = []
        for r in range(repeats):
            g = torch.Generator().manual_seed(r)
            saved[0] = 0
            t0 = time.time()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                x0, kl, _ = relaxed_trajectory(model, ref, cfg.batch_size, cfg.sample_steps, k, cfg.gumbel_temp,
                                               cfg.hard_states, g)
                loss = -reward(x0[..., :-1]).mean() + cfg.alpha * kl.mean()
            loss.backward()
            times.append(time.time() - t0)
            model.zero_grad(set_to_none=True)
        out[f"{name}_s_per_batch"] = float(np.median(times))
        out[f"{name}_saved_mb"] = saved[0] / 2**20
    out["speedup"] = out["full_s_per_batch"] / out["truncated_s_per_batch"]
    out["batch_size"], out["steps"], out["truncate_steps"] = cfg.batch_size, cfg.sample_steps, cfg.truncate_steps
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=15.0, help="fine-tuning wall time per run (and best-of-N's sampling time)")
    p.add_argument("--samples", type=int, default=640)
    p.add_argument("--config", default=str(ROOT / "configs" / "drakes_dna.yaml"))
    p.add_argument("--work", default="outputs/bench_drakes")
    p.add_argument("--methods", nargs="+", default=["pretrained", "best_of_n", "drakes_no_kl", "drakes"])
    p.add_argument("--resume", action="store_true", help="keep finished runs in --work; continue interrupted ones")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report-only", action="store_true", help="rewrite the Markdown and figure from the JSON")
    args = p.parse_args(argv)
    if args.report_only:
        result = json.loads((RESULTS / "drakes_dna.json").read_text())
        write_markdown(result)
        return result
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base_cfg = DrakesConfig.from_yaml(args.config)
    world = DNAWorld()
    natural = world.sample(20000, np.random.default_rng(777))
    act = world.activity(natural)
    top = natural[act.argsort(descending=True)[: len(natural) // 100]]
    natural_std = float(act.std())
    eval_oracle = load_oracle(base_cfg.eval_reward)
    reward = load_oracle(base_cfg.reward)
    pre = load_model(base_cfg.pretrained)
    path = RESULTS / "drakes_dna.json"
    result = json.loads(path.read_text()) if args.resume and path.is_file() else {}
    result.update({"samples": args.samples, "minutes": args.minutes, "config": vars(base_cfg)})
    result.setdefault("methods", {})
    result["natural"] = evaluate(natural[: args.samples], world, eval_oracle, top, natural_std)

    # the fine-tuning runs first: best-of-N is matched to their wall time
    for name, alpha in (("drakes_no_kl", 0.0), ("drakes", base_cfg.alpha)):
        if name not in args.methods:
            continue
        out = work / name
        if out.exists() and not args.resume:
            shutil.rmtree(out)
        cfg = DrakesConfig.from_dict({**vars(base_cfg), "alpha": alpha, "output_dir": str(out), "max_minutes": args.minutes,
                                      "num_epochs": 100000})
        resume = (out / "checkpoint" / "state.safetensors").is_file()
        done = (out / "done.json").is_file()
        if not done:
            info = train(cfg, resume=resume)
            if info["stopped_by"] == "interrupt":
                raise SystemExit(f"{name}: interrupted; --resume continues")
            (out / "done.json").write_text(json.dumps(info))
        info = json.loads((out / "done.json").read_text())
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        model = load_model(out / "model")
        t0 = time.time()
        x = sample(model, args.samples, steps=cfg.sample_steps, generator=torch.Generator().manual_seed(1), progress=True)
        result["methods"][name] = {"alpha": alpha, **evaluate(x, world, eval_oracle, top, natural_std),
                                   "steps": info["epoch"], "minutes": info["elapsed"] / 60,
                                   "steps_per_s": info["epoch"] / info["elapsed"], "sample_s": time.time() - t0,
                                   "curve": smoothed_curve(rows)}
        path.write_text(json.dumps(result, indent=2))

    if "pretrained" in args.methods:
        t0 = time.time()
        x = sample(pre, args.samples, steps=base_cfg.sample_steps, generator=torch.Generator().manual_seed(1), progress=True)
        sample_s = time.time() - t0
        result["methods"]["pretrained"] = {**evaluate(x, world, eval_oracle, top, natural_std), "sample_s": sample_s}
        path.write_text(json.dumps(result, indent=2))
    if "best_of_n" in args.methods:
        per_sample = result["methods"]["pretrained"]["sample_s"] / args.samples
        n = int(max(2, min(64, args.minutes * 60 / (per_sample * args.samples))))
        t0 = time.time()
        x = best_of_n(pre, reward, args.samples, n, base_cfg.sample_steps, seed=2)
        result["methods"]["best_of_n"] = {"n": n, **evaluate(x, world, eval_oracle, top, natural_std),
                                          "minutes": (time.time() - t0) / 60}
        path.write_text(json.dumps(result, indent=2))
    result["backprop"] = backprop_speed(base_cfg)
    result["peak_rss_mb"] = rss_mb()
    path.write_text(json.dumps(result, indent=2))
    write_markdown(result)
    return result


def write_markdown(result: dict) -> None:
    std = result["natural"]["natural_activity_std"]
    base = result["methods"].get("pretrained", result["natural"])
    lines = ["# DRAKES on the ground-truth DNA world", "",
             f"{result['samples']} sequences per method; fine-tuning {result['minutes']:.0f} min on 2 CPU cores per run; "
             "`benchmarks/drakes_dna.py`. Pred-Act: the evaluation oracle's median; True-Act: the hidden activity's median "
             f"(gain over pretrained in natural standard deviations, σ = {std:.2f}).", "",
             "| method | Pred-Act | True-Act (gain σ) | Access % | 3-mer corr | Log-lik | Diversity |", "|---|---|---|---|---|---|---|"]
    rows = {"natural": result["natural"]} | result["methods"]
    order = [k for k in ("natural", "pretrained", "best_of_n", "drakes_no_kl", "drakes") if k in rows]
    for k in order:
        r = rows[k]
        label = {"best_of_n": f"best-of-{r.get('n', 'N')}", "drakes_no_kl": "DRAKES w/o KL",
                 "drakes": f"DRAKES (α = {r.get('alpha', '')})"}.get(k, k)
        gain = (r["true_activity_median"] - base["true_activity_median"]) / std
        lines.append(f"| {label} | {r['pred_activity_median']:.2f} | {r['true_activity_median']:.2f} ({gain:+.1f}) | "
                     f"{100 * r['accessible']:.1f} | {r['kmer3_corr']:.3f} | {r['log_lik_median']:.1f} | {r['diversity']:.3f} |")
    bp = result.get("backprop")
    if bp:
        lines += ["", f"Truncated backprop (last K steps) {bp['truncated_s_per_batch']:.2f} s per batch vs full backprop "
                      f"{bp['full_s_per_batch']:.2f} s: {bp['speedup']:.2f}× faster (same run, batch {bp['batch_size']}, "
                      f"{bp['truncate_steps']} of {bp['steps']} steps); activations kept for backward "
                      f"{bp['truncated_saved_mb']:.0f} MB vs {bp['full_saved_mb']:.0f} MB. "
                      f"Peak memory of the whole benchmark process {result['peak_rss_mb']:.0f} MB (it also holds the "
                      "full-backprop measurement and best-of-N's candidate pools)."]
    for k in ("drakes_no_kl", "drakes"):
        if k in result["methods"]:
            r = result["methods"][k]
            lines.append(f"- {k}: {r['steps']} optimiser steps in {r['minutes']:.1f} min ({r['steps_per_s']:.3f} steps/s).")
    names = {"drakes_no_kl": "w/o KL", "drakes": "DRAKES"}
    series = {f"{names[k]}: {tag}": [(r["elapsed_s"] / 60, r[col]) for r in result["methods"][k]["curve"]]
              for k in names if k in result["methods"]
              for tag, col in (("reward", "reward"), ("eval", "eval_reward"))}
    if series:
        line_chart(series, "fine-tuning minutes (2 CPU cores)", "mean predicted activity of the batch",
                   RESULTS / "drakes_dna_curve.png")
        lines += ["", "![reward curves](drakes_dna_curve.png)"]
    (RESULTS / "drakes_dna.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
