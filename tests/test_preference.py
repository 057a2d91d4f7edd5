"""Preference data, the pairwise loss, reward heads in the reference layout, the reward trainer (head and
CLIP fine-tuning, resume after a kill), and the ShapesWorld preference generator. Tiny random CLIPs saved
and loaded through the real loaders."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmreward import load_reward
from mmreward.errors import ModelLoadError, RewardError, UserError
from mmreward.heads import HEAD_CONFIG, HEAD_WEIGHTS, MLPHead
from mmreward.preference import (
    PreferenceExample,
    pairwise_accuracy,
    preference_loss,
    read_preferences,
    write_preferences,
)


# ------------------------------------------------------------------------------------------ loss
def test_preference_loss_matches_hand_computed_values():
    r = torch.tensor([[2.0, 0.5], [1.0, 1.0], [0.0, 3.0]])
    lab = torch.tensor([[1.0, 0.0], [0.5, 0.5], [1.0, 0.0]])
    per = [math.log(1 + math.exp(-1.5)), math.log(2), math.log(1 + math.exp(3.0))]
    assert preference_loss(r, lab).item() == pytest.approx(np.mean(per), rel=1e-6)
    w = torch.tensor([1.0, 0.0, 3.0])
    assert preference_loss(r, lab, w).item() == pytest.approx((per[0] + 3 * per[2]) / 4, rel=1e-6)
    # three images, soft label: -sum label * log softmax
    r3, l3 = torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[0.5, 0.5, 0.0]])
    z = math.log(1 + math.e + math.e**2)
    assert preference_loss(r3, l3).item() == pytest.approx(0.5 * z + 0.5 * (z - 1), rel=1e-6)
    # gradient of a pair: d/dr_w = -(1 - σ(r_w - r_l))
    r = torch.tensor([[0.3, -0.2]], requires_grad=True)
    preference_loss(r, torch.tensor([[1.0, 0.0]])).backward()
    s = 1 / (1 + math.exp(-0.5))
    assert r.grad[0].tolist() == pytest.approx([-(1 - s), 1 - s], rel=1e-5)
    with pytest.raises(RewardError, match="must both be"):
        preference_loss(torch.zeros(2, 2), torch.zeros(2, 3))


def test_pairwise_accuracy_counts_ties_apart():
    r = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [2.0, 2.0], [0.0, 1.0]])
    lab = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]])
    res = pairwise_accuracy(r, lab)
    assert res["n"] == 3 and res["ties"] == 2
    assert res["accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)  # an exact reward tie counts half
    assert res["tie_accuracy"] == pytest.approx(0.5)  # only [2, 2] is predicted a tie at margin 0


# ------------------------------------------------------------------------------------------ data
def _png(path, value: int, size: int = 32) -> str:
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)
    return str(path)


def test_preferences_round_trip_and_relative_paths(tmp_path):
    a, b, c = (_png(tmp_path / f"{n}.png", v) for n, v in (("a", 10), ("b", 200), ("c", 90)))
    ex = [PreferenceExample("a red circle", [a, b], [0.0, 1.0], category="x", truth=[1.0, 0.0]),
          PreferenceExample("a blue star", [a, c], [0.5, 0.5]),
          PreferenceExample("two squares", [a, b, c], [0.5, 0.5, 0.0])]
    path = write_preferences(tmp_path / "prefs.jsonl", ex)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert rows[0] == {"prompt": "a red circle", "images": ["a.png", "b.png"], "choice": 1, "category": "x", "truth": 0}
    assert rows[1]["choice"] is None and rows[2]["label"] == [0.5, 0.5, 0.0]
    back = read_preferences(path)
    assert [(e.prompt, e.images, e.label, e.category, e.truth) for e in back] == \
        [(e.prompt, e.images, e.label, e.category, e.truth) for e in ex]
    assert back[1].is_tie and back[1].choice is None and back[0].choice == 1 and back[2].choice is None


@pytest.mark.parametrize("line, message", [
    ("{not json", r"p.jsonl, line 1: not valid JSON"),
    ('{"prompt": "", "images": ["a.png", "b.png"], "choice": 0}', "'prompt' must be"),
    ('{"prompt": "p", "images": ["a.png"], "choice": 0}', "at least two image paths"),
    ('{"prompt": "p", "images": ["a.png", "b.png"], "choice": 2}', "choice must be an image index"),
    ('{"prompt": "p", "images": ["a.png", "b.png"]}', "needs 'choice'"),
    ('{"prompt": "p", "images": ["a.png", "b.png"], "label": [0.7, 0.7]}', "summing to 1"),
    ('{"prompt": "p", "images": ["a.png", "missing.png"], "choice": 0}', "missing.png does not exist"),
])
def test_malformed_preference_files_name_the_line_and_problem(tmp_path, line, message):
    _png(tmp_path / "a.png", 1)
    _png(tmp_path / "b.png", 2)
    (tmp_path / "p.jsonl").write_text(line + "\n")
    with pytest.raises(UserError, match=message):
        read_preferences(tmp_path / "p.jsonl")
    with pytest.raises(RewardError, match="does not exist"):
        read_preferences(tmp_path / "nope.jsonl")


@pytest.mark.slow
def test_shapes_preferences_follow_the_hidden_utility(tmp_path):
    from mmreward.shapes.evaluator import evaluate_image
    from mmreward.shapes.preferences import generate

    path = generate(tmp_path / "p", 240, noise=0.25, seed=3, progress=False)
    ex = read_preferences(path)
    assert len(ex) == 240 and {e.category for e in ex} == {"alignment", "taste"}
    flipped = [e.label != e.truth for e in ex if e.truth[0] != e.truth[1]]
    assert 0.15 < np.mean(flipped) < 0.35  # the label-noise rate
    assert all(e.label == e.truth for e in ex if e.truth[0] == e.truth[1])  # ties are never flipped
    for e in ex:
        ims = [np.asarray(Image.open(p)) for p in e.images]
        ok = [evaluate_image(im, e.prompt)["correct"] for im in ims]
        truth = PreferenceExample(e.prompt, e.images, e.truth).choice
        if e.category == "alignment":  # the correct image (by the pixel evaluator) is the preferred one
            assert truth is not None and ok[truth] and not ok[1 - truth]
        else:  # both correct; the preferred one draws larger objects
            assert all(ok)
            if truth is not None:
                ink = [(im.astype(int).sum(-1) < 3 * 235).sum() for im in ims]
                assert ink[truth] > ink[1 - truth]


# ----------------------------------------------------------------------------------------- heads
def _head_folder(tmp_path, backbone_dir, in_dim: int, inputs: str, mean=0.3, std=2.0, seed=0):
    """A head folder written by hand in the LAION-aesthetic / ImageReward MLP layout."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    shapes = {"layers.0": (1024, in_dim), "layers.2": (128, 1024), "layers.4": (64, 128), "layers.6": (16, 64), "layers.7": (1, 16)}
    state = {}
    for k, (o, i) in shapes.items():
        state[f"{k}.weight"] = torch.randn(o, i, generator=g) / math.sqrt(i)
        state[f"{k}.bias"] = torch.randn(o, generator=g) * 0.1
    folder = tmp_path / f"head_{inputs}"
    folder.mkdir()
    save_file(state, str(folder / HEAD_WEIGHTS))
    (folder / HEAD_CONFIG).write_text(json.dumps({
        "backbone": f"clip:{backbone_dir}", "inputs": inputs, "in_dim": in_dim, "hidden": [1024, 128, 64, 16],
        "dropout": [0.2, 0.2, 0.1, 0.0], "activation": "none", "mean": mean, "std": std}))
    return folder, state


