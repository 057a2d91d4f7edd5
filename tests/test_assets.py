"""The embedded defaults under assets/ load through the public loaders and do their job."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmreward import load_reward
from mmreward.shapes import CATEGORIES, load_suite
from mmreward.shapes.__main__ import main as shapes_cli
from mmreward.shapes.clip_eval import hard_negative_accuracy, hard_negative_items

ROOT = Path(__file__).resolve().parents[1]
CLIP_DIR = ROOT / "assets" / "shapesworld-clip"


@pytest.mark.slow
def test_shapesworld_clip_loads_by_spec_and_ranks_true_captions_first():
    reward = load_reward(f"clip:{CLIP_DIR}")
    assert reward.backbone.preprocess.size == 64
    suite = load_suite("eval")
    metas = [m for tag in CATEGORIES for m in [x for x in suite if x["tag"] == tag][:20]]
    result = hard_negative_accuracy(reward.backbone, hard_negative_items(metas, seed=4242))
    assert result["overall"] >= 0.85, result
    # gradients flow through the embedded reward (it is used as a differentiable objective)
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    reward(x, ["a photo of a red circle", "a photo of two squares"]).sum().backward()
    assert x.grad.abs().sum() > 0


@pytest.mark.slow
def test_shapesworld_judge_loads_as_a_vlm_and_reads_renders():
    """The embedded LLaVA-layout judge loads by spec like a hub VLM. On fresh renders of evaluation-suite prompts
    its ``yes`` readout ranks the true prompt above the hard negatives where it reads (one and two objects;
    it is weaker than the CLIP: 0.600 against 0.967 over all categories of training compositions), its
    image-pair readout picks the prompt's scene over a hard negative's, it picks the right answer of count and
    absent-object questions about held-out scenes, and gradients reach the pixels."""
    from mmreward.shapes import render
    from mmreward.shapes.data import to_tensor
    from mmreward.shapes.prompts import hard_negative_scenes
    from mmreward.shapes.qa import sample_item

    folder = ROOT / "assets" / "shapesworld-judge"
    judge = load_reward(f"vlm:{folder}")
    assert judge.template.readout == "yes" and judge.model.dtype == torch.float32  # fp16 on disk
    suite = load_suite("eval")
    metas = [m for tag in CATEGORIES for m in [x for x in suite if x["tag"] == tag][:10]]
    hits = {}
    with torch.no_grad():
        for img, meta, caps in hard_negative_items(metas, seed=4242):
            s = judge(to_tensor(np.stack([img] * len(caps))), caps)
            hits.setdefault(meta["tag"], []).append(bool(s[0] > s[1:].max()))
    ranked = {t: float(np.mean(v)) for t, v in hits.items()}
    assert ranked["single_object"] >= 0.8 and ranked["two_object"] >= 0.7, ranked  # chance: 0.5 each
    assert np.mean([h for v in hits.values() for h in v]) >= 0.45, ranked  # chance: 0.37
    answers = load_reward(f"vlm:{folder}?template=answers-pairwise")
    rng = np.random.default_rng(7)
    for category in ("count", "absent"):  # the readouts it learnt (QA set: 0.97 and 1.00)
        scenes, qas = zip(*[sample_item(rng, category, "held_out") for _ in range(24)])
        images = to_tensor(np.stack([render(sc) for sc in scenes]))
        q, right, wrong = ([x[k] for x in qas] for k in ("question", "answer", "wrong"))
        with torch.no_grad():
            p = answers.compare_answers(images, q, right, wrong, swap=True)
        assert float((p > 0.5).float().mean()) >= 0.85, category
    pair = load_reward(f"vlm:{folder}?template=pairwise")
    rng = np.random.default_rng(11)
    right, wrong, prompts = [], [], []
    for meta in metas:
        if meta["tag"] in ("single_object", "two_object", "counting"):  # benchmark, 100 pairs each: 0.95 0.79 0.83
            scene, negative = hard_negative_scenes(meta, rng)
            right.append(render(scene))
            wrong.append(render(negative))
            prompts.append(meta["prompt"])
    a, b = to_tensor(np.stack(right)), to_tensor(np.stack(wrong))
    with torch.no_grad():
        p = pair.compare(a, b, prompts, swap=True)
    assert float((p > 0.5).float().mean()) >= 0.7, p  # chance: 0.5
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    judge(x, ["a photo of a red circle", "a photo of two squares"]).sum().backward()
    assert x.grad.abs().sum() > 0


@pytest.mark.slow
def test_demo_runs_on_the_embedded_default(tmp_path, monkeypatch):
    from mmreward.demo import main as demo

    monkeypatch.chdir(ROOT)
    summary = demo(["--out", str(tmp_path / "demo")])
    assert summary["accuracy"] >= 0.75 and len(summary["rows"]) == 12
    assert (tmp_path / "demo" / "grid.png").is_file()
    # the demo's images are ground-truth renders in the evaluator's format: all correct
    shapes_cli(["evaluate", "--images", str(tmp_path / "demo"), "--out", str(tmp_path / "r.json"), "--quiet"])
    assert json.loads((tmp_path / "r.json").read_text())["overall"] == 1.0
    # part 2: one-step samples of the embedded generator, scored by the reward and the evaluator
    samples = summary["samples"]
    assert len(samples["rows"]) == 24 and (tmp_path / "demo" / "samples.png").is_file()
    shapes_cli(["evaluate", "--images", str(tmp_path / "demo" / "samples"), "--out", str(tmp_path / "s.json"), "--quiet"])
    verdicts = [r["correct"] for r in json.loads((tmp_path / "s.json").read_text())["per_image"]]
    assert verdicts == [r["correct"] for r in samples["rows"]]
    # the grids are labelled at a readable size: 192-px cells with text below each image
    from PIL import Image

    assert Image.open(tmp_path / "demo" / "samples.png").width >= 4 * 192
    # a second demo into the same folder is refused unless told; --overwrite leaves no stale file
    from mmreward.errors import UserError

    with pytest.raises(UserError, match="already holds a demo"):
        demo(["--out", str(tmp_path / "demo")])
    demo(["--out", str(tmp_path / "demo"), "--per-category", "1", "--t2i", "", "--overwrite"])
    assert len(list((tmp_path / "demo").glob("*.png"))) == 6 + 1 and not (tmp_path / "demo" / "samples").exists()


T2I_DIR = ROOT / "assets" / "shapesworld-t2i"
TEACHER_DIR = ROOT / "assets" / "shapesworld-t2i-teacher"
#: benchmark (288 images each): one step 0.809, teacher 0.910; these 32 + 16 images are a smaller sample, hence lower floors
SINGLE_ONE_STEP_MIN, SINGLE_TEACHER_MIN = 0.7, 0.6


def _single_object_accuracy(pipe, steps: int, guidance: float, seeds: int) -> float:
    from mmreward.shapes import evaluate
    from mmreward.shapes.generate import sample_pipeline

    metas = list({m["prompt"]: m for m in load_suite("eval") if m["tag"] == "single_object"}.values())
    rows, imgs = [], []
    for i, _, im in sample_pipeline(pipe, [m["prompt"] for m in metas], seeds, steps, guidance, progress=False):
        rows.append(metas[i])
        imgs.append(im)
    return evaluate(imgs, rows)["overall"]


def test_one_step_generator_loads_as_a_diffusers_pipeline_and_draws_the_prompt():
    from diffusers import DiffusionPipeline, LCMScheduler, StableDiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(T2I_DIR)
    assert isinstance(pipe, StableDiffusionPipeline) and isinstance(pipe.scheduler, LCMScheduler)
    info = json.loads((T2I_DIR / "training.json").read_text())
    assert {"vae", "teacher", "distill"} <= set(info)
    # one step from pure noise gives recognisable single objects (4 prompts x 8 seeds, exact evaluator)
    assert _single_object_accuracy(pipe, steps=1, guidance=0.0, seeds=8) >= SINGLE_ONE_STEP_MIN


@pytest.mark.slow
def test_multi_step_teacher_loads_and_samples_with_ddim_and_guidance():
    from diffusers import DDIMScheduler, DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(TEACHER_DIR)
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.scheduler.config.prediction_type == "v_prediction"
    assert _single_object_accuracy(pipe, steps=20, guidance=3.0, seeds=4) >= SINGLE_TEACHER_MIN


@pytest.mark.slow
def test_text_to_video_model_loads_as_animatediff_and_draws_single_objects():
    """The benchmark's single-object per-frame score is 0.972 (72 videos); 8 videos here, hence a lower floor."""
    import sys

    from diffusers import AnimateDiffPipeline, MotionAdapter

    from mmreward.shapes.video import evaluate_video

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from shapes_t2v import sample_videos

    folder = ROOT / "assets" / "shapesworld-t2v"
    pipe = AnimateDiffPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32  # fp16 on disk
    assert MotionAdapter.from_pretrained(folder / "motion_adapter") is not None
    rows = [r for r in load_suite("video_eval") if r["tag"] == "single_object"][:8]
    videos = sample_videos(pipe, [r["prompt"] for r in rows], seed=0, frames=8, steps=20, guidance=3.0)
    scores = [evaluate_video(v, r)["per_frame"] for v, r in zip(videos, rows, strict=True)]
    assert np.mean(scores) >= 0.75


