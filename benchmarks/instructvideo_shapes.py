"""InstructVideo on the ShapesWorld video world: arms at equal wall time, judged on ground truth.

    python benchmarks/instructvideo_shapes.py [--minutes 60] [--checkpoints 15 30 45] [--rows 216] [--seeds 2]
        [--curve-rows 48] [--arms edit_dataset edit_sample tar_off all_frames full_chain]
        [--set KEY=VALUE ...] [--tag NAME]

Each arm is ``configs/instructvideo_shapes.yaml`` with its overrides, trained in invocations of the
``--checkpoints`` spacing (the time budget counts per invocation; ``--resume`` continues), so its LoRA is
exported at 15, 30, 45 and 60 minutes. At each mark the arm's videos on ``--curve-rows`` rows of the video
evaluation suite (spread over the categories) are scored by the three ground-truth scores; at the end
``--rows`` rows × ``--seeds`` seeds. The base model is scored the same way. Also: the cost per update of each
arm (seconds, from its metrics) and its reward gain per wall-minute.

Writes ``benchmarks/results/instructvideo_shapes.json`` / ``.md`` and, for each arm, a before/after GIF of
8 rows (the base model beside the arm, same noise): ``instructvideo_shapes_samples.gif`` for the reference arm,
``instructvideo_shapes_<arm>.gif`` for the others.

The arms run in separate invocations, often on machines of different speed, so their own ``s / update`` are
not comparable. ``--cost-probe N`` trains every arm ``N`` updates in one process (nothing else scored) and
writes each one's seconds per update, measured side by side, to ``instructvideo_shapes_cost.json``; the
Markdown then shows them, with the updates 60 minutes would give each arm at those costs.

Runs are kept in ``outputs/instructvideo_bench/<arm>`` and resumed when the script is rerun. A probe of other
settings (``--set learning_rate=1e-3`` for every arm) needs ``--tag``: its runs, scores and results are kept
apart (``outputs/instructvideo_bench/<tag>/``, ``instructvideo_shapes_<tag>.{json,md}``).
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
from mmreward.files import read_jsonl  # noqa: E402
from mmreward.shapes.suites import load_suite  # noqa: E402
from mmreward.shapes.video import evaluate_video  # noqa: E402

RESULTS = Path(__file__).parent / "results"
WORK = Path("outputs/instructvideo_bench")
SCORES = WORK / "scores"  # shared by probes: the base model's videos do not depend on the arms' settings
NAME = "instructvideo_shapes"
FRAMES, STEPS, GUIDANCE = 8, 20, 3.0  #: how every video of the benchmark is sampled (as shapes_t2v.py's defaults)
ARM_TEXT = {"edit_dataset": "InstructVideo editing ground-truth videos, TAR on, 4 segments",
            "edit_sample": "editing the model's own samples", "tar_off": "editing, TAR off",
            "all_frames": "editing, every frame scored", "full_chain": "all DDIM steps from noise"}
ARMS = {
    "edit_dataset": [],  # the reference (ARM_TEXT says what each arm is)
    "edit_sample": ["source=sample"],
    "tar_off": ["lambda_tar=0.0"],
    "all_frames": ["sampling=all"],
    "full_chain": ["full_chain=true"],
}


def subset(rows: list[dict], n: int) -> list[dict]:
    return rows[:: max(1, len(rows) // n)][:n]


def score(pipe, rows: list[dict], seeds: int, name: str) -> dict:
    """The three ground-truth scores of ``pipe`` on ``rows`` × ``seeds``, cached in ``SCORES/<name>.json``
    (with the first seed's videos in ``.npz``), so a rerun after a crash scores nothing twice."""
    cache = SCORES / f"{name}_{len(rows)}x{seeds}.json"
    if cache.is_file():
        res = json.loads(cache.read_text())
        return {**res, "_videos": np.load(cache.with_suffix(".npz"))["videos"]}
    results, shown = [], None
    for seed in range(seeds):
        videos = sample_videos(pipe, [r["prompt"] for r in rows], seed, FRAMES, STEPS, GUIDANCE)
        results += [{**evaluate_video(v, r), "held_out": r["held_out"]} for r, v in zip(rows, videos, strict=True)]
        shown = videos if shown is None else shown
    res = {**summarize(results), "_results": [{k: r[k] for k in ("prompt", "per_frame", "consistent", "pair_consistency",
                                                                     "motion")}
                                              for r in results[:len(rows)]]}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache.with_suffix(".npz"), videos=shown)
    cache.write_text(json.dumps(res))
    return {**res, "_videos": shown}