def test_reference_mlp_layout_loads_and_scores_like_a_manual_computation(tmp_path, open_clip_dir, images):
    head = MLPHead(768)
    assert [k for k in head.state_dict()] == [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")]
    backbone = load_reward(f"clip:{open_clip_dir}").backbone
    d = backbone.encode_text(["x"]).shape[-1]
    for inputs, in_dim in (("image", d), ("image_text", 2 * d)):
        folder, st = _head_folder(tmp_path, open_clip_dir, in_dim, inputs)
        reward = load_reward(f"head:{folder}")
        prompts = ["a red circle", "two blue squares", "a star", "four circles"]
        with torch.no_grad():
            img = backbone.embed_images(images)
            x = img if inputs == "image" else torch.cat([img, img * backbone.encode_text(prompts)], -1)
            for k in ("layers.0", "layers.2", "layers.4", "layers.6", "layers.7"):  # no activations, eval: no dropout
                x = x @ st[f"{k}.weight"].T + st[f"{k}.bias"]
            want = (x.squeeze(-1) - 0.3) / 2.0
            got = reward(images, None if inputs == "image" else prompts)
        assert torch.allclose(got, want, atol=1e-5)
        assert reward.needs_prompts == (inputs == "image_text")


def test_head_reward_is_differentiable_and_bad_folders_fail_clearly(tmp_path, open_clip_dir, images):
    folder, _ = _head_folder(tmp_path, open_clip_dir, 64, "image_text")
    reward = load_reward(f"head:{folder}")
    x = images.clone().requires_grad_(True)
    reward(x, "a red circle").sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in reward.parameters())
    with pytest.raises(ModelLoadError, match="not a reward head folder"):
        load_reward(f"head:{tmp_path}")
    cfg = json.loads((folder / HEAD_CONFIG).read_text())
    (folder / HEAD_CONFIG).write_text(json.dumps({**cfg, "in_dim": 10}))
    with pytest.raises(ModelLoadError, match="does not match"):
        load_reward(f"head:{folder}")


