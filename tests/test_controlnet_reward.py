"""ControlNet++ / Ctrl-U on tiny models saved and loaded by path: the dense reward models' loaders and losses, the
embedded ControlNet's training script, the one-step x̂0 in both parametrisations, the method's config defaults,
the Ctrl-U passes, and a run that resumes to the weights of an uninterrupted one."""

import json

import numpy as np
import pytest
import torch
import yaml

from diffusion_align.controlnet_reward import ControlNetRewardConfig, x0_estimate
from mmreward.config_file import ConfigError
from mmreward.dense_rewards import EdgeNet, EdgeReward, SegmentationReward
from mmreward.errors import ModelLoadError


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> str:
    from diffusers import DDIMScheduler

    from diffusion_align.embedded.shapes_t2i import build_components, make_pipeline

    c = build_components(seed=0, tiny=True)
    cfg = {k: v for k, v in c["scheduler"].config.items() if k != "original_inference_steps"}
    c["scheduler"] = DDIMScheduler.from_config({**cfg, "prediction_type": "v_prediction"})
    folder = tmp_path_factory.mktemp("tiny_teacher")
    make_pipeline(c).save_pretrained(folder, safe_serialization=True)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_segformer(tmp_path_factory) -> str:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    cfg = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                          patch_sizes=[3, 3], strides=[2, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2],
                          decoder_hidden_size=16, num_labels=5)
    folder = tmp_path_factory.mktemp("tiny_segformer")
    SegformerForSemanticSegmentation(cfg).save_pretrained(folder, safe_serialization=True)
    SegformerImageProcessor(do_resize=False, image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25]).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_edge_net(tmp_path_factory) -> str:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_edges")
    EdgeReward(EdgeNet(width=4, dilations=(1, 2))).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_controlnet(tmp_path_factory, tiny_teacher) -> str:
    from diffusion_align.embedded.train_shapes_controlnet import main

    work = tmp_path_factory.mktemp("cn")
    main(["seg", "--teacher", tiny_teacher, "--work", str(work / "w"), "--out", str(work / "out"), "--steps", "2",
          "--batch", "2", "--threads", "1"])
    return str(work / "out")


def test_dense_reward_models_load_by_path_and_pass_gradients(tiny_segformer, tiny_edge_net, tmp_path):
    seg = SegmentationReward.from_pretrained(tiny_segformer)
    assert seg.num_labels == 5 and seg.mean.flatten().tolist() == [0.5, 0.5, 0.5]  # the processor's normalisation
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    labels = torch.randint(0, 5, (2, 32, 32))
    labels[0, :4] = 255  # ignored
    logits = seg.logits(images)
    assert logits.shape == (2, 5, 32, 32)
    loss = seg.loss_map(images, labels)
    expected = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    torch.testing.assert_close(loss, expected)
    assert (loss[0, :4] == 0).all()
    loss.mean().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    edges = EdgeReward.from_pretrained(tiny_edge_net)
    pred = edges.predict(images)
    assert pred.shape == (2, 32, 32) and 0 <= pred.min() and pred.max() <= 1
    target = torch.rand(2, 32, 32)
    torch.testing.assert_close(edges.loss_map(images, target), (pred - target) ** 2)
    with pytest.raises(ModelLoadError, match="no edge estimator"):
        EdgeReward.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match=r"expected images \[B, 3, H, W\]"):
        seg.logits(torch.rand(2, 32, 32))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_x0_estimate_matches_the_scheduler(kind):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(prediction_type=kind, clip_sample=False)
    x, pred = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([5, 200, 900])
    ours = x0_estimate(sched, pred, x, t)
    for b in range(3):
        ref = sched.step(pred[b:b + 1], int(t[b]), x[b:b + 1]).pred_original_sample
        torch.testing.assert_close(ours[b:b + 1], ref, atol=1e-4, rtol=1e-4)


