"""The pipeline adapter on every layout (SD, SDXL, PixArt-α): guided denoising and decoding equal the
pipelines' own sampling; D3PO and DDPO train each layout end to end, and the exported adapters load back
(through ``load_lora_weights`` where diffusers has it, through peft where it does not) and reproduce the
trained model. Tiny random pipelines, saved to temp folders and loaded by path."""

from pathlib import Path

import pytest
import torch
import yaml
from helpers import d3po_margins, make_tiny_pixart, make_tiny_sdxl

from diffusion_align.config import D3POConfig
from diffusion_align.ddim_logprob import ddim_step_deterministic
from diffusion_align.lora import PEFT_FILE, LoraState, load_lora
from diffusion_align.pipelines import PixArtAdapter, SDAdapter, SDXLAdapter, make_adapter
from diffusion_align.rl_trainer import add_lora
from diffusion_align.sampling import load_pipeline

PROMPTS = ["a photo of a red circle", "a photo of two blue squares"]
LAYOUTS = {"sd": SDAdapter, "sdxl": SDXLAdapter, "pixart": PixArtAdapter}


@pytest.fixture(scope="module")
def pipe_dirs(tmp_path_factory) -> dict[str, str]:
    """One tiny pipeline folder per layout, each with a trailing-spacing schedule (DDIM log-probabilities
    need a last step with noise)."""
    from diffusers import DDPMScheduler

    from diffusion_align.embedded.shapes_t2i import build_components, save_pipeline

    sd = tmp_path_factory.mktemp("sd")
    save_pipeline(build_components(seed=0, tiny=True), sd)
    return {"sd": str(sd), "sdxl": make_tiny_sdxl(tmp_path_factory.mktemp("sdxl")),
            "pixart": make_tiny_pixart(tmp_path_factory.mktemp("pixart"), DDPMScheduler(timestep_spacing="trailing"))}


def adapter_ddim(adapter, sched, z, steps: int = 3, guidance: float = 2.0):
    """``steps`` DDIM steps (eta 0) of guided denoiser calls through ``adapter`` from the noise ``z``:
    ``(latents, (cond, uncond), scheduler)``."""
    cond, uncond = adapter.encode(PROMPTS, guidance=True)
    sched.set_timesteps(steps)
    x = z * sched.init_noise_sigma
    for t in sched.timesteps:
        x = ddim_step_deterministic(sched, adapter.denoise(x, t, cond, uncond, guidance), t, x)
    return x, (cond, uncond), sched


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_guided_ddim_and_decode_equal_the_pipelines_own_sampling(pipe_dirs, layout):
    """Three DDIM steps (eta 0, guidance 2) through the adapter give the latents and images the pipeline's
    ``__call__`` gives from the same start: prompt encoding, negative prompt, time ids / masks, the
    guidance formula, the learned-variance split and the VAE's scaling all agree."""
    from diffusers import DDIMScheduler, DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(pipe_dirs[layout])
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=False, timestep_spacing="trailing")
    adapter = make_adapter(pipe)
    assert isinstance(adapter, LAYOUTS[layout])
    z = torch.randn(adapter.latent_shape(2), generator=torch.Generator().manual_seed(0))
    extra = {"use_resolution_binning": False, "clean_caption": False} if layout == "pixart" else {}
    with torch.no_grad():
        ref_latents = pipe(PROMPTS, num_inference_steps=3, guidance_scale=2.0, latents=z, output_type="latent", **extra).images
        ref_images = pipe(PROMPTS, num_inference_steps=3, guidance_scale=2.0, latents=z, output_type="pt", **extra).images
        x, (cond, uncond), sched = adapter_ddim(adapter, pipe.scheduler, z)
        torch.testing.assert_close(x, ref_latents, rtol=1e-4, atol=1e-5)
        images = adapter.decode(x)
    assert images.shape == (2, 3, adapter.image_size, adapter.image_size)
    torch.testing.assert_close(images, ref_images, rtol=1e-4, atol=1e-5)
    # guidance matters (so the comparison above checks the unconditional branch too)
    with torch.no_grad():
        t = sched.timesteps[0]
        assert not torch.allclose(adapter.denoise(z, t, cond, uncond, 2.0), adapter.denoise(z, t, cond, uncond, 1.0))


def test_other_pipelines_are_refused_with_the_supported_layouts_named():
    from types import SimpleNamespace

    with pytest.raises(ValueError, match="Stable Diffusion 1.x/2.x, SDXL, PixArt-α and AnimateDiff layouts, not SimpleNamespace"):
        make_adapter(SimpleNamespace(unet=None, vae=None))
    with pytest.raises(ValueError, match="unknown pipeline layout 'video'"):
        from diffusion_align.pipelines import guided_output

        guided_output(torch.nn.Linear(1, 1), torch.zeros(1, 4, 2, 2), 0, {}, layout="video")


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["sdxl", "pixart"])
def test_d3po_update_raises_the_preferred_log_prob_on_every_layout(pipe_dirs, layout):
    adapter = make_adapter(load_pipeline(pipe_dirs[layout], "cpu"))
    params = add_lora(adapter.denoiser, D3POConfig())
    # (the tiny random SDXL UNet overshoots at the SD test's 3e-3: its last, low-noise step is very sensitive)
    cfg = D3POConfig(sample_steps=3, learning_rate=3e-4, guidance_scale=2.0)
    before, after, ro = d3po_margins(adapter, adapter.denoiser, params, cfg, PROMPTS)
    assert ro.layout == layout and set(ro.cond) == set(ro.uncond)
    assert torch.equal(ro.latents[0, 0], ro.latents[1, 0]) and not torch.equal(ro.latents[0, -1], ro.latents[1, -1])
    assert after > before + 1e-4