# --------------------------------------------------------------------------------------- trainer
@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    from mmreward.shapes.preferences import generate

    root = tmp_path_factory.mktemp("prefs")
    return str(generate(root / "train", 96, noise=0.0, seed=0, progress=False)), \
        str(generate(root / "val", 24, noise=0.0, seed=1, progress=False))


def _cfg(tmp_path, open_clip_dir, prefs, **kw):
    from mmreward.train_reward import RewardTrainConfig

    base = dict(data=prefs[0], val_data=prefs[1], backbone=f"clip:{open_clip_dir}", output_dir=str(tmp_path / "run"),
                epochs=4, batch_size=16, learning_rate=1e-3, checkpoint_every=1000)
    return RewardTrainConfig.from_dict({**base, **kw})


@pytest.mark.slow
def test_head_training_lowers_the_loss_and_exports_a_loadable_reward(tmp_path, open_clip_dir, prefs):
    from mmreward.train_reward import score_examples, train

    # the tiny random CLIP embeds images alike: a larger step and no dropout to fit the 96 pairs
    res = train(_cfg(tmp_path, open_clip_dir, prefs, epochs=12, activation="gelu", learning_rate=1e-2,
                     dropout=[0.0] * 4), progress=False)
    assert res["step"] == 12 * 6 and res["stopped_by"] is None
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 13))
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.02
    assert {"val_accuracy", "val_accuracy_truth", "val_loss", "pairs_per_s"} <= set(rows[-1])
    reward = load_reward(f"head:{tmp_path / 'run' / 'model'}")
    ex = read_preferences(prefs[0])
    r = score_examples(reward, ex)
    # the exported normalisation: training rewards have mean 0 and std 1
    assert r.mean().item() == pytest.approx(0.0, abs=1e-4) and r.flatten().std().item() == pytest.approx(1.0, abs=1e-3)
    train_loss = preference_loss(r * json.loads((tmp_path / "run" / "model" / HEAD_CONFIG).read_text())["std"],
                                 torch.tensor([e.label for e in ex]))
    assert train_loss.item() < math.log(2) - 0.02  # better than chance on what it was trained on


def test_reward_training_resumes_after_a_kill_to_the_same_weights(tmp_path, open_clip_dir, prefs):
    from safetensors.torch import load_file

    from mmreward.config_file import ConfigError
    from mmreward.train_reward import train

    full = train(_cfg(tmp_path / "a", open_clip_dir, prefs, epochs=2), progress=False)
    killed = train(_cfg(tmp_path / "b", open_clip_dir, prefs, epochs=2), stop_after_steps=5, progress=False)
    assert killed["step"] == 5 and killed["stopped_by"] == "stop_after_steps" and "model" not in killed
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        train(_cfg(tmp_path / "b", open_clip_dir, prefs, epochs=2), progress=False)
    resumed = train(_cfg(tmp_path / "b", open_clip_dir, prefs, epochs=2), resume=True, progress=False)
    assert resumed["step"] == full["step"] == 12
    a, b = (load_file(str(tmp_path / x / "run" / "model" / HEAD_WEIGHTS)) for x in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # dropout draws and data order replayed exactly
    ra, rb = ([json.loads(x) for x in (tmp_path / x / "run" / "metrics.jsonl").read_text().splitlines()] for x in "ab")
    assert [r["step"] for r in rb] == [r["step"] for r in ra] and rb[-1]["loss"] == pytest.approx(ra[-1]["loss"])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["finetune", "lora"])
