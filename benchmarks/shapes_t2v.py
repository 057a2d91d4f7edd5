"""The embedded ShapesWorld text-to-video model on the video evaluation suite: per-frame score, temporal
consistency and motion accuracy (``mmreward.shapes.video``), per category, with an animated grid of samples.

    python benchmarks/shapes_t2v.py [--model assets/shapesworld-t2v] [--limit 216] [--seeds 2] [--steps 20]

Writes ``benchmarks/results/shapes_t2v.json`` and ``.md`` and ``shapes_t2v_samples.gif`` (each cell labelled with
its prompt and three scores). Ground-truth videos of the same rows score 1 on all three (checked in the tests).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mmreward.assets import resolve_asset
from mmreward.images import GREEN, GREY, RED, labelled_grid
from mmreward.shapes.prompts import CATEGORIES
from mmreward.shapes.suites import load_suite
from mmreward.shapes.video import evaluate_video

RESULTS = Path(__file__).parent / "results"


def sample_videos(pipe, prompts: list[str], seed: int, frames: int, steps: int, guidance: float,
                  batch: int = 8, ids: list[int] | None = None) -> np.ndarray:
    """uint8 ``[N, F, H, W, 3]``: one video per prompt, ``batch`` prompts per pipeline call.

    Prompt ``i``'s noise comes from its own generator (seeded ``seed * 100000 + ids[i]``, ``ids`` by default
    ``0 … N-1``), so a video does not depend on the batch it was sampled in (up to float rounding), and
    ``ids`` resamples chosen rows of a longer list with the noise they had there.
    """
    ids = list(range(len(prompts))) if ids is None else ids
    if len(ids) != len(prompts):
        raise ValueError(f"{len(ids)} ids for {len(prompts)} prompts")
    out = []
    for b in range(0, len(prompts), batch):
        chunk = prompts[b:b + batch]
        gens = [torch.Generator().manual_seed(seed * 100_000 + i) for i in ids[b:b + batch]]
        v = pipe(chunk, num_frames=frames, num_inference_steps=steps, guidance_scale=guidance, height=64, width=64,
                 output_type="pt", generator=gens).frames  # [n, F, 3, H, W] in [0, 1]
        out.append((v.clamp(0, 1) * 255).round().byte().permute(0, 1, 3, 4, 2).numpy())
    return np.concatenate(out)


def summarize(rows: list[dict]) -> dict:
    def stats(rs):
        moving = [r["motion"] for r in rs if r["motion"] is not None]
        return {"per_frame": float(np.mean([r["per_frame"] for r in rs])),
                "consistency": float(np.mean([r["consistent"] for r in rs])),
                "pair_consistency": float(np.mean([r["pair_consistency"] for r in rs])),
                "motion_accuracy": float(np.mean(moving)) if moving else None, "n": len(rs), "n_motion": len(moving)}

    return {"overall": stats(rows), "per_category": {c: stats([r for r in rows if r["tag"] == c])
                                                      for c in CATEGORIES if any(r["tag"] == c for r in rows)},
            "held_out": stats([r for r in rows if r["held_out"]]) if any(r["held_out"] for r in rows) else None}


def markdown(res: dict) -> str:
    def fmt(x):
        return "–" if x is None else f"{x:.3f}"

    lines = [f"# ShapesWorld text-to-video: {res['model']}", "",
             f"{res['rows']} rows of the video evaluation suite × {res['seeds']} seeds, {res['steps']} DDIM steps, "
             f"guidance {res['guidance']}, {res['frames']} frames; {res['seconds_per_video']:.1f} s per video.", "",
             "| category | per-frame score | temporal consistency | consistent frame pairs | motion accuracy | videos |",
             "|---|---|---|---|---|---|"]
    for name, s in [("overall", res["overall"]), *res["per_category"].items(), ("held-out compositions", res["held_out"])]:
        if s:
            lines.append(f"| {name} | {fmt(s['per_frame'])} | {fmt(s['consistency'])} | {fmt(s['pair_consistency'])} "
                         f"| {fmt(s['motion_accuracy'])} "
                         f"| {s['n']} |")
    lines += ["", "Temporal consistency is 1 for a video whose every consecutive frame pair shows the same recognised "
              "objects with no jump; consistent frame pairs is the share of pairs that do. Motion accuracy is over the rows with a motion phrase (four directions: chance is about 0.25 "
              "for a model that moves objects in random directions, 0 for one that keeps them still)."]
    return "\n".join(lines) + "\n"


def grid_gif(videos: np.ndarray, results: list[dict], path: Path, cols: int = 4, tags: list[str] | None = None,
             legend: str = "") -> None:
    """An animated grid: frame t of every video, each cell labelled with its prompt and scores (and its entry
    of ``tags``, such as the model that made it, as the first note)."""
    import imageio.v3 as iio
    from PIL import Image

    frames = []
    for t in range(videos.shape[1]):
        cells = []
        for v, r in zip(videos, results, strict=True):
            notes = [(f"per-frame {r['per_frame']:.2f}", GREEN if r["per_frame"] == 1 else RED),
                     ("consistent" if r["consistent"] else "inconsistent", GREEN if r["consistent"] else RED)]
            if r["motion"] is not None:
                notes.append(("moves as prompted" if r["motion"] else "wrong motion", GREEN if r["motion"] else RED))
            notes.append((f"frame {t}", GREY))
            if tags is not None:
                notes.insert(0, (tags[len(cells)], GREY))
            cells.append((Image.fromarray(v[t]), r["prompt"].removeprefix("a photo of "), notes))
        frames.append(np.asarray(labelled_grid(cells, cols, legend)))
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.stack(frames), extension=".gif", duration=250, loop=0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="assets/shapesworld-t2v", help="an AnimateDiff pipeline folder")
    p.add_argument("--limit", type=int, default=None, help="N rows spread evenly over the suite (default all 216)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--name", default="shapes_t2v", help="results file stem in benchmarks/results/")
    p.add_argument("--batch", type=int, default=8, help="prompts per pipeline call")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffusers import AnimateDiffPipeline

    pipe = AnimateDiffPipeline.from_pretrained(resolve_asset(args.model))
    pipe.set_progress_bar_config(disable=True)
    suite = load_suite("video_eval")
    rows = suite if args.limit is None else suite[:: max(1, len(suite) // args.limit)][: args.limit]  # every category
    start, results, shown = time.time(), [], None
    for seed in range(args.seeds):
        videos = sample_videos(pipe, [r["prompt"] for r in rows], seed, args.frames, args.steps, args.guidance,
                               args.batch)
        for r, v in zip(rows, videos, strict=True):
            results.append({**evaluate_video(v, r), "held_out": r["held_out"], "seed": seed})
        if seed == 0:
            shown = videos
    res = {"model": args.model, "rows": len(rows), "seeds": args.seeds, "steps": args.steps, "guidance": args.guidance,
           "frames": args.frames, "seconds_per_video": (time.time() - start) / len(results), **summarize(results),
           "videos": [{k: r[k] for k in ("prompt", "tag", "held_out", "seed", "per_frame", "consistent", "pair_consistency",
                                      "motion", "reason")} for r in results]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(res, indent=1))
    (RESULTS / f"{args.name}.md").write_text(markdown(res))
    pick = list(range(0, len(rows), max(1, len(rows) // 12)))[:12]
    grid_gif(shown[pick], [results[i] for i in pick], RESULTS / f"{args.name}_samples.gif")
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