def test_config_takes_the_references_defaults_and_names_errors():
    plus = ControlNetRewardConfig.from_dict({})
    assert (plus.grad_scale, plus.t_max) == (0.5, 200)
    ctrlu = ControlNetRewardConfig.from_dict({"uncertainty": "timestep"})
    assert (ctrlu.grad_scale, ctrlu.t_max, ctrlu.u_scale) == (0.1, 400, 1.0)
    edges = ControlNetRewardConfig.from_dict({"uncertainty": "noise", "condition": "edges"})
    assert (edges.grad_scale, edges.t_max, edges.u_scale) == (1.0, 400, 0.1)
    assert ControlNetRewardConfig.from_dict({"grad_scale": 0.3}).grad_scale == 0.3
    with pytest.raises(ConfigError, match="uncertainty must be one of"):
        ControlNetRewardConfig.from_dict({"uncertainty": "dropout"})
    with pytest.raises(ConfigError, match="condition must be one of"):
        ControlNetRewardConfig.from_dict({"condition": "depth"})



def test_a_command_line_override_of_the_method_takes_the_methods_defaults():
    """``--set uncertainty=timestep`` on the shipped ControlNet++ config gives Ctrl-U's defaults, not the
    ControlNet++ values the file alone resolves to; values written in the file still win."""
    ctrlu = ControlNetRewardConfig.from_cli("configs/controlnet_seg_shapes.yaml", ["uncertainty=timestep"])
    assert (ctrlu.uncertainty, ctrlu.grad_scale, ctrlu.t_max, ctrlu.u_scale) == ("timestep", 0.1, 400, 1.0)
    plus = ControlNetRewardConfig.from_cli("configs/controlnet_seg_shapes.yaml", [])
    assert (plus.grad_scale, plus.t_max) == (0.5, 200)
    edges = ControlNetRewardConfig.from_cli("configs/controlnet_edges_shapes.yaml", ["uncertainty=noise"])
    assert (edges.grad_scale, edges.t_max, edges.u_scale) == (1.0, 400, 0.1)
    mixed = ControlNetRewardConfig.from_cli("configs/controlnet_seg_shapes.yaml", ["uncertainty=noise", "t_max=300"])
    assert (mixed.grad_scale, mixed.t_max) == (0.1, 300)

def _cfg(tmp_path, teacher, controlnet, segformer, **over) -> str:
    cfg = dict(method="controlnet_reward", pretrained=teacher, controlnet=controlnet, reward_model=segformer,
               output_dir=str(tmp_path / "run"), batch_size=2, total_steps=3, checkpoint_every=1, t_max=999,
               learning_rate=1e-3)
    cfg.update(over)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return str(tmp_path / "cfg.yaml")


@pytest.mark.parametrize("mode", ["timestep", "noise"])
def test_ctrlu_runs_a_primary_and_an_auxiliary_pass(tmp_path, tiny_teacher, tiny_controlnet, tiny_segformer, mode):
    from diffusion_align.controlnet_reward import ControlNetRewardTrainer

    cfg = ControlNetRewardConfig.from_yaml(_cfg(tmp_path, tiny_teacher, tiny_controlnet, tiny_segformer, uncertainty=mode))
    trainer = ControlNetRewardTrainer(cfg, progress=False)
    seen = {}
    real = trainer.predict

    def spy(x_t, t, emb, cond):
        seen.update(t=t.clone(), x=x_t.clone(), cond=cond.clone())
        return real(x_t, t, emb, cond)

    trainer.predict = spy
    row = trainer.train_step(5)
    t, x = seen["t"], seen["x"]
    assert len(t) == 4 and torch.equal(seen["cond"][:2], seen["cond"][2:])
    if mode == "timestep":  # the same noise one timestep later
        assert torch.equal(t[2:], (t[:2] + 1).clamp(max=999))
    else:  # the same timestep, another noise
        assert torch.equal(t[2:], t[:2]) and not torch.allclose(x[:2], x[2:])
    # KL >= 0 (up to rounding); one timestep apart the two readings nearly agree, two noises apart they do not
    assert row["rewarded"] == 2 and row["uncertainty"] > (0 if mode == "noise" else -1e-6) and row["reward_loss"] > 0
    assert row["reward_scale"] == pytest.approx(min(1.0, 5 / (3 / 7)) * 0.1)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in trainer.unet.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.controlnet.parameters())


