"""ControlNet++ and Ctrl-U on ShapesWorld, judged on the exact segmentation read from the generated pixels.

    python benchmarks/ctrlu_shapes.py [--condition seg|edges] [--steps 600] [--eval 500]
        [--arms base diffusion_only controlnet_pp ctrlu_timestep ctrlu_noise] [--audit]

Arms at equal steps and seeds, each ``configs/controlnet_<condition>_shapes.yaml`` with its overrides (trained
in ``outputs/ctrlu_bench/<condition>/<arm>``, resumed when rerun): the ControlNet before fine-tuning
(``base``), the diffusion loss alone for the same steps, ControlNet++, Ctrl-U with the reference code's
same-noise passes and with the paper's two noises.

On ``--eval`` held-out conditions (scenes of a seed no training step draws), each arm's generations (DDIM 20
steps, guidance 3) are scored by

* seg: IoU per class (background included) and mean between the condition and the *pixel truth* of the
  generated image (:func:`mmreward.shapes.conditions.read_segmentation`; unrecognised objects left out), and
  with a second, independently trained segmenter; edges: the edge F1 (threshold 0.5, 1-pixel tolerance) of the
  pixel truth's boundaries and the SSIM of a second edge estimator's map, against the condition;
* image quality: the Fréchet distance of the embedded CLIP's image features against the ground-truth renders of
  the same scenes; the share of objects whose colour matches the caption, by the evaluator;
* for the uncertainty: how well ``U`` (both variants, on the base ControlNet's one-step estimates at
  ``t ≤ 400``) predicts the reward model's real per-pixel error against the pixel truth — AUROC with a
  bootstrap interval over images, and a reliability curve.

``--audit`` writes ``benchmarks/audit_ctrlu/`` grids of base generations beside their pixel truth, for checking
by eye. Writes ``benchmarks/results/ctrlu_shapes.{json,md}`` (both conditions), ``ctrlu_shapes_<condition>_grid.png``
and ``ctrlu_shapes_<condition>_reliability.png``; ``--rewrite`` writes these from the JSON without running anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from mmreward.assets import resolve_asset
from mmreward.images import GREY, labelled_grid
from mmreward.metrics import (
    auroc_interval,
    class_counts,
    class_iou,
    edge_counts,
    edge_f1,
    edge_f1_difference,
    edge_prf_from_counts,
    frechet_distance,
    miou_difference,
    reliability,
    ssim,
)
from mmreward.shapes.conditions import (
    IGNORE,
    SEG_CLASSES,
    boundaries,
    edge_map,
    palette_image,
    read_segmentation,
    segmentation,
)
from mmreward.shapes.data import sample_batch
from mmreward.shapes.evaluator import detect

RESULTS = Path(__file__).parent / "results"
PASSES = {"timestep": "same-noise passes at t, t + 1", "noise": "two noises"}  # how each U variant is estimated
#: per condition, the key of the paired differences in an arm's results and the function computing them
DIFFERENCES = {"seg": ("miou_difference", miou_difference), "edges": ("edge_f1_difference", edge_f1_difference)}
RESULTS_FILE = RESULTS / "ctrlu_shapes.json"  #: {condition: results}
AUDIT = Path(__file__).parent / "audit_ctrlu"
WORK = Path("outputs/ctrlu_bench")
EVAL_SEED = 20261202
ARMS = {
    "base": None,
    "diffusion_only": ["grad_scale=0.0"],
    "controlnet_pp": [],
    "ctrlu_timestep": ["uncertainty=timestep"],
    "ctrlu_noise": ["uncertainty=noise"],
}
EVAL_MODELS = {"seg": "assets/shapesworld-segformer-eval", "edges": "assets/shapesworld-edge-net-eval"}


def eval_set(n: int):
    """``n`` held-out scenes: ground-truth renders uint8 ``[n, H, W, 3]``, their metas and scenes."""
    images, metas, scenes = sample_batch(np.random.default_rng(EVAL_SEED), n, split="any", return_scenes=True)
    renders = (images * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return renders, metas, scenes


def train_arm(condition: str, arm: str, steps: int) -> Path:
    """The arm's ControlNet folder (trained to ``steps`` first, resuming a cut run)."""
    from diffusion_align.train import main as train

    if ARMS[arm] is None:
        return Path(resolve_asset(f"assets/shapesworld-controlnet-{condition}"))
    out = WORK / condition / arm
    if not (out / "controlnet").is_dir() or _steps_done(out) < steps:
        args = ["--config", f"configs/controlnet_{condition}_shapes.yaml", "--set", f"output_dir={out}",
                "--set", f"total_steps={steps}", "--no-progress"]
        for s in ARMS[arm]:
            args += ["--set", s]
        train(args + (["--resume"] if (out / "checkpoint").is_dir() else []))
    return out / "controlnet"