def base_from_t2v_benchmark(model: str, rows: list[dict], seeds: int) -> dict | None:
    """The base model's scores from ``shapes_t2v.json`` when it sampled the same videos (same model, suite rows,
    seeds, DDIM steps, guidance and frames as :func:`score`), else None."""
    f = RESULTS / "shapes_t2v.json"
    if not f.is_file():
        return None
    t2v = json.loads(f.read_text())
    same = (t2v.get("model") == model and t2v.get("seeds") == seeds and t2v.get("steps") == STEPS
            and t2v.get("guidance") == GUIDANCE and t2v.get("frames") == FRAMES and "tag" in t2v["videos"][0]
            and [v["prompt"] for v in t2v["videos"] if v["seed"] == 0] == [r["prompt"] for r in rows])
    return summarize(t2v["videos"]) if same else None


def public(res: dict) -> dict:
    return {k: v for k, v in res.items() if not k.startswith("_")}


def train_to(arm: str, minutes: float, spacing: float, config: str, model: str, extra: list[str] = ()) -> dict:
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
    for s in [*extra, *ARMS[arm]]:
        args += ["--set", s]
    train(args + (["--resume"] if (out / "checkpoint").is_dir() else []))
    return {"minutes": minutes}


def cost(arm: str) -> dict:
    rows = read_jsonl(WORK / arm / "metrics.jsonl")
    return {"updates": len(rows), "seconds_per_update": float(np.mean([r["step_s"] for r in rows])),
            "train_reward_first": float(np.mean([r["reward"] for r in rows[:10]])),
            "train_reward_last": float(np.mean([r["reward"] for r in rows[-10:]]))}


def cost_probe(updates: int, config: str, model: str) -> dict:
    """Each arm trained ``updates`` updates in this one process, fresh runs in ``WORK/cost_probe``: the mean
    seconds per update after the first (which pays the warm-up). Written to ``<NAME>_cost.json``."""
    import shutil
    import time

    from diffusion_align.train import main as train

    if updates < 2:
        raise SystemExit("--cost-probe needs at least 2 updates (the first one is a warm-up)")
    root = WORK / "cost_probe"
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.time()
    for arm in ARMS:
        args = ["--config", config, "--set", f"output_dir={root / arm}", "--set", f"pretrained={model}",
                "--set", "max_minutes=null", "--no-progress", "--stop-after-epochs", str(updates)]
        for o in ARMS[arm]:
            args += ["--set", o]
        train(args)
    res = {"updates": updates, "minutes": (time.time() - t0) / 60, "arms": {}}
    for arm in ARMS:
        rows = read_jsonl(root / arm / "metrics.jsonl")
        res["arms"][arm] = {"seconds_per_update": float(np.mean([r["step_s"] for r in rows[1:]])),
                            "updates_measured": len(rows) - 1}
    (RESULTS / f"{NAME}_cost.json").write_text(json.dumps(res, indent=1))
    return res


def gif_name(arm: str) -> str:
    return f"{NAME}_samples.gif" if arm == "edit_dataset" else f"{NAME}_{arm}.gif"


