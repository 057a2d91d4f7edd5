"""InstructVideo on the ShapesWorld video world: arms at equal wall time, judged on ground truth.

    python benchmarks/instructvideo_shapes.py [--minutes 60] [--checkpoints 15 30 45] [--rows 216] [--seeds 2]
        [--curve-rows 48] [--arms edit_dataset edit_sample tar_off all_frames full_chain]

Each arm is ``configs/instructvideo_shapes.yaml`` with its overrides, trained in invocations of the
``--checkpoints`` spacing (the time budget counts per invocation; ``--resume`` continues), so its LoRA is
exported at 15, 30, 45 and 60 minutes. At each mark the arm's videos on ``--curve-rows`` rows of the video
evaluation suite (spread over the categories) are scored by the three ground-truth scores; at the end
``--rows`` rows × ``--seeds`` seeds. The base model is scored the same way. Also: the cost per update of each
arm (seconds, from its metrics) and its reward gain per wall-minute.

Writes ``benchmarks/results/instructvideo_shapes.json`` / ``.md`` and ``instructvideo_shapes_samples.gif``.
Runs are kept in ``outputs/instructvideo_bench/<arm>`` and resumed when the script is rerun.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from shapes_t2v import grid_gif, sample_videos, summarize  # noqa: E402

from mmreward.assets import resolve_asset  # noqa: E402
from mmreward.shapes.suites import load_suite  # noqa: E402
from mmreward.shapes.video import evaluate_video  # noqa: E402

RESULTS = Path(__file__).parent / "results"
WORK = Path("outputs/instructvideo_bench")
ARMS = {
    "edit_dataset": [],  # the reference: edit ground-truth videos, TAR on, S = 4
    "edit_sample": ["source=sample"],
    "tar_off": ["lambda_tar=0.0"],
    "all_frames": ["sampling=all"],
    "full_chain": ["full_chain=true"],
}


def subset(rows: list[dict], n: int) -> list[dict]:
    return rows[:: max(1, len(rows) // n)][:n]


def score(pipe, rows: list[dict], seeds: int, steps: int = 20, guidance: float = 3.0) -> dict:
    results = []
    for seed in range(seeds):
        videos = sample_videos(pipe, [r["prompt"] for r in rows], seed, 8, steps, guidance)
        results += [{**evaluate_video(v, r), "held_out": r["held_out"]} for r, v in zip(rows, videos, strict=True)]
    return {**summarize(results), "_videos": videos, "_results": results[-len(rows):]}


def train_to(arm: str, minutes: float, spacing: float, config: str, model: str) -> dict:
    """Train ``arm`` until its run has ``minutes`` of training (in invocations of ``spacing`` minutes)."""
    from diffusion_align.train import main as train

    out = WORK / arm
    done = 0.0
    rows = out / "metrics.jsonl"
    if rows.is_file() and rows.read_text().strip():
        done = json.loads(rows.read_text().splitlines()[-1])["elapsed_s"] / 60
    if done >= minutes:  # the budget stops a run just past its mark
        return {"minutes": done}
    args = ["--config", config, "--set", f"output_dir={out}", "--set", f"pretrained={model}",
            "--set", f"max_minutes={min(spacing, minutes - done)}", "--no-progress"]
    for s in ARMS[arm]:
        args += ["--set", s]
    train(args + (["--resume"] if (out / "checkpoint").is_dir() else []))
    return {"minutes": minutes}


def cost(arm: str) -> dict:
    rows = [json.loads(x) for x in (WORK / arm / "metrics.jsonl").read_text().splitlines()]
    return {"updates": len(rows), "seconds_per_update": float(np.mean([r["step_s"] for r in rows])),
            "train_reward_first": float(np.mean([r["reward"] for r in rows[:10]])),
            "train_reward_last": float(np.mean([r["reward"] for r in rows[-10:]]))}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60)
    p.add_argument("--checkpoints", type=float, nargs="*", default=[15, 30, 45])
    p.add_argument("--rows", type=int, default=216)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--curve-rows", type=int, default=48)
    p.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--model", default="assets/shapesworld-t2v")
    p.add_argument("--config", default="configs/instructvideo_shapes.yaml")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    from diffusers import AnimateDiffPipeline

    suite = load_suite("video_eval")
    final_rows, curve_rows = subset(suite, args.rows), subset(suite, args.curve_rows)
    pipe = AnimateDiffPipeline.from_pretrained(resolve_asset(args.model))
    pipe.set_progress_bar_config(disable=True)
    res: dict = {"model": args.model, "minutes": args.minutes, "rows": len(final_rows), "seeds": args.seeds,
                 "curve_rows": len(curve_rows), "base": {}, "arms": {}}
    base_curve, base_final = score(pipe, curve_rows, 1), score(pipe, final_rows, args.seeds)
    res["base"] = {"curve": {k: v for k, v in base_curve.items() if not k.startswith("_")},
                   "final": {k: v for k, v in base_final.items() if not k.startswith("_")}}
    shown = None
    marks = [m for m in args.checkpoints if m < args.minutes] + [args.minutes]
    spacing = marks[0]
    for arm in args.arms:
        arm_res = {"curve": {}}
        for m in marks:
            train_to(arm, m, spacing, args.config, args.model)
            pipe.unload_lora_weights()
            pipe.load_lora_weights(str(WORK / arm / "lora"))
            if m < args.minutes:
                arm_res["curve"][f"{m:g}"] = score(pipe, curve_rows, 1)
            else:
                arm_res["final"] = score(pipe, final_rows, args.seeds)
        pipe.unload_lora_weights()
        if arm == "edit_dataset":
            shown = arm_res["final"]
        arm_res["final"] = {k: v for k, v in arm_res["final"].items() if not k.startswith("_")}
        arm_res["curve"] = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")}
                            for k, v in arm_res["curve"].items()}
        arm_res["cost"] = cost(arm)
        gain = arm_res["final"]["overall"]["per_frame"] - res["base"]["final"]["overall"]["per_frame"]
        arm_res["per_frame_gain"] = gain
        arm_res["gain_per_wall_minute"] = gain / args.minutes
        res["arms"][arm] = arm_res
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "instructvideo_shapes.json").write_text(json.dumps(res, indent=1))
    (RESULTS / "instructvideo_shapes.md").write_text(markdown(res))
    if shown is not None:
        pick = list(range(0, len(final_rows), max(1, len(final_rows) // 12)))[:12]
        grid_gif(shown["_videos"][pick], [shown["_results"][i] for i in pick], RESULTS / "instructvideo_shapes_samples.gif")
    print(markdown(res))
    return res


def markdown(res: dict) -> str:
    def fmt(x):
        return "–" if x is None else f"{x:.3f}"

    b = res["base"]["final"]["overall"]
    lines = [f"# InstructVideo on ShapesWorld video ({res['minutes']:g} min per arm, 2 cores)", "",
             f"{res['rows']} rows of the video evaluation suite × {res['seeds']} seeds; curves on {res['curve_rows']} rows.", "",
             "| arm | per-frame score | Δ vs base | temporal consistency | motion accuracy | s / update | updates |",
             "|---|---|---|---|---|---|---|",
             f"| base | {fmt(b['per_frame'])} | | {fmt(b['consistency'])} | {fmt(b['motion_accuracy'])} | | |"]
    for arm, a in res["arms"].items():
        o = a["final"]["overall"]
        lines.append(f"| {arm} | {fmt(o['per_frame'])} | {a['per_frame_gain']:+.3f} | {fmt(o['consistency'])} | "
                     f"{fmt(o['motion_accuracy'])} | {a['cost']['seconds_per_update']:.1f} | {a['cost']['updates']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
