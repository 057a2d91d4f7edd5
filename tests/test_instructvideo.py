"""InstructVideo on a tiny AnimateDiff pipeline saved and loaded by path: the edited DDIM steps, gradients
through the last K steps only, a run through the trainer's command line that resumes to the weights of an
uninterrupted run and exports LoRA adapters that load with ``load_lora_weights``."""

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from diffusion_align.instructvideo import InstructVideoConfig, edit_steps
from mmreward.config_file import ConfigError


@pytest.fixture(scope="module")
def tiny_video_pipe(tmp_path_factory) -> str:
    from diffusers import AnimateDiffPipeline, DDIMScheduler

    from diffusion_align.embedded.shapes_t2i import build_components
    from diffusion_align.embedded.train_shapes_t2v import lift_to_video

    c = build_components(seed=0, tiny=True)
    torch.manual_seed(0)
    unet = lift_to_video(c["unet"])
    cfg = {k: v for k, v in c["scheduler"].config.items() if k != "original_inference_steps"}
    sched = DDIMScheduler.from_config({**cfg, "timestep_spacing": "trailing", "prediction_type": "v_prediction"})
    pipe = AnimateDiffPipeline(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"], unet=unet,
                               motion_adapter=None, scheduler=sched)
    folder = tmp_path_factory.mktemp("tiny_animatediff")
    pipe.save_pretrained(folder, safe_serialization=True)
    return str(folder)


def test_config_names_what_is_wrong():
    with pytest.raises(ConfigError, match="backprop_steps must be in 1..12"):
        InstructVideoConfig.from_dict({"backprop_steps": 13})
    with pytest.raises(ConfigError, match="leaves no DDIM step"):
        InstructVideoConfig.from_dict({"tau": 0.01})
    with pytest.raises(ConfigError, match="source must be one of"):
        InstructVideoConfig.from_dict({"source": "web"})
    assert InstructVideoConfig.from_dict({"full_chain": True, "backprop_steps": 20}).backprop_steps == 20


def test_editing_runs_the_last_tau_d_steps():
    ts = torch.arange(999, 0, -50)  # a 20-step schedule, descending
    cfg = InstructVideoConfig()
    steps = edit_steps(ts, cfg)
    assert len(steps) == 12 and torch.equal(steps, ts[8:])  # tau 0.6 of D = 20
    assert torch.equal(edit_steps(ts, InstructVideoConfig(full_chain=True)), ts)


def _cfg(tmp_path, pipe_dir, clip_dir, **over) -> str:
    cfg = dict(method="instructvideo", pretrained=pipe_dir, output_dir=str(tmp_path / "run"), reward=f"clip:{clip_dir}",
               frames=4, segments=2, ddim_steps=4, tau=0.5, backprop_steps=1, guidance_scale=2.0, batch_size=1,
               total_steps=3, checkpoint_every=1, learning_rate=1e-2, gradient_checkpointing=True)
    cfg.update(over)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return str(tmp_path / "cfg.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2])
def test_gradients_flow_through_the_last_k_steps_only(tmp_path, tiny_video_pipe, open_clip_dir, k):
    from diffusion_align.instructvideo import InstructVideoTrainer

    cfg = InstructVideoConfig.from_yaml(_cfg(tmp_path, tiny_video_pipe, open_clip_dir, backprop_steps=k))
    trainer = InstructVideoTrainer(cfg, progress=False)
    calls = []
    trainer.unet.register_forward_hook(lambda m, a, o: calls.append(torch.is_grad_enabled()))
    row = trainer.train_step(0)
    # 2 edited steps (tau 0.5 of 4), one denoiser call each (guidance batched): the last k with gradients
    assert calls == [False] * (2 - k) + [True] * k and row["edited_steps"] == 2
    assert row["grad_norm"] > 0 and -1 <= row["reward"] <= 1 and row["loss"] == pytest.approx(1 - row["reward"])


@pytest.mark.slow
def test_a_run_resumes_to_the_uninterrupted_weights_and_exports_lora(tmp_path, tiny_video_pipe, open_clip_dir):
    from diffusers import AnimateDiffPipeline

    from diffusion_align.train import main

    full = main(["--config", _cfg(tmp_path / "a", tiny_video_pipe, open_clip_dir), "--no-progress"])
    assert full["step"] == 3
    cfg_b = _cfg(tmp_path / "b", tiny_video_pipe, open_clip_dir)
    assert main(["--config", cfg_b, "--stop-after-epochs", "1", "--no-progress"])["step"] == 1
    main(["--config", cfg_b, "--resume", "--no-progress"])
    a = load_file(str(tmp_path / "a" / "run" / "lora" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "run" / "lora" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and a and all(torch.equal(a[k], b[k]) for k in a)
    assert any("motion_modules" in k for k in a) and any("attentions" in k and "motion" not in k for k in a)
    rows = [json.loads(x) for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and all(-1 <= r["reward"] <= 1 for r in rows)
    pipe = AnimateDiffPipeline.from_pretrained(tiny_video_pipe)
    kw = dict(num_frames=4, num_inference_steps=2, guidance_scale=2.0, height=64, width=64, output_type="pt")
    base = pipe("a photo of a red circle", generator=torch.Generator().manual_seed(0), **kw).frames
    pipe.load_lora_weights(str(tmp_path / "a" / "run" / "lora"))
    tuned = pipe("a photo of a red circle", generator=torch.Generator().manual_seed(0), **kw).frames
    assert (tuned - base).abs().max() > 1e-4


def test_benchmark_sampling_does_not_depend_on_the_batch(tiny_video_pipe):
    import sys
    from pathlib import Path

    from diffusers import AnimateDiffPipeline

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from shapes_t2v import sample_videos

    pipe = AnimateDiffPipeline.from_pretrained(tiny_video_pipe)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a photo of a red circle", "a photo of a blue square moving left", "a photo of two green stars"]
    one = sample_videos(pipe, prompts, seed=1, frames=4, steps=2, guidance=2.0, batch=1)
    many = sample_videos(pipe, prompts, seed=1, frames=4, steps=2, guidance=2.0, batch=2)
    assert one.shape == (3, 4, 64, 64, 3) and one.dtype == np.uint8
    assert np.abs(one.astype(int) - many.astype(int)).max() <= 1  # float rounding at most
    other_seed = sample_videos(pipe, prompts[:1], seed=2, frames=4, steps=2, guidance=2.0)
    assert np.abs(other_seed[0].astype(int) - one[0].astype(int)).max() > 1
    chosen = sample_videos(pipe, [prompts[2], prompts[0]], seed=1, frames=4, steps=2, guidance=2.0, ids=[2, 0])
    assert np.abs(chosen[[1, 0]].astype(int) - one[[0, 2]].astype(int)).max() <= 1  # rows keep their noise
    with pytest.raises(ValueError, match="2 ids for 1 prompts"):
        sample_videos(pipe, prompts[:1], seed=1, frames=4, steps=2, guidance=2.0, ids=[0, 1])