def before_after_gif(pipe, rows: list[dict], final: dict, minutes: float, arm: str, path: Path, n: int = 8) -> None:
    """``n`` rows spread over ``rows``: the base model's video (``pipe`` without adapters) beside the video of
    ``arm`` after ``minutes`` (``final``: its :func:`score`), both from the noise that row had in the first seed,
    labelled with their ground-truth scores."""
    pick = list(range(0, len(rows), max(1, len(rows) // n)))[:n]
    before = sample_videos(pipe, [rows[i]["prompt"] for i in pick], 0, FRAMES, STEPS, GUIDANCE, ids=pick)
    videos, results = [], []
    for k, i in enumerate(pick):
        videos += [before[k], final["_videos"][i]]
        results += [evaluate_video(before[k], rows[i]), final["_results"][i]]
    grid_gif(np.stack(videos), results, path, tags=["base", f"after {minutes:g} min"] * len(pick),
             legend=f"Each pair: the base model, then the same prompt and noise after {minutes:g} min of the "
                    f"{arm} arm ({ARM_TEXT[arm]}); ground-truth scores below each video.")


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
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every arm (a probe: needs --tag)")
    p.add_argument("--tag", default=None, help="keep this probe's runs and results apart under this name")
    p.add_argument("--cost-probe", type=int, default=None, metavar="N",
                   help="only time N updates of every arm in this one process, then rewrite the Markdown")
    args = p.parse_args(argv)
    if args.overrides and not args.tag:
        p.error("--set changes the arms' settings: name the probe with --tag so the benchmark's runs stay apart")
    global WORK, NAME
    if args.tag:
        WORK, NAME = WORK / args.tag, f"{NAME}_{args.tag}"
    prefix = f"{args.tag}_" if args.tag else ""  # of the arms' score caches (the base's is shared by probes)
    torch.set_num_threads(2)
    if args.cost_probe is not None:
        probe = cost_probe(args.cost_probe, args.config, args.model)
        if (RESULTS / f"{NAME}.json").is_file():
            (RESULTS / f"{NAME}.md").write_text(markdown(json.loads((RESULTS / f"{NAME}.json").read_text())))
        return probe
    from diffusers import AnimateDiffPipeline

    suite = load_suite("video_eval")
    final_rows, curve_rows = subset(suite, args.rows), subset(suite, args.curve_rows)
    pipe = AnimateDiffPipeline.from_pretrained(resolve_asset(args.model))
    pipe.set_progress_bar_config(disable=True)
    res: dict = {"model": args.model, "overrides": args.overrides, "minutes": args.minutes,
                 "rows": len(final_rows), "seeds": args.seeds,
                 "curve_rows": len(curve_rows), "base": {}, "arms": {}}
    res["base"] = {"curve": public(score(pipe, curve_rows, 1, "base")),  # one cache when the row sets agree
                   "final": base_from_t2v_benchmark(args.model, final_rows, args.seeds)
                   or public(score(pipe, final_rows, args.seeds, "base"))}
    marks = [m for m in args.checkpoints if m < args.minutes] + [args.minutes]
    spacing = marks[0]
    for arm in args.arms:
        arm_res: dict = {"curve": {}}
        for m in marks:
            train_to(arm, m, spacing, args.config, args.model, args.overrides)
            pipe.unload_lora_weights()
            pipe.load_lora_weights(str(WORK / arm / "lora"))
            if m < args.minutes:
                arm_res["curve"][f"{m:g}"] = public(score(pipe, curve_rows, 1, f"{prefix}{arm}_{m:g}"))
            else:
                final = score(pipe, final_rows, args.seeds, f"{prefix}{arm}_{m:g}")
                arm_res["final"] = public(final)
        pipe.unload_lora_weights()
        if not args.tag:
            before_after_gif(pipe, final_rows, final, args.minutes, arm, RESULTS / gif_name(arm))
        arm_res["cost"] = cost(arm)
        gain = arm_res["final"]["overall"]["per_frame"] - res["base"]["final"]["overall"]["per_frame"]
        arm_res["per_frame_gain"] = gain
        arm_res["gain_per_wall_minute"] = gain / args.minutes
        res["arms"][arm] = arm_res
        write(res)  # after every arm: a cut session keeps what is measured
    print(markdown(res))
    return res


def write(res: dict) -> None:
    """Write the results, keeping the arms of earlier invocations (``--arms`` runs a subset)."""
    RESULTS.mkdir(exist_ok=True)
    old = RESULTS / f"{NAME}.json"
    if old.is_file():
        prev = json.loads(old.read_text())
        if all(prev.get(k) == res[k] for k in ("rows", "seeds", "minutes", "overrides")):
            res["arms"] = {**{a: v for a, v in prev["arms"].items() if a not in res["arms"]}, **res["arms"]}
            res["arms"] = {a: res["arms"][a] for a in ARMS if a in res["arms"]}
    (RESULTS / f"{NAME}.json").write_text(json.dumps(res, indent=1))
    (RESULTS / f"{NAME}.md").write_text(markdown(res))


def markdown(res: dict) -> str:
    def fmt(x):
        return "–" if x is None else f"{x:.3f}"

    b = res["base"]["final"]["overall"]
    lines = [f"# InstructVideo on ShapesWorld video ({res['minutes']:g} min per arm, 2 cores)", "",
             f"{res['rows']} rows of the video evaluation suite × {res['seeds']} seeds; curves on "
             f"{res['curve_rows']} rows × 1 seed.", "",
             "| arm | per-frame score | Δ vs base | temporal consistency | consistent frame pairs | motion accuracy "
             "| s / update | updates | Δ per-frame / wall-minute |", "|---|---|---|---|---|---|---|---|---|",
             f"| base | {fmt(b['per_frame'])} | | {fmt(b['consistency'])} | {fmt(b['pair_consistency'])} "
             f"| {fmt(b['motion_accuracy'])} | | | |"]
    for arm, a in res["arms"].items():
        o = a["final"]["overall"]
        lines.append(f"| {arm} | {fmt(o['per_frame'])} | {a['per_frame_gain']:+.3f} | {fmt(o['consistency'])} | "
                     f"{fmt(o['pair_consistency'])} | {fmt(o['motion_accuracy'])} | {a['cost']['seconds_per_update']:.1f} | {a['cost']['updates']} "
                     f"| {a['gain_per_wall_minute']:+.4f} |")
    marks = sorted({float(m) for a in res["arms"].values() for m in a["curve"]})
    if marks:
        lines += ["", f"Per-frame score / consistent frame pairs on the {res['curve_rows']}-row subset by training time:", "",
                  "| arm | 0 min | " + " | ".join(f"{m:g} min" for m in marks) + " |",
                  "|---|---|" + "---|" * len(marks)]
        bc = res["base"]["curve"]["overall"]
        for arm, a in res["arms"].items():
            cells = [f"{a['curve'][f'{m:g}']['overall']['per_frame']:.3f} / "
                     f"{a['curve'][f'{m:g}']['overall']['pair_consistency']:.3f}" if f"{m:g}" in a["curve"] else "–"
                     for m in marks]
            lines.append(f"| {arm} | {bc['per_frame']:.3f} / {bc['pair_consistency']:.3f} | " + " | ".join(cells) + " |")
    probe = RESULTS / f"{NAME}_cost.json"
    if probe.is_file():
        c = json.loads(probe.read_text())
        lines += ["", f"Cost per update measured side by side in one process ({c['updates'] - 1} timed updates of each "
                  "arm), against what each arm's own run measured on its machine:", "",
                  "| arm | s / update, one process | relative to edit_dataset | updates in 60 min at that cost "
                  "| s / update in the arm's run | updates the arm's run made |", "|---|---|---|---|---|---|"]
        ref = c["arms"]["edit_dataset"]["seconds_per_update"]
        for arm, a in c["arms"].items():
            own = res["arms"].get(arm, {}).get("cost")
            lines.append(f"| {arm} | {a['seconds_per_update']:.1f} | {a['seconds_per_update'] / ref:.2f}× | "
                         f"{60 * res['minutes'] / a['seconds_per_update']:.0f} | "
                         + (f"{own['seconds_per_update']:.1f} | {own['updates']} |" if own else "– | – |"))
    lines += ["", "Per category (per-frame score):", "",
              "| arm | " + " | ".join(res["base"]["final"]["per_category"]) + " |",
              "|---|" + "---|" * len(res["base"]["final"]["per_category"])]
    for name, f in [("base", res["base"]["final"]), *((a, v["final"]) for a, v in res["arms"].items())]:
        lines.append(f"| {name} | " + " | ".join(f"{c['per_frame']:.3f}" for c in f["per_category"].values()) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
