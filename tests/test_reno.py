"""ReNO core: the χ regulariser, per-sample clipping and optimiser semantics of the reference, gradient
flow from a reward through the VAE, scheduler and UNet to the noise, best-iterate bookkeeping, batch
independence, and bad input. Tiny random pipeline and CLIP, saved and loaded through the real loaders."""

import math

import numpy as np
import pytest
import torch
from helpers import interrupt_when, make_tiny_pixart, make_tiny_sdxl

from diffusion_align.embedded.shapes_t2i import build_components, save_pipeline
from diffusion_align.reno import (
    FewStepGenerator,
    RenoConfig,
    chi_regulariser,
    clip_grad_per_sample,
    reno,
    shell_radius,
)
from mmreward import load_reward
from mmreward.errors import RewardError, UserError

PROMPTS = ["a photo of a red circle", "a photo of two blue squares"]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from diffusers import DiffusionPipeline

    folder = tmp_path_factory.mktemp("tiny_reno_pipe")
    save_pipeline(build_components(seed=0, tiny=True), folder)
    return DiffusionPipeline.from_pretrained(folder)


@pytest.fixture(scope="module")
def reward(open_clip_dir):
    return load_reward(f"clip:{open_clip_dir}")


def noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn((n, 4, 16, 16), generator=torch.Generator().manual_seed(seed))


def test_chi_regulariser_value_and_minimum_on_the_shell():
    z = noise(3)
    d = z[0].numel()
    flat = z.flatten(1).double().numpy()
    norm = np.linalg.norm(flat, axis=1)
    assert np.allclose(chi_regulariser(z).numpy(), 0.5 * norm**2 - (d - 1) * np.log(norm), rtol=1e-5)
    r = shell_radius(tuple(z.shape[1:]))
    assert r == pytest.approx(math.sqrt(d - 1))
    u = z[:1] / z[:1].norm()
    values = [chi_regulariser(u * c).item() for c in (0.8 * r, 0.95 * r, r, 1.05 * r, 1.2 * r)]
    assert values[2] == min(values)
    on_shell = (u * r).requires_grad_(True)
    chi_regulariser(on_shell).sum().backward()
    assert on_shell.grad.norm() < 1e-3  # stationary on the shell
    assert chi_regulariser(z.half()).dtype == torch.float32  # computed in fp32 as the reference does


def test_clip_grad_per_sample_scales_only_large_gradients():
    g = torch.zeros(3, 4)
    g[0, 0], g[1, :2], g[2, 0] = 5.0, torch.tensor([0.03, 0.04]), 0.1
    clip_grad_per_sample(g, 0.1)
    assert torch.allclose(g.norm(dim=1), torch.tensor([0.1, 0.05, 0.1]), atol=1e-6)
    assert torch.allclose(g[1, :2], torch.tensor([0.03, 0.04]))