def test_clip_finetuning_exports_an_open_clip_reward_equal_to_the_trained_model(tmp_path, open_clip_dir, prefs, mode):
    from mmreward.train_reward import ClipPreference, build, load_pixels, score_examples, train

    res = train(_cfg(tmp_path, open_clip_dir, prefs, mode=mode, epochs=2), progress=False)
    reward = load_reward(f"clip:{res['model']}?mode=logit")
    val = read_preferences(prefs[1])
    r_new = score_examples(reward, val)
    r_old = score_examples(load_reward(f"clip:{open_clip_dir}?mode=logit"), val)
    assert (r_new - r_old).abs().max() > 1e-3  # the weights moved
    # the exported model (LoRA merged into the weights) scores what the trained model scored at the end
    last = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert preference_loss(r_new, torch.tensor([e.label for e in val])).item() == pytest.approx(last["val_loss"], abs=1e-4)
    # and the training-time reward (ClipPreference on pixels) equals CLIPScore in logit mode
    trained, _ = build(_cfg(tmp_path, res["model"], prefs, mode="finetune"))
    assert isinstance(trained, ClipPreference)
    with torch.no_grad():
        pix = load_pixels([p for e in val for p in e.images], reward.backbone.preprocess)
        direct = trained.eval()(pix, [e.prompt for e in val for _ in e.images]).view(len(val), 2)
    assert torch.allclose(direct, r_new, atol=1e-4)


def test_reward_config_errors_are_clear(tmp_path, open_clip_dir, prefs):
    from mmreward.config_file import ConfigError
    from mmreward.train_reward import RewardTrainConfig, main

    for bad, msg in [({"mode": "dpo"}, "mode must be one of"), ({"dropout": [0.1]}, "one value per hidden layer"),
                     ({"mode": "lora", "backbone": "hfclip:x"}, "backbone must be clip:"), ({"data": ""}, "data must name")]:
        with pytest.raises(ConfigError, match=msg):
            RewardTrainConfig.from_dict({"data": prefs[0], **bad})
    with pytest.raises(UserError, match="does not exist"):
        main(["--set", f"data={tmp_path / 'none.jsonl'}", "--set", f"output_dir={tmp_path / 'o'}", "--no-progress"])
    # --set overrides on a YAML file (shared by every trainer's command line), validated once applied
    (tmp_path / "c.yaml").write_text(f"data: {prefs[0]}\nepochs: 3\n")
    cfg = RewardTrainConfig.from_cli(tmp_path / "c.yaml", ["epochs=5", "dropout=[0, 0, 0, 0]"])
    assert cfg.epochs == 5 and cfg.dropout == [0.0] * 4 and all(isinstance(v, float) for v in cfg.dropout)
    assert cfg.data == prefs[0]
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        RewardTrainConfig.from_cli(tmp_path / "c.yaml", ["epochs"])
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        RewardTrainConfig.from_cli(tmp_path / "c.yaml", ["epochs=0"])


@pytest.mark.slow
def test_ensemble_of_heads_aggregates_members_and_shares_one_backbone(tmp_path, open_clip_dir, images):
    d = load_reward(f"clip:{open_clip_dir}").backbone.encode_text(["x"]).shape[-1]
    root = tmp_path / "heads"
    root.mkdir()
    for s in range(3):
        folder, _ = _head_folder(tmp_path, open_clip_dir, 2 * d, "image_text", seed=s)
        folder.rename(root / f"m{s}")
    prompts = ["a red circle", "two blue squares", "a star", "four circles"]
    members = [load_reward(f"head:{root / f'm{s}'}") for s in range(3)]
    with torch.no_grad():
        r = torch.stack([m(images, prompts) for m in members])
        wco = load_reward(f"ensemble:{root}?agg=wco")
        assert all(m.backbone is wco.members[0].backbone for m in wco.members)
        assert torch.allclose(wco(images, prompts), r.min(0).values, atol=1e-5)
        uwo = load_reward(f"ensemble:{root}?agg=uwo&lam=0.5")
        assert torch.allclose(uwo(images, prompts), r.mean(0) - 0.5 * r.var(0, correction=0), atol=1e-5)
    with pytest.raises(Exception, match="subfolders are reward heads"):
        load_reward(f"ensemble:{tmp_path / 'none'}")


