"""Where InstructVideo's training signal comes from on the ShapesWorld video world, judged on ground truth.

    python benchmarks/instructvideo_signal.py [--videos 32] [--model assets/shapesworld-t2v]

For training prompts of the video world (no motion phrases), the base model's

- **edits** of ground-truth videos (the reference's ``source: dataset``: noised to the first of the last
  ``τ·D`` = 12 of 20 DDIM steps, then denoised), and its **fresh samples** (``source: sample``), are scored by
  the evaluator (per-frame score) and by the training reward (the embedded CLIP's frame score): how much there
  is to fix in what the reward is trained on;
- **last step**: the video before and after the final DDIM step (t = 1, the only one the reference's
  ``backprop_steps: 1`` sends gradients through): the mean pixel change, and the share of frames whose
  evaluator verdict it flips -- what the reward's gradient can change directly;
- **reward discrimination**: the AUROC of the CLIP frame score for frames the evaluator judges right against
  wrong (fresh samples, pooled): whether the reward can tell the difference the benchmark measures.

Writes ``benchmarks/results/instructvideo_signal.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

RESULTS = Path(__file__).parent / "results"


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """``[B,F,3,H,W]`` in [0, 1] -> uint8 ``[B,F,H,W,3]``."""
    return (video.clamp(0, 1) * 255).round().byte().permute(0, 1, 3, 4, 2).cpu().numpy()


def main(argv: list[str] | None = None) -> dict:
    from diffusion_align.ddim_logprob import ddim_step_deterministic
    from diffusion_align.embedded.train_shapes_t2v import encode_videos
    from diffusion_align.instructvideo import InstructVideoConfig, edit_steps
    from diffusion_align.pipelines import make_adapter
    from diffusion_align.rollout import ddim_scheduler
    from diffusion_align.sampling import load_pipeline
    from mmreward.assets import resolve_asset
    from mmreward.metrics import auroc
    from mmreward.shapes.video import content_meta, evaluate_video, sample_video, sample_video_meta
    from mmreward.video_reward import load_video_reward

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--model", default="assets/shapesworld-t2v")
    p.add_argument("--reward", default="clip:assets/shapesworld-clip")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    adapter = make_adapter(load_pipeline(str(resolve_asset(args.model)), "cpu"))
    adapter.frames = 8
    cfg = InstructVideoConfig()  # the reference's D = 20, tau = 0.6
    sched = ddim_scheduler(adapter, cfg.ddim_steps)
    edit = edit_steps(sched.timesteps, cfg)  # [551, ..., 1]
    reward = load_video_reward(args.reward, sampling="all", lambda_tar=0.0)
    rng, gen = np.random.default_rng(args.seed), torch.Generator().manual_seed(args.seed)

    def run(x, steps, cond, uncond):
        """Denoise through ``steps``; returns the latents before the last step and after it."""
        for t in steps[:-1]:
            x = ddim_step_deterministic(sched, adapter.denoise(x, t, cond, uncond, 3.0), t, x)
        t = steps[-1]
        return x, ddim_step_deterministic(sched, adapter.denoise(x, t, cond, uncond, 3.0), t, x)

    rows = []
    for _ in tqdm(range(0, args.videos, args.batch), desc="signal"):
        metas = [sample_video_meta(rng, "train", 0.0) for _ in range(args.batch)]
        prompts = [content_meta(m)["prompt"] for m in metas]
        with torch.no_grad():
            cond, uncond = adapter.encode(prompts, guidance=True)
            gt = np.stack([sample_video(m, rng, 8, allow_held_out=False) for m in metas])
            z0 = encode_videos(adapter.pipe.vae, gt)
            noisy = sched.add_noise(z0, torch.randn(z0.shape, generator=gen), edit[:1].expand(len(metas)))
            pre_edit, post_edit = run(noisy, edit, cond, uncond)
            _, sample = run(torch.randn(adapter.latent_shape(len(metas)), generator=gen), sched.timesteps, cond, uncond)
            videos = {"ground truth": gt, "edit": to_uint8(adapter.decode(post_edit)),
                      "before last step": to_uint8(adapter.decode(pre_edit)), "sample": to_uint8(adapter.decode(sample))}
            clip = {k: reward.evaluate(torch.from_numpy(v).permute(0, 1, 4, 2, 3).float() / 255, prompts).scores.numpy()
                    for k, v in videos.items()}
        for j, m in enumerate(metas):
            row = {"prompt": m["prompt"]}
            for k, v in videos.items():
                ev = evaluate_video(v[j], m)
                row[k] = {"per_frame": ev["per_frame"], "frames_correct": ev["frames_correct"],
                          "clip": clip[k][j].tolist()}
            row["last_step_pixel_change"] = float(np.abs(videos["edit"][j].astype(float)
                                                         - videos["before last step"][j]).mean() / 255)
            rows.append(row)

    def mean(key, field):
        return float(np.mean([np.mean(r[key][field]) for r in rows]))

    flips = [a != b for r in rows for a, b in zip(r["before last step"]["frames_correct"], r["edit"]["frames_correct"],
                                                  strict=True)]
    right = np.array([c for r in rows for c in r["sample"]["frames_correct"]])
    scores = np.array([s for r in rows for s in r["sample"]["clip"]])
    res = {"model": args.model, "reward": args.reward, "videos": len(rows),
           "per_source": {k: {"per_frame": mean(k, "per_frame"), "clip": mean(k, "clip")}
                          for k in ("ground truth", "edit", "sample")},
           "last_step": {"pixel_change": float(np.mean([r["last_step_pixel_change"] for r in rows])),
                         "verdict_flips": float(np.mean(flips))},
           "reward_auroc_on_samples": auroc(scores, right), "sample_frames_right": float(right.mean()),
           "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "instructvideo_signal.json").write_text(json.dumps(res, indent=1))
    (RESULTS / "instructvideo_signal.md").write_text(markdown(res))
    print(markdown(res))
    return res


def markdown(res: dict) -> str:
    lines = [f"# InstructVideo's training signal on ShapesWorld video ({res['videos']} training prompts)", "",
             "| video | per-frame score (evaluator) | CLIP frame score (the training reward) |", "|---|---|---|"]
    lines += [f"| {k} | {v['per_frame']:.3f} | {v['clip']:.4f} |" for k, v in res["per_source"].items()]
    ls = res["last_step"]
    lines += ["", f"The last DDIM step (t = 1) of the edits changes pixels by {ls['pixel_change']:.4f} on average "
                  f"(of 1) and flips the evaluator's verdict on {ls['verdict_flips']:.3f} of the frames.", "",
              f"The CLIP frame score separates the frames of fresh samples the evaluator judges right "
              f"({res['sample_frames_right']:.3f} of them) from the wrong ones with AUROC "
              f"{res['reward_auroc_on_samples']:.3f}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