@pytest.mark.slow
def test_generator_is_differentiable_and_frozen(pipe, reward):
    gen = FewStepGenerator(pipe, steps=1)
    z = noise(2).requires_grad_(True)
    images = gen(z, gen.encode(PROMPTS))
    assert images.shape == (2, 3, 64, 64) and images.min() >= 0 and images.max() <= 1
    reward(images, PROMPTS).sum().backward()
    assert z.grad is not None and (z.grad.flatten(1).abs().sum(1) > 0).all()
    assert all(p.grad is None for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
    # the generator's one-step output is the pipeline's own one-step sample from the same noise
    with torch.no_grad():
        ref = pipe(PROMPTS, num_inference_steps=1, guidance_scale=0.0, latents=noise(2), output_type="pt").images
    assert torch.allclose(gen(noise(2), gen.encode(PROMPTS)).detach(), ref, atol=1e-5)


def test_multi_step_generator_is_a_fixed_map_of_the_noise(pipe):
    gen = FewStepGenerator(pipe, steps=2)
    cond = gen.encode(PROMPTS[:1])
    a = gen(noise(1), cond, generator=torch.Generator().manual_seed(3))
    b = gen(noise(1), cond, generator=torch.Generator().manual_seed(3))
    c = gen(noise(1), cond, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="between 1 and 4"):
        FewStepGenerator(pipe, steps=8)


def test_reno_raises_the_reward_and_keeps_the_best_iterate(pipe, reward):
    res = reno(FewStepGenerator(pipe), reward, PROMPTS, noise(2), RenoConfig(iters=12), progress=False)
    rewards = np.array([rec["reward"] for rec in res.log])  # [iters, B]
    assert rewards.shape == (12, 2)
    assert (rewards[-3:].mean(0) > rewards[0] + 0.01).all()  # gradient ascent works on every sample
    assert np.allclose(res.best_reward.numpy(), rewards.max(0), atol=1e-6)
    assert res.best_iter.tolist() == rewards.argmax(0).tolist()
    assert np.allclose(res.initial_reward.numpy(), rewards[0], atol=1e-6)
    # the kept image is the one the best noise generates, and it scores the best reward
    gen = FewStepGenerator(pipe)
    with torch.no_grad():
        again = gen(res.best_noise, gen.encode(PROMPTS))
        assert torch.allclose(again, res.best, atol=1e-5)
        assert torch.allclose(reward(again, PROMPTS), res.best_reward, atol=1e-5)
    # the noise stays near the Gaussian shell (it starts there; the regulariser holds it)
    norms = np.array([rec["noise_norm"] for rec in res.log])
    assert np.all(np.abs(norms / shell_radius((4, 16, 16)) - 1) < 0.15)
    assert all(rec["time"] > 0 for rec in res.log)


def test_first_update_follows_the_reference_optimiser(pipe, reward):
    # SGD, Nesterov, momentum 0.9: the first update is lr * (1 + 0.9) * g, g the gradient of the reward
    # loss plus regulariser clipped per sample: with a clip below the gradient norm (0.05-0.06 here), each
    # sample moves by exactly 5 * 1.9 * 0.01
    cfg = RenoConfig(iters=2, grad_clip=0.01)
    res = reno(FewStepGenerator(pipe), reward, PROMPTS, noise(2), cfg, progress=False)
    gen = FewStepGenerator(pipe)
    z = noise(2).requires_grad_(True)
    loss = -reward(gen(z, gen.encode(PROMPTS)), PROMPTS).sum() + cfg.reg_weight * chi_regulariser(z).sum()
    loss.backward()
    expected = noise(2) - cfg.lr * (1 + cfg.momentum) * clip_grad_per_sample(z.grad.clone(), cfg.grad_clip)
    assert torch.allclose(res.last_noise, expected, atol=1e-5)
    assert torch.allclose((res.last_noise - noise(2)).flatten(1).norm(dim=1), torch.full((2,), 5 * 1.9 * 0.01), atol=1e-5)
    # one evaluation and no update
    assert torch.equal(reno(gen, reward, PROMPTS, noise(2), RenoConfig(iters=1), progress=False).last_noise, noise(2))


def test_a_batch_equals_one_prompt_at_a_time(pipe, reward):
    cfg = RenoConfig(iters=4)
    both = reno(FewStepGenerator(pipe), reward, PROMPTS, noise(2), cfg, progress=False)
    for i in range(2):
        one = reno(FewStepGenerator(pipe), reward, PROMPTS[i : i + 1], noise(2)[i : i + 1], cfg, progress=False)
        assert torch.allclose(one.best_noise[0], both.best_noise[i], atol=1e-4)
        assert one.best_reward[0].item() == pytest.approx(both.best_reward[i].item(), abs=1e-5)


def test_weighted_sum_terms_are_logged(pipe, open_clip_dir):
    summed = load_reward(f"2*clip:{open_clip_dir}, 0.5*clip:{open_clip_dir}?mode=hessel")
    res = reno(FewStepGenerator(pipe), summed, PROMPTS, noise(2), RenoConfig(iters=2), progress=False)
    rec = res.log[0]
    assert set(rec["components"]) == {"clip[0]", "clip[1]"}
    total = 2 * np.array(rec["components"]["clip[0]"]) + 0.5 * np.array(rec["components"]["clip[1]"])
    assert np.allclose(total, rec["reward"], atol=1e-5)
    assert all(not p.requires_grad and p.grad is None for p in summed.parameters())


def test_interrupt_keeps_what_is_finished(pipe, reward):
    def stop(rec):
        if rec["iter"] == 2:
            raise KeyboardInterrupt

    res = reno(FewStepGenerator(pipe), reward, PROMPTS, noise(2), RenoConfig(iters=10), progress=False, on_iteration=stop)
    assert len(res.log) == 3 and res.best.shape == (2, 3, 64, 64)


class NaNReward(torch.nn.Module):
    def forward(self, images, prompts):
        return images.mean(dim=(1, 2, 3)) * float("nan")


def test_bad_input(pipe, reward):
    with pytest.raises(RewardError, match="non-finite"):
        reno(FewStepGenerator(pipe), NaNReward(), PROMPTS, noise(2), RenoConfig(iters=2), progress=False)
    with pytest.raises(ValueError, match="empty prompt"):
        reno(FewStepGenerator(pipe), reward, ["a photo of a star", " "], noise(2), progress=False)
    with pytest.raises(ValueError, match="2 prompts for 3 noise"):
        reno(FewStepGenerator(pipe), reward, PROMPTS, noise(3), progress=False)
    with pytest.raises(ValueError, match="iters"):
        reno(FewStepGenerator(pipe), reward, PROMPTS, noise(2), RenoConfig(iters=0), progress=False)


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_reno_cli_pipe")
    save_pipeline(build_components(seed=1, tiny=True), folder)
    return str(folder)


@pytest.mark.slow
def test_cli_writes_images_index_grid_and_log(tmp_path, pipe_dir, open_clip_dir):
    import json

    from diffusers import DiffusionPipeline
    from PIL import Image

    from diffusion_align.reno.cli import main
    from mmreward.shapes.__main__ import main as shapes_cli

    out = tmp_path / "reno"
    summary = main(["--model", pipe_dir, "--rewards", f"clip:{open_clip_dir}", "--prompt", PROMPTS[0], "--prompt",
                    PROMPTS[1], "--n-seeds", "2", "--iters", "3", "--batch", "3", "--out", str(out), "--no-progress"])
    assert summary["images"] == 4 and not summary["interrupted"]
    index = [json.loads(x) for x in (out / "prompts.jsonl").read_text().splitlines()]
    initial = [json.loads(x) for x in (out / "initial" / "prompts.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["seed"]) for r in index] == [(p, s) for p in PROMPTS for s in (0, 1)]
    assert [r["image"] for r in initial] == [r["image"] for r in index]
    assert all(r["reward"] >= q["reward"] - 1e-6 for r, q in zip(index, initial))  # best iterate kept
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 4 * 3 and {"reward", "reg", "noise_norm", "time", "iter", "seed"} <= set(log[0])
    assert Image.open(out / "grid.png").size[0] >= 2 * 192  # labelled cells a person can read
    # the initial image is the pipeline's plain sample with that seed
    pipe = DiffusionPipeline.from_pretrained(pipe_dir)
    plain = pipe(PROMPTS[1], num_inference_steps=1, guidance_scale=0.0, generator=torch.Generator().manual_seed(1),
                 output_type="np").images[0]
    first = np.asarray(Image.open(out / "initial" / "0001_1.png")).astype(int)
    assert np.abs(first - np.round(plain * 255)).max() <= 1
    # both folders are in the ShapesWorld evaluator's format
    for folder in (out, out / "initial"):
        shapes_cli(["evaluate", "--images", str(folder), "--out", str(tmp_path / "r.json"), "--quiet"])
        assert json.loads((tmp_path / "r.json").read_text())["n"] == 4


def test_cli_never_overwrites_a_run_unless_told_and_the_console_script_exits_0(tmp_path, pipe_dir, open_clip_dir):
    """A second run into the same --out is refused (naming --overwrite) and leaves the first run as it was;
    with --overwrite the earlier run's files go, so no stale image stays beside the new index."""
    import json

    from diffusion_align.reno.cli import cli, main

    out = tmp_path / "reno"
    args = ["--model", pipe_dir, "--rewards", f"clip:{open_clip_dir}", "--iters", "1", "--out", str(out), "--no-progress"]
    assert cli([*args, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1]]) == 0
    first = sorted(p.name for p in out.rglob("*.png"))
    assert first == ["0000_0.png", "0000_0.png", "0001_0.png", "0001_0.png", "grid.png"]
    summary = (out / "summary.json").read_text()
    with pytest.raises(UserError, match="already holds a reno run .*pass --overwrite"):
        main([*args, "--prompt", PROMPTS[0]])
    assert sorted(p.name for p in out.rglob("*.png")) == first and (out / "summary.json").read_text() == summary
    main([*args, "--prompt", PROMPTS[1], "--overwrite"])
    assert sorted(p.name for p in out.rglob("*.png")) == ["0000_0.png", "0000_0.png", "grid.png"]
    assert [json.loads(x)["prompt"] for x in (out / "prompts.jsonl").read_text().splitlines()] == [PROMPTS[1]]
    (out / "notes.txt").write_text("mine")  # files the run did not write are left alone
    main([*args, "--prompt", PROMPTS[0], "--overwrite"])
    assert (out / "notes.txt").read_text() == "mine"


def test_cli_bad_input(tmp_path, pipe_dir, open_clip_dir):
    from diffusion_align.reno.cli import main

    base = ["--rewards", f"clip:{open_clip_dir}", "--iters", "1", "--no-progress"]
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        main(["--model", pipe_dir, "--prompt", "a photo of a star", "--out", str(afile), *base])
    with pytest.raises(UserError, match="cannot load pipeline"):
        main(["--model", str(tmp_path / "missing"), "--prompt", "a photo of a star", "--out", str(tmp_path / "o"), *base])
    with pytest.raises(UserError, match="empty"):
        main(["--model", pipe_dir, "--prompt", "  ", "--out", str(tmp_path / "o"), *base])
    with pytest.raises(UserError, match="no prompts"):
        main(["--model", pipe_dir, "--out", str(tmp_path / "o"), *base])



@pytest.mark.slow
def test_cli_ctrl_c_keeps_finished_images(tmp_path, pipe_dir, open_clip_dir):
    """SIGINT to the running command: the batches already finished (and the interrupted one's best so
    far) are written with a consistent index, and the summary says it was interrupted."""
    import json
    import sys

    out = tmp_path / "reno"
    cmd = [sys.executable, "-m", "diffusion_align.reno", "--model", pipe_dir, "--rewards", f"clip:{open_clip_dir}",
           "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--n-seeds", "3", "--batch", "1", "--iters", "100000",
           "--out", str(out), "--no-progress"]
    log = out / "log.jsonl"
    # the first batch can only finish by interruption (100,000 iterations): wait for its log lines
    code, output = interrupt_when(cmd, lambda: log.is_file() and len(log.read_text().splitlines()) >= 3)
    assert code == 0, output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and summary["images"] == 1, summary
    index = [json.loads(x) for x in (out / "prompts.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["seed"]) for r in index] == [(PROMPTS[0], 0)]
    assert (out / "0000_0.png").is_file() and (out / "initial" / "0000_0.png").is_file()
    assert (out / "grid.png").is_file() and "interrupted" in output
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert all(r["prompt_index"] == 0 and r["seed"] == 0 for r in logged) and len(logged) >= 3



@pytest.mark.slow
def test_cli_bf16_runs_the_half_precision_path(tmp_path, pipe_dir, open_clip_dir):
    """bf16 weights (pipeline and reward) on the CPU: the dtype handling the GPU runs use (noise cast to the
    denoiser's dtype, regulariser and best-iterate bookkeeping in fp32) gives finite rewards, keeps the best
    iterate, and samples the same model as float32 up to bf16 rounding."""
    import json

    from PIL import Image

    from diffusion_align.reno.cli import main

    outs = {}
    for dtype in ("float32", "bf16"):
        out = tmp_path / dtype
        summary = main(["--model", pipe_dir, "--rewards", f"clip:{open_clip_dir}", "--prompt", PROMPTS[0], "--n-seeds", "2",
                        "--iters", "4", "--dtype", dtype, "--out", str(out), "--no-progress"])
        assert summary["images"] == 2 and all(math.isfinite(r) for r in summary["best_reward"])
        assert all(b >= a - 1e-3 for a, b in zip(summary["initial_reward"], summary["best_reward"]))
        log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        assert all(math.isfinite(r["reg"]) and math.isfinite(r["noise_norm"]) for r in log)
        outs[dtype] = np.asarray(Image.open(out / "initial" / "0000_0.png")).astype(float)
    diff = np.abs(outs["bf16"] - outs["float32"]).mean()
    assert diff < 8, diff  # bf16 rounding only: measured 1.1 (another seed of the same model differs by 48)
    with pytest.raises(UserError, match="needs a GPU"):
        main(["--model", pipe_dir, "--prompt", PROMPTS[0], "--dtype", "fp16", "--out", str(tmp_path / "h")])

# ------------------------------------------------------------------------- other pipeline layouts
@pytest.mark.slow
def test_sdxl_turbo_layout_end_to_end(tmp_path, open_clip_dir):
    from diffusers import DiffusionPipeline

    from diffusion_align.pipelines import SDXLAdapter
    from diffusion_align.reno import make_generator

    pipe = DiffusionPipeline.from_pretrained(make_tiny_sdxl(tmp_path))
    gen = make_generator(pipe)
    assert isinstance(gen.adapter, SDXLAdapter) and gen.latent_shape(2) == (2, 4, 32, 32) and gen.image_size == 64
    z = torch.randn(gen.latent_shape(2), generator=torch.Generator().manual_seed(0))
    cond = gen.encode(PROMPTS)
    assert cond["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]] * 2
    # one step equals the pipeline's own one-step sample from the same latents
    with torch.no_grad():
        ref = pipe(PROMPTS, num_inference_steps=1, guidance_scale=0.0, latents=z, output_type="pt").images
        assert torch.allclose(gen(z, cond), ref, atol=1e-4)
    reward = load_reward(f"clip:{open_clip_dir}")
    res = reno(gen, reward, PROMPTS, z, RenoConfig(iters=6), progress=False)
    rewards = np.array([rec["reward"] for rec in res.log])
    assert (rewards[-2:].mean(0) > rewards[0]).all()
    assert all(p.grad is None for m in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2, pipe.vae) for p in m.parameters())


def test_pixart_dmd_layout_end_to_end(tmp_path, open_clip_dir):
    from diffusers import DiffusionPipeline

    from diffusion_align.pipelines import PixArtAdapter
    from diffusion_align.reno import make_generator

    pipe = DiffusionPipeline.from_pretrained(make_tiny_pixart(tmp_path))
    gen = make_generator(pipe, timesteps=[400])
    assert isinstance(gen.adapter, PixArtAdapter) and gen.latent_shape(2) == (2, 4, 8, 8) and gen.image_size == 16
    z = torch.randn(gen.latent_shape(2), generator=torch.Generator().manual_seed(0))
    cond = gen.encode(PROMPTS)
    with torch.no_grad():  # the DMD one-step sample: the clean estimate at t=400, as the pipeline returns it
        ref = pipe(PROMPTS, num_inference_steps=1, timesteps=[400], guidance_scale=1.0, latents=z, output_type="pt",
                   use_resolution_binning=False).images
        assert torch.allclose(gen(z, cond), ref, atol=1e-4)
    reward = load_reward(f"clip:{open_clip_dir}")
    res = reno(gen, reward, PROMPTS, z, RenoConfig(iters=6), progress=False)
    rewards = np.array([rec["reward"] for rec in res.log])
    assert (rewards[-2:].mean(0) > rewards[0]).all()
    assert all(p.grad is None for m in (pipe.transformer, pipe.text_encoder, pipe.vae) for p in m.parameters())
