"""ShapesWorld-CLIP training: a killed run resumes to exactly the weights of an uninterrupted one,
and the result loads through the reward core's spec string."""

import json

import pytest
import torch
from safetensors.torch import load_file

from mmreward import load_reward
from mmreward.config_file import ConfigError
from mmreward.shapes.train_clip import main as train_clip


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    common = ["--tiny", "--steps", "6", "--batch", "16", "--ckpt-every", "2", "--eval-every", "100", "--seed", "3"]
    train_clip(common + ["--work", str(tmp_path / "w1"), "--out", str(tmp_path / "m1")])
    stopped = train_clip(common + ["--work", str(tmp_path / "w2"), "--out", str(tmp_path / "m2"), "--stop-after", "3"])
    assert stopped == {"steps": 3, "stopped": True} and not (tmp_path / "m2").exists()
    with pytest.raises(ConfigError, match="--resume"):
        train_clip(common + ["--work", str(tmp_path / "w2"), "--out", str(tmp_path / "m2")])
    train_clip(common + ["--work", str(tmp_path / "w2"), "--out", str(tmp_path / "m2"), "--resume"])
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

    images, pos_metas, neg_metas, scenes = make_batch(np.random.default_rng(0), 24, 0, paired=True)
    pos, neg = [m["prompt"] for m in pos_metas], [m["prompt"] for m in neg_metas]
    assert len(images) == len(pos) == len(scenes) > 24  # counterfactual images were added
    arr = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    for img, cap in zip(arr, pos):
        assert evaluate_image(img, cap)["correct"], cap
    assert not any(is_held_out(parse_prompt(c)) for c in pos + neg)
    # each counterfactual caption is the inverse / colour swap of an earlier caption in the batch
    extra = pos[24:]
    assert all(parse_prompt(c)["tag"] in ("position", "color_attr") for c in extra)


@pytest.mark.slow
def test_truth_matrix_matches_the_pixel_evaluator_and_finds_synonyms():
    import numpy as np

    from mmreward.shapes import evaluate_image
    from mmreward.shapes.train_clip import make_batch, truth_matrix

    images, metas, negs, scenes = make_batch(np.random.default_rng(3), 32, 0)
    captions = list({m["prompt"]: m for m in metas + negs}.values())
    true = truth_matrix(scenes, captions)
    arr = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    for i in range(len(scenes)):
        for j, c in enumerate(captions):
            assert bool(true[i, j]) == evaluate_image(arr[i], c)["correct"], (metas[i]["prompt"], c["prompt"])
    own = [[c["prompt"] for c in captions].index(m["prompt"]) for m in metas]
    assert all(true[i, j] for i, j in enumerate(own))
    # many captions of other images are true as well (e.g. "a photo of a circle" of a two-object scene)
    assert true.sum() > 2 * len(scenes)
    from mmreward.shapes.prompts import hard_negatives, parse_prompt, sample_scene

    rng = np.random.default_rng(0)
    for m, sc in zip(metas, scenes):  # hard negatives are never true
        assert not truth_matrix([sc], hard_negatives(m, rng)).any()
    scene = sample_scene(parse_prompt("a photo of a circle left of a square"), rng)
    caps = ["a photo of a circle left of a square", "a photo of a square right of a circle",
            "a photo of a circle right of a square", "a photo of a square left of a circle"]
    assert truth_matrix([scene], [parse_prompt(c) for c in caps]).tolist() == [[True, True, False, False]]


def test_contrastive_loss_modes():
    import torch
    import torch.nn.functional as F

    from mmreward.shapes.train_clip import contrastive_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, generator=g)
    target = torch.tensor([0, 1, 1, 2])  # captions 0-2 are positives, 3-5 hard negatives
    true = torch.zeros(4, 6, dtype=torch.bool)
    true[torch.arange(4), target] = True
    true[0, 2] = True  # caption 2 (image 3's) is also true of image 0
    match = (target[None, :] == torch.arange(3)[:, None]).float()
    ref = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :3].T, match / match.sum(1, keepdim=True)))
    assert torch.allclose(contrastive_loss(logits, target, 3, true, "own"), ref)
    # "mask": the loss does not depend on the logit of a true caption of another image
    bumped = logits.clone()
    bumped[0, 2] += 5.0
    assert torch.allclose(contrastive_loss(logits, target, 3, true, "mask"), contrastive_loss(bumped, target, 3, true, "mask"))
    assert not torch.allclose(contrastive_loss(logits, target, 3, true, "own"), contrastive_loss(bumped, target, 3, true, "own"))
    # gradient on that logit: pushed down as a negative (own), ignored (mask), pulled up (soft)
    grads = {}
    for mode in ("own", "mask", "soft"):
        x = logits.clone().requires_grad_(True)
        contrastive_loss(x, target, 3, true, mode).backward()
        grads[mode] = x.grad[0, 2].item()
    assert grads["own"] > 0 and grads["mask"] == 0 and grads["soft"] < 0


def test_layout_targets_locate_each_shape_and_the_head_can_learn_them():
    import numpy as np

    from mmreward.shapes.train_clip import layout_loss, layout_targets
    from mmreward.shapes.world import COLORS, SHAPES, Obj, Scene

    scene = Scene([Obj("circle", "red", 0.25, 0.5, 0.2), Obj("square", "blue", 0.75, 0.25, 0.2),
                   Obj("square", "green", 0.75, 0.75, 0.2)])
    present, xy, colors = layout_targets([scene])
    c, s, t = SHAPES.index("circle"), SHAPES.index("square"), SHAPES.index("triangle")
    assert present[0].tolist() == [float(k in (c, s)) for k in range(len(SHAPES))]
    assert torch.allclose(xy[0, c], torch.tensor([-0.5, 0.0])) and torch.allclose(xy[0, s], torch.tensor([0.5, 0.0]))
    assert xy[0, t].abs().sum() == 0 and colors[0, t].sum() == 0
    assert colors[0, s, list(COLORS).index("blue")] == 0.5 and colors[0, c, list(COLORS).index("red")] == 1
    # the loss is minimal at the targets: a head that outputs exactly them beats one that swaps left/right
    head = torch.nn.Linear(4, len(SHAPES) * (3 + len(COLORS)), bias=True)
    torch.nn.init.zeros_(head.weight)

    def loss_for(xy_out):
        with torch.no_grad():
            out = torch.cat([(present * 40 - 20)[..., None], xy_out, (colors.clamp(min=1e-6)).log()], -1)
            head.bias.copy_(out.reshape(-1))
        return layout_loss(head, torch.zeros(1, 4), [scene]).item()

    best = loss_for(xy)
    assert best < 0.01 + float(-(colors * colors.clamp(min=1e-6).log()).sum() / 2)  # only the colour entropy left
    assert loss_for(xy * torch.tensor([-1.0, 1.0])) > best + 0.4
    assert np.isfinite(best)
