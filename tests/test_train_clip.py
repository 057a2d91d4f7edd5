"""ShapesWorld-CLIP training: a killed run resumes to exactly the weights of an uninterrupted one,
and the result loads through the reward core's spec string."""

import json

import pytest
import torch
from safetensors.torch import load_file

from mmreward import load_reward
from mmreward.shapes.train_clip import main as train_clip


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    common = ["--tiny", "--steps", "6", "--batch", "16", "--ckpt-every", "2", "--eval-every", "100", "--seed", "3"]
    train_clip(common + ["--work", str(tmp_path / "w1"), "--out", str(tmp_path / "m1")])
    stopped = train_clip(common + ["--work", str(tmp_path / "w2"), "--out", str(tmp_path / "m2"), "--stop-after", "3"])
    assert stopped == {"steps": 3, "stopped": True} and not (tmp_path / "m2").exists()
    train_clip(common + ["--work", str(tmp_path / "w2"), "--out", str(tmp_path / "m2")])
    a = load_file(str(tmp_path / "m1" / "open_clip_model.safetensors"))
    b = load_file(str(tmp_path / "m2" / "open_clip_model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "w2" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    # the saved folder is an open_clip model the reward core loads by spec string
    reward = load_reward(f"clip:{tmp_path / 'm1'}")
    assert reward(torch.rand(2, 3, 64, 64), ["a photo of a red circle", "a photo of two squares"]).shape == (2,)
    info = json.loads((tmp_path / "m1" / "training.json").read_text())
    assert info["steps"] == 6 and 0 <= info["hard_negative_accuracy"]["overall"] <= 1


def test_training_batches_are_correctly_captioned_and_never_held_out():
    import numpy as np

    from mmreward.shapes import evaluate_image, parse_prompt
    from mmreward.shapes.prompts import is_held_out
    from mmreward.shapes.train_clip import make_batch

    images, pos, neg = make_batch(np.random.default_rng(0), 24, 0, paired=True)
    assert len(images) == len(pos) > 24  # counterfactual images were added
    arr = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    for img, cap in zip(arr, pos):
        assert evaluate_image(img, cap)["correct"], cap
    assert not any(is_held_out(parse_prompt(c)) for c in pos + neg)
    # each counterfactual caption is the inverse / colour swap of an earlier caption in the batch
    extra = pos[24:]
    assert all(parse_prompt(c)["tag"] in ("position", "color_attr") for c in extra)