def _run(tmp_path: Path, pipe_dir: str, clip_dir: str, method: str) -> Path:
    from diffusion_align.train import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    cfg = dict(method=method, pretrained=pipe_dir, output_dir=str(tmp_path / "run"), prompts=str(prompts),
               feedback=f"clip:{clip_dir}", sample_steps=3, sample_batch_size=2, samples_per_prompt=2, num_epochs=2,
               train_batch_size=2, learning_rate=1e-2, guidance_scale=2.0, lora_alpha=8.0, checkpoint_every=10)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    res = main(["--config", str(tmp_path / "cfg.yaml"), "--no-progress"])
    assert res["epoch"] == 2 and res["updates"] >= 2
    return tmp_path / "run"


def _denoiser_output(adapter, seed: int = 0) -> torch.Tensor:
    z = torch.randn(adapter.latent_shape(2), generator=torch.Generator().manual_seed(seed))
    cond, uncond = adapter.encode(PROMPTS, guidance=True)
    with torch.no_grad():
        return adapter.denoise(z, torch.tensor(500), cond, uncond, 2.0)


@pytest.mark.slow
@pytest.mark.parametrize("layout,method", [("sdxl", "d3po"), ("sdxl", "ddpo"), ("pixart", "d3po"), ("pixart", "ddpo")])
def test_training_and_lora_export_on_other_layouts(tmp_path, pipe_dirs, open_clip_dir, layout, method):
    """``train.py`` runs D3PO and DDPO on SDXL and PixArt pipelines; the exported adapters, loaded into a
    fresh pipeline, give the trained model's output (the checkpoint's LoRA state), which is not the base's."""
    import json

    from diffusers import DiffusionPipeline

    from mmreward.checkpoint import load_state

    run = _run(tmp_path, pipe_dirs[layout], open_clip_dir, method)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and all(r["skipped"] == 0 for r in rows)

    base = _denoiser_output(make_adapter(DiffusionPipeline.from_pretrained(pipe_dirs[layout])))
    trained = make_adapter(DiffusionPipeline.from_pretrained(pipe_dirs[layout]))
    add_lora(trained.denoiser, D3POConfig(lora_alpha=8.0))
    load_state(run / "checkpoint", LoraState(trained.denoiser))
    want = _denoiser_output(trained)
    assert (want - base).abs().max() > 1e-5  # training moved the adapters

    loaded = make_adapter(DiffusionPipeline.from_pretrained(pipe_dirs[layout]))
    load_lora(loaded, run / "lora")
    torch.testing.assert_close(_denoiser_output(loaded), want, rtol=1e-4, atol=1e-5)
    if layout == "sdxl":  # the pipeline's own loader, as a user calls it
        pipe = DiffusionPipeline.from_pretrained(pipe_dirs[layout])
        pipe.load_lora_weights(str(run / "lora"))
        torch.testing.assert_close(_denoiser_output(make_adapter(pipe)), want, rtol=1e-4, atol=1e-5)
    else:  # PixArt has no load_lora_weights in diffusers: peft's format, read by PeftModel
        from peft import PeftModel

        assert (run / "lora" / PEFT_FILE).is_file() and not hasattr(DiffusionPipeline, "load_lora_weights")
        pipe = DiffusionPipeline.from_pretrained(pipe_dirs[layout])
        peft_model = PeftModel.from_pretrained(pipe.transformer, str(run / "lora"))
        adapter = make_adapter(pipe)
        z = torch.randn(adapter.latent_shape(2), generator=torch.Generator().manual_seed(0))
        cond, uncond = adapter.encode(PROMPTS, guidance=True)
        with torch.no_grad():
            out = adapter.denoise(z, torch.tensor(500), cond, uncond, 2.0, model=peft_model)
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_animatediff_adapter_equals_the_pipelines_own_sampling(pipe_dirs):
    """The video layout: latents [B,C,F,h,w], the prompt embeddings repeated per frame, guidance and the
    per-frame decode agree with AnimateDiffPipeline's ``__call__`` (motion modules active: their output
    projections are randomised so frames interact)."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler, DiffusionPipeline

    from diffusion_align.embedded.train_shapes_t2v import lift_to_video
    from diffusion_align.pipelines import AnimateDiffAdapter

    image = DiffusionPipeline.from_pretrained(pipe_dirs["sd"])
    torch.manual_seed(0)
    unet = lift_to_video(image.unet)
    for name, m in unet.named_modules():
        if "motion_modules" in name and name.endswith("proj_out"):
            torch.nn.init.normal_(m.weight, std=0.2)
    pipe = AnimateDiffPipeline(vae=image.vae, text_encoder=image.text_encoder, tokenizer=image.tokenizer, unet=unet,
                               motion_adapter=None, scheduler=DDIMScheduler.from_config(
                                   image.scheduler.config, set_alpha_to_one=False, timestep_spacing="trailing"))
    pipe.set_progress_bar_config(disable=True)
    adapter = make_adapter(pipe)
    assert isinstance(adapter, AnimateDiffAdapter)
    adapter.frames = 4
    z = torch.randn(adapter.latent_shape(2), generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 4, 4, 16, 16)
    with torch.no_grad():
        ref = pipe(PROMPTS, num_frames=4, num_inference_steps=3, guidance_scale=2.0, latents=z, output_type="latent").frames
        x = adapter_ddim(adapter, pipe.scheduler, z)[0]
        torch.testing.assert_close(x, ref, rtol=1e-4, atol=1e-5)
        video = adapter.decode(x)
        frames = pipe(PROMPTS, num_frames=4, num_inference_steps=3, guidance_scale=2.0, latents=z, output_type="pt").frames
    assert video.shape == (2, 4, 3, 64, 64)
    torch.testing.assert_close(video, frames, rtol=1e-4, atol=1e-5)
