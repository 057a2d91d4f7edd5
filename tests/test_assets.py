"""The embedded defaults under assets/ load through the public loaders and do their job."""

import json
from pathlib import Path

import pytest
import torch

from mmreward import load_reward
from mmreward.shapes import CATEGORIES, load_suite
from mmreward.shapes.__main__ import main as shapes_cli
from mmreward.shapes.clip_eval import hard_negative_accuracy, hard_negative_items

ROOT = Path(__file__).resolve().parents[1]
CLIP_DIR = ROOT / "assets" / "shapesworld-clip"


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
def test_demo_runs_on_the_embedded_default(tmp_path, monkeypatch):
    from mmreward.demo import main as demo

    monkeypatch.chdir(ROOT)
    summary = demo(["--out", str(tmp_path / "demo")])
    assert summary["accuracy"] >= 0.75 and len(summary["rows"]) == 12
    assert (tmp_path / "demo" / "grid.png").is_file()
    # the demo's images are ground-truth renders in the evaluator's format: all correct
    shapes_cli(["evaluate", "--images", str(tmp_path / "demo"), "--out", str(tmp_path / "r.json"), "--quiet"])
    assert json.loads((tmp_path / "r.json").read_text())["overall"] == 1.0