def test_only_samples_with_t_up_to_t_max_are_decoded_and_rewarded(tmp_path, tiny_teacher, tiny_controlnet,
                                                                 tiny_segformer):
    from diffusion_align.controlnet_reward import ControlNetRewardTrainer

    cfg = ControlNetRewardConfig.from_yaml(_cfg(tmp_path, tiny_teacher, tiny_controlnet, tiny_segformer,
                                                uncertainty="timestep", t_max=500, batch_size=6))
    trainer = ControlNetRewardTrainer(cfg, progress=False)
    seen = {"t": [], "decoded": []}
    predict, read = trainer.predict, trainer.read_condition
    trainer.predict = lambda x, t, e, c: seen["t"].append(t.clone()) or predict(x, t, e, c)
    trainer.read_condition = lambda z: seen["decoded"].append(len(z)) or read(z)
    total = 0
    for i in range(3):
        seen["decoded"].clear()
        row = trainer.train_step(i)
        kept = int((seen["t"][-1][:6] <= 500).sum())
        # the primary and the auxiliary reading of each rewarded sample, nothing else
        assert row["rewarded"] == kept and sum(seen["decoded"]) == 2 * kept
        total += kept
    assert total > 0
    # diffusion loss only: nothing is decoded
    off = ControlNetRewardTrainer(ControlNetRewardConfig.from_yaml(_cfg(tmp_path / "off", tiny_teacher, tiny_controlnet,
                                                                        tiny_segformer, grad_scale=0.0)), progress=False)
    off.read_condition = lambda z: pytest.fail("decoded with grad_scale 0")
    row = off.train_step(0)
    assert row["reward_loss"] == 0 and row["loss"] == pytest.approx(row["diffusion_loss"])


@pytest.mark.slow
def test_a_run_resumes_to_the_uninterrupted_weights(tmp_path, tiny_teacher, tiny_controlnet, tiny_segformer):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from safetensors.torch import load_file

    from diffusion_align.train import main

    main(["--config", _cfg(tmp_path / "a", tiny_teacher, tiny_controlnet, tiny_segformer), "--no-progress"])
    cfg_b = _cfg(tmp_path / "b", tiny_teacher, tiny_controlnet, tiny_segformer)
    assert main(["--config", cfg_b, "--stop-after-epochs", "1", "--no-progress"])["step"] == 1
    main(["--config", cfg_b, "--resume", "--no-progress"])
    a = load_file(str(tmp_path / "a" / "run" / "controlnet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "run" / "controlnet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(f"{tiny_controlnet}/diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in a)  # the run trained the ControlNet
    rows = [json.loads(x) for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    # the exported ControlNet drives the pipeline
    cn = ControlNetModel.from_pretrained(tmp_path / "a" / "run" / "controlnet")
    pipe = StableDiffusionControlNetPipeline.from_pretrained(tiny_teacher, controlnet=cn, safety_checker=None,
                                                             requires_safety_checker=False)
    out = pipe("a photo of a red circle", image=torch.rand(1, 3, 64, 64), num_inference_steps=2, height=64, width=64,
               output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()


@pytest.mark.parametrize("kind", ["segformer", "edges"])
def test_dense_reward_training_exports_models_that_load_by_path(tmp_path, kind):
    from mmreward.shapes.train_dense_rewards import main

    out = tmp_path / "out"
    rec = main([kind, "--work", str(tmp_path / "w"), "--out", str(out), "--steps", "2", "--batch", "2", "--threads", "1"])
    assert rec["steps"] == 2 and json.loads((out / "training.json").read_text())["renders"] == rec["renders"]
    images = torch.rand(1, 3, 64, 64)
    if kind == "segformer":
        assert 0 <= rec["renders"]["pixel_accuracy"] <= 1 and set(rec["renders"]["iou"]) >= {"background", "star"}
        assert SegmentationReward.from_pretrained(str(out)).logits(images).shape == (1, 5, 64, 64)
    else:
        assert 0 <= rec["renders"]["edge_f1"] <= 1
        assert EdgeReward.from_pretrained(str(out)).predict(images).shape == (1, 64, 64)
    with pytest.raises(ConfigError, match="already holds a model"):
        main([kind, "--work", str(tmp_path / "w2"), "--out", str(out), "--steps", "1"])