@pytest.mark.slow
def test_a_trained_reward_drives_reno_through_its_spec_string(tmp_path, open_clip_dir, prefs):
    from diffusers import DiffusionPipeline

    from diffusion_align.embedded.shapes_t2i import build_components, save_pipeline
    from diffusion_align.reno.cli import main as reno_main
    from mmreward.train_reward import train

    res = train(_cfg(tmp_path, open_clip_dir, prefs, epochs=2, val_data=None), progress=False)
    spec = f"head:{res['model']}"
    save_pipeline(build_components(seed=0, tiny=True), tmp_path / "pipe")
    DiffusionPipeline.from_pretrained(tmp_path / "pipe")  # a valid pipeline folder
    summary = reno_main(["--model", str(tmp_path / "pipe"), "--rewards", spec, "--prompt", "a photo of a red circle",
                         "--n-seeds", "2", "--iters", "8", "--out", str(tmp_path / "reno"), "--no-progress"])
    assert summary["images"] == 2
    log = [json.loads(x) for x in (tmp_path / "reno" / "log.jsonl").read_text().splitlines()]
    for seed in (0, 1):
        r = [x["reward"] for x in log if x["seed"] == seed]
        assert len(r) == 8 and max(r[1:]) > r[0] + 1e-3  # the head's gradient reaches the noise and raises it


def test_per_prompt_weighting_is_pickscores(tmp_path, open_clip_dir, prefs):
    """Each example weighs 1/(examples of its prompt), so every prompt counts once in the loss."""
    from mmreward.train_reward import prompt_weights, train

    w = prompt_weights(["a", "b", "a", "a", "c"])
    assert w.tolist() == pytest.approx([1 / 3, 1, 1 / 3, 1 / 3, 1])
    r = torch.tensor([[1.0, 0.0]] * 5)
    lab = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    per = [math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(1.0))]  # right / wrong
    want = (per[0] + per[1] + per[1]) / 3  # prompts a (right), b (wrong), c (wrong), each once
    assert preference_loss(r, lab, w).item() == pytest.approx(want, rel=1e-6)
    a = train(_cfg(tmp_path / "a", open_clip_dir, prefs, epochs=1, val_data=None), progress=False)
    b = train(_cfg(tmp_path / "b", open_clip_dir, prefs, epochs=1, val_data=None, per_prompt_weighting=True), progress=False)
    from safetensors.torch import load_file

    wa, wb = (load_file(str(Path(x["model"]) / HEAD_WEIGHTS)) for x in (a, b))
    assert any(not torch.allclose(wa[k], wb[k]) for k in wa)  # the trainer uses the weights


@pytest.mark.slow
def test_ctrl_c_saves_at_a_step_boundary_and_resume_finishes_the_run(tmp_path, open_clip_dir, prefs):
    import subprocess
    import sys

    from helpers import interrupt_when
    from safetensors.torch import load_file

    from mmreward.checkpoint import read_state_info

    out = tmp_path / "cli"
    common = ["--set", f"data={prefs[0]}", "--set", f"backbone=clip:{open_clip_dir}", "--set", f"output_dir={out}",
              "--set", "batch_size=16", "--set", "checkpoint_every=1000", "--no-progress"]
    metrics = out / "metrics.jsonl"
    code, output = interrupt_when([sys.executable, "-m", "mmreward.train_reward", "--set", "epochs=500", *common],
                                  lambda: metrics.is_file() and bool(metrics.read_text().strip()))
    assert code == 0, output
    assert "stop requested" in output and "stopped (interrupt) at step" in output
    step, _ = read_state_info(out / "checkpoint")
    assert step >= 6  # at least the first epoch (6 steps of 16 pairs), saved at the step it stopped
    epochs = step // 6 + 1
    # the resumed run and the uninterrupted reference run as the command runs them, each in a fresh process
    # like the interrupted one: equal weights then show that nothing of the run was lost, independent of
    # the settings (torch threads) that earlier tests left in this process
    run = subprocess.run([sys.executable, "-m", "mmreward.train_reward", "--resume", "--set", f"epochs={epochs}", *common],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    res = json.loads(run.stdout.strip().splitlines()[-1])
    assert res["step"] == 6 * epochs and "model" in res
    ref_out = tmp_path / "ref"
    ref_args = [a.replace(str(out), str(ref_out)) for a in common]
    run = subprocess.run([sys.executable, "-m", "mmreward.train_reward", "--set", f"epochs={epochs}", *ref_args],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    ref = json.loads(run.stdout.strip().splitlines()[-1])
    assert ref["stopped_by"] is None and ref["step"] == res["step"]
    a, b = load_file(str(Path(res["model"]) / HEAD_WEIGHTS)), load_file(str(Path(ref["model"]) / HEAD_WEIGHTS))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)  # as if never interrupted