@pytest.mark.parametrize(("kind", "name"), [("segformer", "shapesworld-segformer"), ("edges", "shapesworld-edge-net"),
                                             ("segformer", "shapesworld-segformer-eval"),
                                             ("edges", "shapesworld-edge-net-eval")])
def test_dense_reward_models_load_and_read_fresh_renders(kind, name):
    """The embedded Segformers and edge estimators (the rewards and the benchmark's independent second models),
    loaded by path as ControlNet++ loads them, read the condition back from fresh renders of training
    compositions (their records: pixel accuracy 0.999 / edge F1 0.93)."""
    from mmreward.dense_rewards import EdgeReward, SegmentationReward
    from mmreward.shapes.train_dense_rewards import accuracy

    folder = ROOT / "assets" / name
    model = (SegmentationReward if kind == "segformer" else EdgeReward).from_pretrained(str(folder)).eval()
    res = accuracy(model, kind, n=32, seed=7)
    if kind == "segformer":
        assert res["pixel_accuracy"] > 0.99 and res["miou"] > 0.95
    else:
        assert res["edge_f1"] > 0.8


@pytest.mark.slow
@pytest.mark.parametrize("condition", ["seg", "edges"])
def test_controlnet_loads_with_the_teacher_and_follows_its_condition(condition):
    """StableDiffusionControlNetPipeline loads the teacher with an embedded ControlNet; its generations, read
    back by the pixel truth, match the condition (seg: mIoU; edges: edge F1 of the pixel truth's boundaries)
    far better than the same prompts and seeds without it."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    from diffusion_align.embedded.train_shapes_controlnet import condition_images
    from mmreward.metrics import class_iou, edge_f1
    from mmreward.shapes.conditions import SEG_CLASSES, boundaries, edge_map, read_segmentation, segmentation
    from mmreward.shapes.data import sample_batch

    _, metas, scenes = sample_batch(np.random.default_rng(11), 8, split="any", return_scenes=True)
    cn = ControlNetModel.from_pretrained(ROOT / "assets" / f"shapesworld-controlnet-{condition}")
    pipe = StableDiffusionControlNetPipeline.from_pretrained(ROOT / "assets" / "shapesworld-t2i-teacher", controlnet=cn,
                                                             safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompts = [m["prompt"] for m in metas]

    def match(scale: float) -> float:
        out = pipe(prompts, image=condition_images(scenes, condition), num_inference_steps=20, guidance_scale=3.0,
                   height=64, width=64, output_type="np", generator=torch.Generator().manual_seed(0),
                   controlnet_conditioning_scale=scale)
        truth = np.stack([read_segmentation((im * 255).round().astype(np.uint8)) for im in out.images])
        if condition == "seg":
            return float(np.nanmean(class_iou(truth, np.stack([segmentation(s) for s in scenes]), len(SEG_CLASSES))))
        return edge_f1(np.stack([boundaries(t) for t in truth]), np.stack([edge_map(s) for s in scenes]))["f1"]

    with_cond, without = match(1.0), match(0.0)  # measured: seg mIoU 0.890 / 0.230; edges F1 0.958 / 0.144
    assert with_cond > 0.6 and with_cond > without + 0.2, (with_cond, without)