def _steps_done(out: Path) -> int:
    rows = out / "metrics.jsonl"
    return len(rows.read_text().splitlines()) if rows.is_file() else 0


def generate(teacher: str, controlnet: Path, conds: torch.Tensor, prompts: list[str], cache: Path,
             batch: int = 25) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` generations (cached in ``cache``)."""
    if cache.is_file():
        return np.load(cache)["images"]
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        resolve_asset(teacher), controlnet=ControlNetModel.from_pretrained(controlnet), safety_checker=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    out = []
    for b in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(EVAL_SEED + b + j) for j in range(len(prompts[b:b + batch]))]
        img = pipe(prompts[b:b + batch], image=conds[b:b + batch], num_inference_steps=20, guidance_scale=3.0,
                   height=64, width=64, output_type="pt", generator=gens).images
        out.append((img.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy())
    images = np.concatenate(out)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, images=images)
    return images


def colour_share(images: np.ndarray, scenes) -> float:
    """Share of the scenes' objects for which the evaluator finds an object at its place (box centre inside
    the object's box) in the caption's colour."""
    hit = total = 0
    for img, sc in zip(images, scenes, strict=True):
        dets = detect(img)
        for o in sc.objects:
            total += 1
            x0, y0, x1, y1 = o.box
            hit += any(d.color == o.color and x0 <= (d.box[0] + d.box[2]) / 2 <= x1 and y0 <= (d.box[1] + d.box[3]) / 2 <= y1
                       for d in dets)
    return hit / max(total, 1)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def reward_model_of(condition: str) -> str:
    """The reward model the arms of ``condition`` train with (their config's ``reward_model``)."""
    from diffusion_align.controlnet_reward import ControlNetRewardConfig

    return ControlNetRewardConfig.from_cli(f"configs/controlnet_{condition}_shapes.yaml", []).reward_model


@torch.no_grad()
def score(condition: str, images: np.ndarray, renders: np.ndarray, scenes, clip) -> dict:
    """The arm's scores, and ``_counts``, its per-condition counts against the condition (for the paired
    intervals; not written to the JSON): seg the pixel truth's intersections and unions ``[N, C, 2]``, edges the
    pixel truth's boundary counts ``[N, 4]``."""
    from mmreward.dense_rewards import EdgeReward, SegmentationReward

    truth = np.stack([read_segmentation(im) for im in images])
    trained_with = reward_model_of(condition)
    res: dict = {}
    if condition == "seg":
        target = np.stack([segmentation(s) for s in scenes])
        iou = class_iou(truth, target, len(SEG_CLASSES))
        preds = {}
        for name, folder in (("reward_model", trained_with), ("second_segmenter", EVAL_MODELS["seg"])):
            model = SegmentationReward.from_pretrained(folder)
            preds[name] = torch.cat([model.logits(to_tensor(images[b:b + 50])).argmax(1)
                                     for b in range(0, len(images), 50)]).numpy()
        iou2 = class_iou(preds["second_segmenter"], target, len(SEG_CLASSES))
        keep = truth != IGNORE
        res["_counts"] = class_counts(truth, target, len(SEG_CLASSES))
        res.update(miou=float(np.nanmean(iou)), iou=dict(zip(SEG_CLASSES, iou.tolist(), strict=True)),
                   miou_second_segmenter=float(np.nanmean(iou2)),
                   iou_second_segmenter=dict(zip(SEG_CLASSES, iou2.tolist(), strict=True)),
                   ignored_pixels=float(1 - keep.mean()),
                   # the segmenters on these generations, against what their pixels show
                   pixel_accuracy_vs_pixel_truth={k: float((v == truth)[keep].mean()) for k, v in preds.items()},
                   miou_vs_pixel_truth={k: float(np.nanmean(class_iou(v, truth, len(SEG_CLASSES)))) for k, v in preds.items()})
    else:
        target = np.stack([edge_map(s) for s in scenes])
        edges_truth = np.stack([boundaries(t) for t in truth])
        res["_counts"] = edge_counts(edges_truth, target)
        res.update(edge_f1_pixel_truth=edge_prf_from_counts(res["_counts"]))
        preds = {}
        for name, folder in (("reward_model", trained_with), ("second_estimator", EVAL_MODELS["edges"])):
            model = EdgeReward.from_pretrained(folder)
            preds[name] = torch.cat([model.predict(to_tensor(images[b:b + 50])) for b in range(0, len(images), 50)])
        pred = preds["second_estimator"]
        res.update(edge_f1_second_estimator=edge_f1(pred.numpy(), target),
                   ssim=float(ssim(pred, torch.from_numpy(target)).mean()),
                   edge_f1_vs_pixel_truth={k: edge_f1(v.numpy(), edges_truth)["f1"] for k, v in preds.items()})
    feats = [torch.cat([clip.embed_images(to_tensor(x[b:b + 50])) for b in range(0, len(x), 50)]).numpy()
             for x in (images, renders)]
    res.update(clip_frechet=frechet_distance(*feats), colour_share=colour_share(images, scenes))
    return res


@torch.no_grad()
def uncertainty_study(condition: str, renders: np.ndarray, metas, scenes, n: int = 200, seed: int = 0) -> dict:
    """AUROC of U for the reward model's per-pixel error against the pixel truth of the decoded one-step
    estimates of the base ControlNet (t ~ U[0, 400]), for the same-noise and two-noise passes."""
    from diffusion_align.controlnet_reward import ControlNetRewardConfig, ControlNetRewardTrainer, x0_estimate
    from diffusion_align.embedded.train_shapes_controlnet import condition_images
    from diffusion_align.embedded.train_shapes_t2i import encode_prompts
    from diffusion_align.pipelines import encode_images
    from mmreward.uncertainty import regression_uncertainty, segmentation_uncertainty

    cfg = ControlNetRewardConfig.from_cli(f"configs/controlnet_{condition}_shapes.yaml",
                                          [f"output_dir={WORK / condition / '_uncertainty'}", "uncertainty=timestep"])
    tr = ControlNetRewardTrainer(cfg, progress=False, overwrite=True)
    tr.controlnet.eval()
    rng = np.random.default_rng(seed)
    out = {}
    for mode in ("timestep", "noise"):
        scores, errors = [], []
        for b in range(0, n, 10):
            sl = slice(b, min(b + 10, n))
            imgs = to_tensor(renders[sl])
            z0 = encode_images(tr.vae, imgs)
            emb = encode_prompts(tr.tokenizer, tr.text_encoder, [m["prompt"] for m in metas[sl]])
            cond = condition_images(scenes[sl], condition)
            t = torch.from_numpy(rng.integers(0, 401, len(z0)))
            noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed + b))
            t2, noise2 = ((t + 1).clamp(max=999), noise) if mode == "timestep" else \
                (t, torch.randn(z0.shape, generator=torch.Generator().manual_seed(10**6 + seed + b)))
            readings, decoded = [], []
            for tt, nn_ in ((t, noise), (t2, noise2)):
                x_t = tr.sched.add_noise(z0, nn_, tt)
                x0 = x0_estimate(tr.sched, tr.predict(x_t, tt, emb, cond), x_t, tt)
                image = tr.adapter.decode(x0)
                decoded.append(image)
                readings.append(tr.read(image))
            if condition == "seg":
                u = segmentation_uncertainty(readings[0], readings[1], 1.0)
            else:
                u = regression_uncertainty(readings[0], readings[1], 1.0)
            for k in range(len(z0)):
                img = (decoded[0][k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                truth = read_segmentation(img)
                if condition == "seg":
                    keep = truth != IGNORE
                    err = (readings[0][k].argmax(0).numpy() != truth)[keep]
                else:
                    keep = np.ones(truth.shape, bool)
                    err = (np.abs(readings[0][k].numpy() - boundaries(truth)) > 0.5)[keep]
                scores.append(u[k].numpy()[keep])
                errors.append(err)
        out[mode] = {**auroc_interval(scores, errors), "error_rate": float(np.mean(np.concatenate(errors))),
                     "reliability": reliability(np.concatenate(scores), np.concatenate(errors), bins=10)}
    return out


def write_audit(images: np.ndarray, scenes, metas, n: int = 120, per_grid: int = 12) -> None:
    """Grids of generations beside their pixel-truth segmentation (and the condition), for an audit by eye."""
    from PIL import Image

    AUDIT.mkdir(parents=True, exist_ok=True)
    for g in range(0, n, per_grid):
        cells = []
        for i in range(g, min(g + per_grid, n)):
            truth = read_segmentation(images[i])
            big = lambda a: Image.fromarray(a).resize((128, 128), Image.NEAREST)  # noqa: E731
            row = np.concatenate([images[i], palette_image(truth), palette_image(segmentation(scenes[i]))], axis=1)
            cells.append((big(row).resize((384, 128), Image.NEAREST), f"#{i} {metas[i]['prompt'].removeprefix('a photo of ')}",
                          [("generated | pixel truth | condition", GREY)]))
        labelled_grid(cells, 3, size=384).save(AUDIT / f"audit_{g // per_grid:02d}.png")  # 128 px per panel
    if (AUDIT / "README.md").is_file():  # it holds the verdicts
        return
    (AUDIT / "README.md").write_text(
        "# Audit of the pixel-truth segmentation on generated images\n\n"
        "Each cell: a generation of the base ControlNet, the segmentation read from its pixels "
        "(`read_segmentation`: black background, one colour per shape class, white = unrecognised, left out), "
        "and the condition it was generated from. The audit checks the middle panel against what the left one "
        "shows; its verdicts are in `audit.json`.\n")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--condition", choices=("seg", "edges"), default="seg")
    p.add_argument("--steps", type=int, default=600, help="fine-tuning steps of every arm")
    p.add_argument("--eval", type=int, default=500, help="held-out conditions")
    p.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--uncertainty-images", type=int, default=200)
    p.add_argument("--audit", action="store_true", help="write the audit grids of base generations and stop")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rewrite", action="store_true", help="rewrite the Markdown and charts from the JSON and stop")
    args = p.parse_args(argv)
    if args.rewrite:
        write(json.loads(RESULTS_FILE.read_text())[args.condition])
        return {"rewritten": str(RESULTS_FILE.with_suffix(".md"))}
    torch.set_num_threads(args.threads)
    from diffusion_align.embedded.train_shapes_controlnet import condition_images
    from mmreward.backbones import load_open_clip

    renders, metas, scenes = eval_set(args.eval)
    conds = condition_images(scenes, args.condition)
    prompts = [m["prompt"] for m in metas]
    teacher = "assets/shapesworld-t2i-teacher"
    res = json.loads(RESULTS_FILE.read_text()).get(args.condition, {}) if RESULTS_FILE.is_file() else {}
    res.update(condition=args.condition, steps=args.steps, eval=args.eval, arms=res.get("arms", {}))
    if args.audit:
        base = generate(teacher, train_arm(args.condition, "base", args.steps), conds, prompts,
                        WORK / args.condition / "images" / f"base_{args.eval}.npz")
        write_audit(base, scenes, metas)
        return {"audit": str(AUDIT)}
    clip = load_open_clip("assets/shapesworld-clip").freeze()
    shown, counts = {}, {}
    for arm in args.arms:
        cn = train_arm(args.condition, arm, args.steps)
        images = generate(teacher, cn, conds, prompts, WORK / args.condition / "images" / f"{arm}_{args.eval}.npz")
        res["arms"][arm] = score(args.condition, images, renders, scenes, clip)
        if "_counts" in res["arms"][arm]:
            counts[arm] = res["arms"][arm].pop("_counts")
        if arm != "base":
            res["arms"][arm]["cost"] = _cost(WORK / args.condition / arm)
        shown[arm] = images[:8]
        write(res)
    # paired intervals over the conditions: each arm against the base, the diffusion-loss-only arm and ControlNet++
    key, difference = DIFFERENCES[args.condition]
    for arm in counts:
        res["arms"][arm][key] = {ref: difference(counts[arm], counts[ref])
                                 for ref in ("base", "diffusion_only", "controlnet_pp") if ref in counts and ref != arm}
    write(res)
    if "uncertainty" not in res:
        res["uncertainty"] = uncertainty_study(args.condition, renders, metas, scenes, args.uncertainty_images)
        write(res)
    grid(shown, renders[:8], conds[:8], prompts[:8], RESULTS / f"ctrlu_shapes_{args.condition}_grid.png")
    print(markdown(res))
    return res


def _cost(out: Path) -> dict:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {"steps": len(rows), "seconds_per_step": float(np.mean([r["step_s"] for r in rows])),
            "mean_uncertainty_last_100": float(np.mean([r["uncertainty"] for r in rows[-100:]])),
            "minutes": rows[-1]["elapsed_s"] / 60}


def grid(shown: dict, renders, conds, prompts, path: Path) -> None:
    from PIL import Image

    cells = []
    for i in range(len(prompts)):
        cond = (conds[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        cells.append((Image.fromarray(cond), prompts[i].removeprefix("a photo of "), [("condition", GREY)]))
        cells.append((Image.fromarray(renders[i]), "", [("ground truth", GREY)]))
        for arm, imgs in shown.items():
            cells.append((Image.fromarray(imgs[i]), "", [(arm, GREY)]))
    labelled_grid(cells, 2 + len(shown)).save(path)


def write(res: dict) -> None:
    """Update this condition's part of ``ctrlu_shapes.json`` (the other condition's results are kept) and the
    Markdown of both."""
    RESULTS.mkdir(exist_ok=True)
    both = json.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.is_file() else {}
    both[res["condition"]] = res
    RESULTS_FILE.write_text(json.dumps(both, indent=1))
    RESULTS_FILE.with_suffix(".md").write_text("\n".join(markdown(both[c]) for c in ("seg", "edges") if c in both))
    for c in ("seg", "edges"):
        if "uncertainty" in both.get(c, {}):
            reliability_chart(both[c])


def reliability_chart(res: dict) -> Path:
    """``ctrlu_shapes_<condition>_reliability.png``: the reward model's per-pixel error rate in each decile of
    U, for both variants (log scale)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from charts import line_chart

    path = RESULTS / f"ctrlu_shapes_{res['condition']}_reliability.png"
    series = {f"U from {PASSES[mode]} (AUROC {u['auroc']:.3f})": [(i + 1, max(b["rate"], 1e-6))
                                                                  for i, b in enumerate(u["reliability"])]
              for mode, u in res["uncertainty"].items()}
    line_chart(series, "decile of U (1 = lowest)", "reward model's per-pixel error rate", path, logy=True)
    return path


def cost_cells(a: dict) -> str:
    """The s / step and mean-U (last 100 steps) cells of an arm (empty for the base)."""
    c = a.get("cost")
    if not c:
        return " | "
    return f"{c['seconds_per_step']:.2f} | " + (f"{c['mean_uncertainty_last_100']:.2g}" if "mean_uncertainty_last_100" in c else "")


def markdown(res: dict) -> str:
    seg = res["condition"] == "seg"
    lines = [f"# ControlNet++ and Ctrl-U on ShapesWorld ({res['condition']} condition)", "",
             f"{res['eval']} held-out conditions; every fine-tuned arm {res['steps']} steps from the same ControlNet.", ""]
    if seg:
        lines += ["| arm | mIoU (pixel truth) | mIoU (second segmenter) | " + " | ".join(f"IoU {c}" for c in SEG_CLASSES)
                  + " | CLIP Fréchet ↓ | colour share | s / step | mean U |", "|---" * (7 + len(SEG_CLASSES)) + "|"]
        for arm, a in res["arms"].items():
            lines.append(f"| {arm} | {a['miou']:.3f} | {a['miou_second_segmenter']:.3f} | "
                         + " | ".join(f"{a['iou'][c]:.3f}" for c in SEG_CLASSES)
                         + f" | {a['clip_frechet']:.4f} | {a['colour_share']:.3f} | "
                         + cost_cells(a) + " |")
    else:
        lines += ["| arm | edge F1 (pixel truth) | edge F1 (second estimator) | SSIM | CLIP Fréchet ↓ | colour share "
                  "| s / step | mean U |", "|---|---|---|---|---|---|---|---|"]
        for arm, a in res["arms"].items():
            lines.append(f"| {arm} | {a['edge_f1_pixel_truth']['f1']:.3f} | {a['edge_f1_second_estimator']['f1']:.3f} | "
                         f"{a['ssim']:.3f} | {a['clip_frechet']:.4f} | {a['colour_share']:.3f} | "
                         + cost_cells(a) + " |")
    judged = {arm: a for arm, a in res["arms"].items() if "pixel_accuracy_vs_pixel_truth" in a or "edge_f1_vs_pixel_truth" in a}
    if judged:
        lines += ["", "The reward model the arms train with, and the second model, on each arm's generations against "
                  "what their pixels show (the pixel truth; unrecognised objects left out):", ""]
        if seg:
            lines += ["| arm | reward model: pixel accuracy | mIoU | second segmenter: pixel accuracy | mIoU | ignored pixels |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {arm} | {a['pixel_accuracy_vs_pixel_truth']['reward_model']:.3f} | "
                      f"{a['miou_vs_pixel_truth']['reward_model']:.3f} | "
                      f"{a['pixel_accuracy_vs_pixel_truth']['second_segmenter']:.3f} | "
                      f"{a['miou_vs_pixel_truth']['second_segmenter']:.3f} | {a['ignored_pixels']:.4f} |"
                      for arm, a in judged.items()]
        else:
            lines += ["| arm | reward model: edge F1 | second estimator: edge F1 |", "|---|---|---|"]
            lines += [f"| {arm} | {a['edge_f1_vs_pixel_truth']['reward_model']:.3f} | "
                      f"{a['edge_f1_vs_pixel_truth']['second_estimator']:.3f} |" for arm, a in judged.items()]
    key = DIFFERENCES[res["condition"]][0]
    diffs = {arm: a[key] for arm, a in res["arms"].items() if a.get(key)}
    if diffs:
        refs = [r for r in ("base", "diffusion_only", "controlnet_pp") if any(r in d for d in diffs.values())]
        lines += ["", f"{'mIoU' if seg else 'Edge F1'} (pixel truth) of each arm minus that of another, with a 95% "
                  "paired bootstrap interval over "
                  "the conditions:", "", "| arm | " + " | ".join(f"− {r}" for r in refs) + " |", "|---" * (1 + len(refs)) + "|"]
        for arm, d in diffs.items():
            lines.append(f"| {arm} | " + " | ".join(
                f"{d[r]['difference']:+.3f} ({d[r]['low']:+.3f} to {d[r]['high']:+.3f})" if r in d else ""
                for r in refs) + " |")
    if "uncertainty" in res:
        lines += ["", "How well U predicts the reward model's per-pixel error (pixel truth of the decoded one-step "
                  "estimates, base ControlNet, t ≤ 400):", "", "| passes | AUROC | 95% interval | error rate |",
                  "|---|---|---|---|"]
        for mode, u in res["uncertainty"].items():
            lines.append(f"| {mode} | {u['auroc']:.3f} | {u['low']:.3f}–{u['high']:.3f} | {u['error_rate']:.3f} |")
        modes = list(res["uncertainty"])
        lines += ["", "Reliability: the reward model's per-pixel error rate in each tenth of the pixels ordered by U "
                  f"(![chart](ctrlu_shapes_{res['condition']}_reliability.png)):", "",
                  "| decile of U | " + " | ".join(f"{m}: U range | {m}: error rate" for m in modes) + " |",
                  "|---" * (1 + 2 * len(modes)) + "|"]
        for i in range(max(len(res["uncertainty"][m]["reliability"]) for m in modes)):
            cells = []
            for m in modes:
                b = res["uncertainty"][m]["reliability"][i]
                cells.append(f"{b['score_low']:.2g} to {b['score_high']:.2g} | {b['rate']:.5f}")
            lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
