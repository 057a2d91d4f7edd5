"""D3PO / DDPO trainer: the DDIM log-probability against an independent Gaussian computation, the losses
against hand-computed values, rollout bookkeeping, config validation, LoRA export, resume-after-kill and
a two-process accelerate launch. Tiny random pipelines, saved and loaded through the real loaders."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import d3po_margins, interrupt_when

from diffusion_align.config import ConfigError, D3POConfig, DDPOConfig, DiffusionRLConfig
from diffusion_align.ddim_logprob import ddim_step_deterministic, ddim_step_with_logprob
from diffusion_align.losses import PerPromptStatTracker, d3po_loss, ddpo_loss, pair_preferences
from diffusion_align.rl_trainer import PolicyUpdate, train_steps
from diffusion_align.rollout import (
    adapters_disabled,
    ddim_scheduler,
    guided_output,
    initial_noise,
    sample_rollouts,
    transition_log_prob,
)
from mmreward.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a photo of a red circle", "a photo of a square left of a star"]


@pytest.fixture(scope="module")
def tiny_pipe_dir(tmp_path_factory) -> str:
    from diffusion_align.embedded.shapes_t2i import build_components, save_pipeline

    folder = tmp_path_factory.mktemp("tiny_d3po_pipe")
    save_pipeline(build_components(seed=0, tiny=True), folder)
    return str(folder)


# ------------------------------------------------------------------------------- DDIM log-probability
@pytest.mark.parametrize("prediction_type,clip_sample,eta", [("epsilon", False, 1.0), ("v_prediction", False, 1.0),
                                                             ("epsilon", True, 1.0), ("epsilon", False, 0.5),
                                                             ("v_prediction", False, 0.3)])
def test_ddim_logprob_matches_an_independent_gaussian(prediction_type, clip_sample, eta):
    """Mean and σ from diffusers' own DDIMScheduler.step / _get_variance, density from torch.distributions
    (``eta`` < 1 too: σ = eta · √variance, and the mean's noise direction shrinks with it)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type,
                          timestep_spacing="trailing", clip_sample=clip_sample)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=g)
    out = torch.randn(3, 4, 8, 8, generator=g)
    z = torch.randn(3, 4, 8, 8, generator=g)
    for t in sched.timesteps[:-1]:  # every step but the last (where the reference clamps prev_t to 0)
        prev_t = int(t) - 1000 // 10
        std = eta * math.sqrt(sched._get_variance(int(t), prev_t))
        mean = sched.step(out, t, x, eta=eta, variance_noise=torch.zeros_like(x)).prev_sample
        drawn = sched.step(out, t, x, eta=eta, variance_noise=z).prev_sample
        expected = torch.distributions.Normal(mean, std).log_prob(drawn).flatten(1).mean(1)
        prev, lp = ddim_step_with_logprob(sched, out, t, x, eta=eta, prev_sample=drawn)
        torch.testing.assert_close(lp, expected, rtol=1e-4, atol=1e-4)
        # sampling: mean + σ·noise with the generator's noise
        gen = torch.Generator().manual_seed(5)
        sampled, lp2 = ddim_step_with_logprob(sched, out, t, x, eta=eta, generator=gen)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(sampled, mean + std * noise, rtol=1e-4, atol=1e-4)
        assert torch.allclose(lp2, torch.distributions.Normal(mean, std).log_prob(sampled).flatten(1).mean(1), atol=1e-4)


def test_ddim_logprob_last_step_uses_alpha_0_and_per_sample_timesteps():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(prediction_type="epsilon", timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)
    sched.set_timesteps(4)
    x, out = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    t_last = sched.timesteps[-1]
    a_t, a_p = sched.alphas_cumprod[int(t_last)].double(), sched.alphas_cumprod[0].double()
    std = ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)).sqrt()
    x0 = (x.double() - (1 - a_t).sqrt() * out) / a_t.sqrt()
    mean = a_p.sqrt() * x0 + (1 - a_p - std**2).sqrt() * out
    prev = mean + std * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, lp = ddim_step_with_logprob(sched, out, t_last, x, prev_sample=prev.float())
    assert torch.isfinite(lp).all() and std > 0  # σ > 0 at the last step: ᾱ_0, not final_alpha_cumprod = 1
    expected = torch.distributions.Normal(mean, std).log_prob(prev).flatten(1).mean(1).float()
    torch.testing.assert_close(lp, expected, rtol=1e-3, atol=1e-2)
    # a [B] timestep vector equals stepping each sample at its own timestep
    ts = torch.stack([sched.timesteps[0], sched.timesteps[2]])
    _, both = ddim_step_with_logprob(sched, out, ts, x, prev_sample=x)
    one = [ddim_step_with_logprob(sched, out[i : i + 1], ts[i], x[i : i + 1], prev_sample=x[i : i + 1])[1] for i in range(2)]
    torch.testing.assert_close(both, torch.cat(one))
    with pytest.raises(ValueError, match="eta must be > 0"):
        ddim_step_with_logprob(sched, out, t_last, x, eta=0.0)


def test_a_schedule_ending_at_t0_is_refused():
    """`leading` spacing without offset ends at t = 0: a step with σ = 0 has no log-probability."""
    from types import SimpleNamespace

    from diffusers import DDIMScheduler

    sched = DDIMScheduler(timestep_spacing="leading", steps_offset=0, clip_sample=False)
    sched.set_timesteps(4)
    assert int(sched.timesteps[-1]) == 0
    with pytest.raises(ValueError, match="zero-variance"):
        ddim_step_with_logprob(sched, torch.randn(1, 4, 4, 4), sched.timesteps[-1], torch.randn(1, 4, 4, 4))
    with pytest.raises(ValueError, match="ends at t = 0"):
        ddim_scheduler(SimpleNamespace(scheduler=sched, device="cpu"), 4)


def test_graded_evaluator_credits_each_clause_on_its_own():
    from diffusion_align.feedback import _clause_holds
    from mmreward.shapes import Detection, parse_prompt

    meta = parse_prompt("a photo of a red circle and a blue square")
    only_square = [Detection("square", "blue", (0.6, 0.4, 0.8, 0.6), 100, 0.0), Detection("circle", "green", (0.1, 0.4, 0.3, 0.6), 100, 0.0)]
    only_circle = [Detection("square", "green", (0.6, 0.4, 0.8, 0.6), 100, 0.0), Detection("circle", "red", (0.1, 0.4, 0.3, 0.6), 100, 0.0)]
    assert [_clause_holds(meta["include"], k, only_square) for k in range(2)] == [False, True]
    assert [_clause_holds(meta["include"], k, only_circle) for k in range(2)] == [True, False]
    pos = parse_prompt("a photo of a circle left of a square")
    left = [Detection("circle", "red", (0.1, 0.4, 0.3, 0.6), 100, 0.0), Detection("square", "blue", (0.6, 0.4, 0.8, 0.6), 100, 0.0)]
    right = [Detection("circle", "red", (0.6, 0.4, 0.8, 0.6), 100, 0.0), Detection("square", "blue", (0.1, 0.4, 0.3, 0.6), 100, 0.0)]
    assert [_clause_holds(pos["include"], k, left) for k in range(2)] == [True, True]
    assert [_clause_holds(pos["include"], k, right) for k in range(2)] == [True, False]


def test_strict_evaluator_fails_correct_images_with_extra_shapes(monkeypatch):
    """GenEval's rules ignore shapes the prompt does not name; ``evaluator:strict`` does not."""
    import mmreward.shapes.evaluator as ev
    from diffusion_align.feedback import evaluator_scores, make_scorer
    from mmreward.shapes import Detection

    pair = [Detection("circle", "red", (0.1, 0.4, 0.3, 0.6), 100, 0.0), Detection("square", "blue", (0.6, 0.4, 0.8, 0.6), 100, 0.0)]
    extra = pair + [Detection("triangle", "green", (0.4, 0.1, 0.5, 0.2), 50, 0.0)]
    wrong = pair[:1] + [Detection("square", "green", (0.6, 0.4, 0.8, 0.6), 100, 0.0)]
    per_image = iter([pair, extra, wrong] * 3)
    monkeypatch.setattr(ev, "detect", lambda img: next(per_image))
    images, prompts = torch.zeros(3, 3, 8, 8), ["a photo of a red circle and a blue square"] * 3
    assert evaluator_scores(images, prompts, "binary").tolist() == [1.0, 1.0, 0.0]
    assert evaluator_scores(images, prompts, "strict").tolist() == [1.0, 0.0, 0.0]
    assert evaluator_scores(images, prompts, "graded").tolist() == [1.0, 1.0, 0.25]  # one clause of two, times 1/2
    with pytest.raises(ValueError, match="evaluator's modes"):
        make_scorer("evaluator:lenient")
    with pytest.raises(ValueError, match="evaluator mode"):
        evaluator_scores(images, prompts, "lenient")


# ------------------------------------------------------------------------------------------ losses
def test_d3po_loss_hand_computed():
    logp = torch.tensor([[0.05, -0.02], [0.5, -0.5], [0.03, 0.01]], requires_grad=True)
    ref = torch.zeros(3, 2)
    pref = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]])
    loss = d3po_loss(logp, ref, pref, beta=0.1, eps=0.1)
    # pair 0: log r = (0.05, -0.02) inside the clamp: -log σ(0.1·(0.05 + 0.02))
    l0 = math.log1p(math.exp(-0.1 * 0.07))
    # pair 1: r clamped to (1.1, 0.9); the second image is preferred: -log σ(0.1·(-log 1.1 + log 0.9))
    l1 = math.log1p(math.exp(-0.1 * (-math.log(1.1) + math.log(0.9))))
    l2 = math.log(2)  # tie: constant
    assert loss.item() == pytest.approx((l0 + l1 + l2) / 3, abs=1e-6)
    loss.backward()
    # gradients: only the unclamped, non-tied pair; preferred log-prob pushed up, rejected down
    s = 1 / (1 + math.exp(0.1 * 0.07))  # 1 - σ(x)
    torch.testing.assert_close(logp.grad[0], torch.tensor([-0.1 * s / 3, 0.1 * s / 3]))
    assert torch.all(logp.grad[1:] == 0)


def test_d3po_loss_stays_finite_when_log_ratios_overflow_exp():
    """Late steps have a small σ: log π_θ − log π_ref of hundreds must give finite (zero) gradients, not
    exp-overflow NaNs; an in-range pair still gets its gradient."""
    logp = torch.tensor([[400.0, -300.0], [0.05, -0.02]], requires_grad=True)
    loss = d3po_loss(logp, torch.zeros(2, 2), torch.tensor([[1.0, -1.0], [1.0, -1.0]]), beta=0.1, eps=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert logp.grad[0].abs().sum() == 0 and (logp.grad[1].abs() > 0).all()


def test_a_non_finite_gradient_skips_the_step_and_keeps_the_weights():
    from accelerate import Accelerator

    from diffusion_align.rl_trainer import optimizer_step

    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1)
    w.grad = torch.tensor([1.0, float("nan"), 0.0])
    step = optimizer_step(Accelerator(cpu=True), opt, [w], 1.0)
    assert not math.isfinite(step["grad_norm"]) and step["skipped"] == 1.0
    assert torch.equal(w.detach(), torch.ones(3)) and w.grad is None
    w.grad = torch.tensor([1.0, 0.0, 0.0])
    assert optimizer_step(Accelerator(cpu=True), opt, [w], 1.0) == {"grad_norm": 1.0, "skipped": 0.0} and w[0] < 1


def test_ddpo_loss_hand_computed():
    logp = torch.tensor([0.1, -0.1, 0.0, 0.2])
    old = torch.zeros(4)
    adv = torch.tensor([2.0, 2.0, -1.0, 9.0])  # 9 is clipped to 5
    loss, stats = ddpo_loss(logp, old, adv, clip_range=0.05, adv_clip_max=5.0)
    r = torch.exp(logp)
    expected = [
        max(-2 * r[0].item(), -2 * 1.05),  # ratio above the clip: the clipped (larger) term
        max(-2 * r[1].item(), -2 * 0.95),
        max(1 * 1.0, 1 * 1.0),
        max(-5 * r[3].item(), -5 * 1.05),
    ]
    assert loss.item() == pytest.approx(float(np.mean(expected)), abs=1e-6)
    assert stats["approx_kl"].item() == pytest.approx(0.5 * float(np.mean([0.01, 0.01, 0.0, 0.04])), abs=1e-7)
    assert stats["clipfrac"].item() == pytest.approx(0.75)


def test_per_prompt_stat_tracker_and_pair_preferences():
    tr = PerPromptStatTracker(buffer_size=4, min_count=3)
    a = tr.update(["p", "p", "q"], np.array([1.0, 3.0, 5.0]))  # too few per prompt: batch statistics
    batch = np.array([1.0, 3.0, 5.0])
    np.testing.assert_allclose(a, (batch - batch.mean()) / (batch.std() + 1e-6))
    b = tr.update(["p", "q"], np.array([5.0, 0.0]))  # p now has 3 values (1, 3, 5): its own statistics
    assert b[0] == pytest.approx((5 - 3) / (np.std([1, 3, 5]) + 1e-6))
    tr.update(["p", "p"], np.array([7.0, 9.0]))
    assert list(tr.stats["p"]) == [3.0, 5.0, 7.0, 9.0]  # a bounded buffer
    h = pair_preferences(torch.tensor([0.2, 0.9, 0.5, 0.5]), torch.tensor([[0, 1], [2, 3], [1, 0]]))
    assert h.tolist() == [[-1, 1], [0, 0], [1, -1]]


# ------------------------------------------------------------------------------------------- rollouts
def _lora_pipe(tiny_pipe_dir):
    from diffusion_align.rl_trainer import add_lora
    from diffusion_align.sampling import load_pipeline

    pipe = load_pipeline(tiny_pipe_dir, "cpu")
    params = add_lora(pipe.unet, D3POConfig())
    return pipe, params


@pytest.mark.slow
def test_rollout_log_probs_are_recomputed_exactly_and_reference_is_the_base(tiny_pipe_dir):
    pipe, params = _lora_pipe(tiny_pipe_dir)
    with torch.no_grad():  # move the adapters away from their zero start
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    noise = initial_noise(pipe, [3, 3])
    ro = sample_rollouts(pipe, pipe.unet, PROMPTS, noise, [10, 11], steps=4, eta=1.0, guidance=2.0, reference=True)
    assert ro.latents.shape == (2, 5, 4, 16, 16) and ro.log_probs.shape == (2, 4) and ro.images.shape == (2, 3, 64, 64)
    assert torch.equal(ro.latents[0, 0], ro.latents[1, 0]) and not torch.equal(ro.latents[0, 1], ro.latents[1, 1])
    sched = ddim_scheduler(pipe, 4)
    for j in range(4):
        idx = torch.full((2,), j)
        lp = transition_log_prob(sched, pipe.unet, ro, idx, 2.0, 1.0)
        torch.testing.assert_close(lp, ro.log_probs[:, j], rtol=1e-4, atol=1e-4)
        with torch.no_grad(), adapters_disabled(pipe.unet):
            ref = transition_log_prob(sched, pipe.unet, ro, idx, 2.0, 1.0)
        torch.testing.assert_close(ref, ro.ref_log_probs[:, j], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ro.log_probs, ro.ref_log_probs)  # the adapters change the policy
    lp = transition_log_prob(sched, pipe.unet, ro, torch.tensor([0, 3]), 2.0, 1.0)
    lp.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for n, p in pipe.unet.named_parameters() if "lora" not in n)  # base frozen


def test_deterministic_ddim_step_is_diffusers_eta_zero_step():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing")
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for t in sched.timesteps[:-1]:  # the last step: the reference clamps prev_t to 0 (diffusers: final_alpha_cumprod)
        torch.testing.assert_close(ddim_step_deterministic(sched, out, t, x), sched.step(out, t, x, eta=0.0).prev_sample)


@pytest.mark.slow
def test_mixed_sampler_is_stochastic_for_the_first_steps_only(tiny_pipe_dir):
    """sde_steps = 2 of 4: trajectories sharing x_T diverge in steps 0-1, the rest is a deterministic function
    of x after step 1 (NaN log-probabilities there); the stochastic steps' log-probabilities are the same as
    a fully stochastic sampler's for the same draws."""
    pipe, _ = _lora_pipe(tiny_pipe_dir)
    noise = initial_noise(pipe, [3, 3])
    ro = sample_rollouts(pipe, pipe.unet, PROMPTS[:1] * 2, noise, [10, 11], steps=4, guidance=2.0, reference=True, sde_steps=2)
    full = sample_rollouts(pipe, pipe.unet, PROMPTS[:1] * 2, noise, [10, 11], steps=4, guidance=2.0, reference=True)
    assert torch.isfinite(ro.log_probs[:, :2]).all() and torch.isnan(ro.log_probs[:, 2:]).all()
    assert torch.isnan(ro.ref_log_probs[:, 2:]).all()
    torch.testing.assert_close(ro.latents[:, :3], full.latents[:, :3])  # the same draws up to step 2
    torch.testing.assert_close(ro.log_probs[:, :2], full.log_probs[:, :2])
    assert not torch.allclose(ro.latents[:, 3:], full.latents[:, 3:])  # then no noise is added
    sched = ddim_scheduler(pipe, 4)
    x = ro.latents[:, 2]
    for j in (2, 3):
        with torch.no_grad():
            out = guided_output(pipe.unet, x, sched.timesteps[j], ro.cond, ro.uncond, 2.0)
        x = ddim_step_deterministic(sched, out, sched.timesteps[j], x)
        torch.testing.assert_close(x, ro.latents[:, j + 1])
    with pytest.raises(ValueError, match="sde_steps must be in"):
        sample_rollouts(pipe, pipe.unet, PROMPTS[:1], noise[:1], [1], steps=4, sde_steps=5)


@pytest.mark.slow
def test_d3po_update_raises_the_preferred_log_prob(tiny_pipe_dir):
    pipe, params = _lora_pipe(tiny_pipe_dir)
    cfg = D3POConfig(sample_steps=3, learning_rate=3e-3, guidance_scale=1.0)
    before, after, _ = d3po_margins(pipe, pipe.unet, params, cfg, PROMPTS, reference=True)
    assert after > before + 1e-4


def test_pair_components_and_minibatches_keep_groups_together():
    from diffusion_align.d3po import pair_components, pair_minibatches

    pairs = torch.tensor([[4, 5], [0, 2], [1, 2], [4, 7], [9, 8]])
    group = torch.arange(10) // 4  # trajectories 0-3, 4-7, 8-9 share an x_T
    images, pos, comp = pair_components(pairs, group)
    assert images.tolist() == [0, 1, 2, 4, 5, 7, 8, 9]
    assert torch.equal(images[pos], pairs)
    groups = {tuple(images[comp == c].tolist()) for c in comp.unique()}
    assert groups == {(0, 1, 2), (4, 5, 7), (8, 9)}
    batches = pair_minibatches(pairs, group, size=2, g=torch.Generator().manual_seed(0))
    assert sorted(torch.cat(batches).tolist()) == list(range(5))  # every pair once
    for b in batches:  # a group's pairs never straddle two minibatches
        assert len(b) >= 2 or b is batches[-1]
        for other in batches:
            if other is not b:
                assert not set((pairs[b, 0] // 4).tolist()) & set((pairs[other, 0] // 4).tolist())


def test_noise_groups_are_the_trajectories_sharing_x_T_in_order_of_appearance():
    from types import SimpleNamespace

    from diffusion_align.d3po import noise_groups

    x_T = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    order = [2, 2, 0, 0, 0, 1, 2]  # x_T of each trajectory: a group need not be sorted by value or contiguous
    latents = torch.stack([x_T[i] for i in order])[:, None].repeat(1, 3, 1, 1, 1)
    latents[:, 1:] += torch.randn(latents[:, 1:].shape)  # later steps differ within a group
    assert noise_groups(SimpleNamespace(latents=latents)).tolist() == [0, 0, 1, 1, 1, 2, 0]


@pytest.mark.slow
@pytest.mark.parametrize("reference,kl_coef", [("base", 0.0), ("sampler", 0.0), ("base", 3.0)])
def test_d3po_update_with_shared_images_equals_the_per_pair_computation(tiny_pipe_dir, reference, kl_coef):
    """Three pairs within one group of 3 and one pair of another: the update's gradient (each image run
    once per step) equals the mean over pairs and steps of the D3PO loss computed pair by pair, with π_ref
    the base model (adapters off) or the sampling-time policy (its recorded log-probabilities); with
    ``kl_coef``, plus ``kl_coef · ½·(log π_θ − log π_ref)²`` averaged over the distinct images and steps."""
    import torch.nn.functional as F
    from accelerate import Accelerator

    from diffusion_align.d3po import d3po_update

    pipe, params = _lora_pipe(tiny_pipe_dir)
    with torch.no_grad():  # adapters away from zero, so policy and reference differ
        g = torch.Generator().manual_seed(3)
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    cfg = D3POConfig(sample_steps=3, guidance_scale=2.0, beta=5.0, eps=0.5, max_grad_norm=1e9, samples_per_prompt=3,
                      reference=reference, kl_coef=kl_coef)
    prompts = [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
    ro = sample_rollouts(pipe, pipe.unet, prompts, initial_noise(pipe, [1, 1, 1, 2, 2, 2]), [5, 6, 7, 8, 9, 10],
                         steps=3, guidance=2.0)
    if reference == "sampler":  # the policy moved after sampling: the ratio is against the recorded log-probs
        ro.log_probs = ro.log_probs + 0.3 * torch.randn(ro.log_probs.shape, generator=torch.Generator().manual_seed(1))
    sched = ddim_scheduler(pipe, 3)
    pairs = torch.tensor([[0, 1], [0, 2], [2, 1], [4, 3]])
    pref = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]])

    grads = {}

    class Capture(torch.optim.SGD):
        def step(self, closure=None):
            grads.update({i: p.grad.clone() for i, p in enumerate(params)})

    d3po_update(PolicyUpdate(cfg, Accelerator(cpu=True), sched, pipe.unet, Capture(params, lr=0.0), params), ro, pairs,
                pref, torch.Generator().manual_seed(0))
    total = 0.0
    for (a, b), h in zip(pairs.tolist(), pref):
        for j in range(3):
            idx = torch.tensor([a, b])
            sub = ro.select(idx)
            step = torch.full((2,), j)
            if reference == "sampler":
                ref = ro.log_probs[idx, j]
            else:
                with torch.no_grad(), adapters_disabled(pipe.unet):
                    ref = transition_log_prob(sched, pipe.unet, sub, step, 2.0, 1.0)
            lp = transition_log_prob(sched, pipe.unet, sub, step, 2.0, 1.0)
            log_r = torch.clamp(lp - ref, math.log(1 - cfg.eps), math.log(1 + cfg.eps))
            total = total - F.logsigmoid(cfg.beta * (h * log_r).sum()) / (len(pairs) * 3)
    if kl_coef:
        images = torch.tensor([0, 1, 2, 3, 4])
        for j in range(3):
            step = torch.full((5,), j)
            with torch.no_grad(), adapters_disabled(pipe.unet):
                ref = transition_log_prob(sched, pipe.unet, ro.select(images), step, 2.0, 1.0)
            lp = transition_log_prob(sched, pipe.unet, ro.select(images), step, 2.0, 1.0)
            total = total + kl_coef * 0.5 * ((lp - ref) ** 2).mean() / 3
    for p in params:
        p.grad = None
    total.backward()
    assert any(g.abs().sum() > 0 for g in grads.values())
    for i, p in enumerate(params):
        # (the sampler variant's larger log-ratios leave a few near-cancelling entries at float32 noise)
        torch.testing.assert_close(grads[i], p.grad, rtol=1e-4, atol=1e-7 if reference == "base" else 1e-6)


def test_train_steps_draw_from_the_first_steps_only():
    g = torch.Generator().manual_seed(0)
    every = train_steps(D3POConfig(sample_steps=10), 10, g, 64)
    assert every.shape == (64, 10) and all(sorted(r.tolist()) == list(range(10)) for r in every)
    early = train_steps(D3POConfig(sample_steps=10, train_first_steps=4), 10, g, 64)
    assert early.shape == (64, 4) and all(sorted(r.tolist()) == [0, 1, 2, 3] for r in early)
    assert len({tuple(r.tolist()) for r in early}) > 1  # a random order per row
    half = train_steps(D3POConfig(sample_steps=10, train_first_steps=4, timestep_fraction=0.5), 10, g, 256)
    assert half.shape == (256, 2) and half.max() <= 3 and (half[:, 0] != half[:, 1]).all()
    assert set(half.flatten().tolist()) == {0, 1, 2, 3}


# -------------------------------------------------------------------------------------------- config
def test_config_validation(tmp_path):
    assert DiffusionRLConfig.from_dict({"learning_rate": "3e-4", "num_epochs": 2}).learning_rate == 3e-4
    assert type(DiffusionRLConfig.from_dict({})) is D3POConfig  # the method's own config class
    assert type(DiffusionRLConfig.from_dict({"method": "ddpo"})) is DDPOConfig
    bad = [
        ({"lerning_rate": 1e-4}, "unknown config key"),
        ({"num_epochs": "ten"}, "num_epochs must be int"),
        ({"sample_eta": 0.0}, "eta = 0 is deterministic"),
        ({"method": "ppo"}, "method must be one of"),
        ({"samples_per_prompt": 1}, "d3po needs samples_per_prompt >= 2"),
        ({"feedback": "labels"}, "labels_dir"),
        ({"method": "ddpo", "feedback": "labels", "labels_dir": "x"}, "ddpo needs a reward"),
        ({"lora_targets": "to_q"}, "lora_targets must be a list"),
        ({"timestep_fraction": 1.5}, "timestep_fraction"),
        ({"train_first_steps": 0}, "train_first_steps must be in"),
        ({"train_first_steps": 21, "sample_steps": 20}, "train_first_steps must be in"),
        ({"sde_steps": 0}, "sde_steps must be in"),
        ({"kl_coef": -1.0}, "kl_coef must be >= 0"),
        ({"sde_steps": 3}, "set train_first_steps <= sde_steps"),
        ({"sde_steps": 3, "train_first_steps": 4}, "set train_first_steps <= sde_steps"),
        ({"sample_eta": 1.5}, "sample_eta must be in"),
        ({"method": "ddpo", "stat_min_count": 32}, "must not exceed stat_buffer_size"),
        ({"clip_range": 0.1}, "unknown config key"),  # a DDPO key in a D3PO config
        ({"method": "ddpo", "beta": 0.1}, "unknown config key"),
        ({"reference": "frozen"}, "reference must be base or sampler"),
    ]
    for data, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            DiffusionRLConfig.from_dict(data)
    with pytest.raises(ConfigError, match="not found"):
        DiffusionRLConfig.from_yaml(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("method: [d3po\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        DiffusionRLConfig.from_yaml(tmp_path / "broken.yaml")
    shipped = [f for f in sorted((ROOT / "configs").glob("*.yaml")) if "method:" in f.read_text()]
    assert {f.stem for f in shipped} >= {"d3po_shapes", "ddpo_shapes", "drakes_dna"}
    from diffusion_align.train import config_method, method_entry

    for f in shipped:  # every shipped trainer config is valid (the vlm_rl ones: tests/test_vlm_rl_train.py)
        method_entry(config_method(str(f), []))[0].from_yaml(f)


def _write_cfg(tmp_path, pipe_dir, clip_dir, **over) -> Path:
    import yaml

    cfg = dict(method="d3po", pretrained=pipe_dir, output_dir=str(tmp_path / "run"), prompts="shapes:train",
               feedback=f"clip:{clip_dir}", sample_steps=3, sample_batch_size=2, samples_per_prompt=2,
               num_epochs=3, train_batch_size=1, learning_rate=1e-2, guidance_scale=2.0, checkpoint_every=10,
               grid_every=1)
    cfg.update(over)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _lora_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "pytorch_lora_weights.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["d3po", "ddpo"])
def test_resume_after_kill_equals_an_uninterrupted_run(tmp_path, tiny_pipe_dir, open_clip_dir, method):
    from diffusion_align.train import main

    full = main(["--config", str(_write_cfg(tmp_path / "a", tiny_pipe_dir, open_clip_dir, method=method)), "--no-progress"])
    assert full["epoch"] == 3 and full["updates"] > 0
    cfg_b = _write_cfg(tmp_path / "b", tiny_pipe_dir, open_clip_dir, method=method)
    part = main(["--config", str(cfg_b), "--stop-after-epochs", "1", "--no-progress"])
    assert part["epoch"] == 1 and not (tmp_path / "b" / "run" / "lora").exists()
    with pytest.raises(UserError, match="already holds a checkpoint"):
        main(["--config", str(cfg_b), "--no-progress"])  # never overwrites a run by accident
    with pytest.raises(UserError, match=r"--resume with a changed config \(lora_rank: 4 in the run, 8 now\)"):
        main(["--config", str(cfg_b), "--resume", "--set", "lora_rank=8", "--no-progress"])
    rest = main(["--config", str(cfg_b), "--resume", "--no-progress"])
    assert rest["epoch"] == 3 and rest["samples"] == full["samples"]
    a, b = _lora_weights(tmp_path / "a" / "run" / "lora"), _lora_weights(tmp_path / "b" / "run" / "lora")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k or "lora.up" in k)  # it trained
    rows = [json.loads(x) for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert len(list((tmp_path / "b" / "run" / "grids").glob("epoch_*.png"))) == 3


@pytest.mark.slow
def test_lora_export_loads_with_load_lora_weights(tmp_path, tiny_pipe_dir, open_clip_dir):
    from diffusers import DiffusionPipeline

    from diffusion_align.train import main

    # alpha != rank: the export must carry the scale (alpha / rank) to `load_lora_weights`
    main(["--config", str(_write_cfg(tmp_path, tiny_pipe_dir, open_clip_dir, num_epochs=2, lora_alpha=8.0)), "--no-progress"])
    pipe = DiffusionPipeline.from_pretrained(tiny_pipe_dir)
    gen = torch.Generator().manual_seed(0)
    base = pipe(PROMPTS[0], num_inference_steps=2, generator=gen, output_type="pt").images
    pipe.load_lora_weights(str(tmp_path / "run" / "lora"))
    tuned = pipe(PROMPTS[0], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert (tuned - base).abs().max() > 1e-4  # the adapters are loaded and change the model
    # and they are exactly the trained ones: the checkpoint's adapters give the same images
    pipe2 = DiffusionPipeline.from_pretrained(tiny_pipe_dir)
    pipe2.load_lora_weights(str(tmp_path / "run" / "checkpoint"))
    again = pipe2(PROMPTS[0], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    torch.testing.assert_close(again, tuned)
    # ... and equal the trained UNet itself (LoRA state restored from the training checkpoint, alpha 8)
    from diffusion_align.lora import LoraState
    from diffusion_align.rl_trainer import add_lora
    from mmreward.checkpoint import load_state

    pipe3 = DiffusionPipeline.from_pretrained(tiny_pipe_dir)
    add_lora(pipe3.unet, D3POConfig(lora_alpha=8.0))
    load_state(tmp_path / "run" / "checkpoint", LoraState(pipe3.unet))
    direct = pipe3(PROMPTS[0], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    torch.testing.assert_close(direct, tuned, rtol=1e-4, atol=1e-4)


def test_bad_input_gives_clear_errors(tmp_path, tiny_pipe_dir, open_clip_dir):
    from diffusion_align.train import main

    with pytest.raises(UserError, match="cannot load pipeline"):
        main(["--config", str(_write_cfg(tmp_path, str(tmp_path / "nope"), open_clip_dir)), "--no-progress"])
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="holds no prompts"):
        main(["--config", str(_write_cfg(tmp_path, tiny_pipe_dir, open_clip_dir, prompts=str(empty))), "--no-progress"])
    with pytest.raises(UserError, match="no checkpoint"):
        main(["--config", str(_write_cfg(tmp_path, tiny_pipe_dir, open_clip_dir)), "--resume", "--no-progress"])
    with pytest.raises(UserError, match="unknown config key"):
        main(["--config", str(_write_cfg(tmp_path, tiny_pipe_dir, open_clip_dir)), "--set", "lr=1", "--no-progress"])


@pytest.mark.slow
def test_nan_feedback_stops_without_corrupting_the_checkpoint(tmp_path, tiny_pipe_dir, monkeypatch):
    import diffusion_align.feedback as fb
    from diffusion_align.train import main

    cfg = _write_cfg(tmp_path, tiny_pipe_dir, "unused", feedback="evaluator", checkpoint_every=1)
    main(["--config", str(cfg), "--stop-after-epochs", "1", "--no-progress"])
    state = (tmp_path / "run" / "checkpoint" / "state.safetensors").read_bytes()
    monkeypatch.setattr(fb, "evaluator_scores", lambda images, prompts, mode="binary": torch.full((len(prompts),), float("nan")))
    with pytest.raises(ValueError, match="NaN"):
        main(["--config", str(cfg), "--resume", "--no-progress"])
    assert (tmp_path / "run" / "checkpoint" / "state.safetensors").read_bytes() == state


@pytest.mark.slow
@pytest.mark.parametrize("method", ["d3po", "ddpo"])
def test_two_process_launch_splits_samples_and_keeps_weights_identical(tmp_path, tiny_pipe_dir, open_clip_dir, method):
    """Both methods train through the DDP-wrapped denoiser (a forward that bypasses it leaves each process
    with its own gradients, and the weights drift apart)."""
    cfg = _write_cfg(tmp_path, tiny_pipe_dir, open_clip_dir, num_epochs=2, check_weight_sync=True, sample_batch_size=2,
                     train_batch_size=1, method=method)
    # accelerate >= 1.0 runs `--cpu --num_processes N` as ONE process unless MPI is set up; `--multi_gpu` goes
    # through torchrun, and the trainer selects gloo on CPU-only machines
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(29517 + (method == "ddpo")),
           str(ROOT / "diffusion_align" / "train.py"), "--config", str(cfg), "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        ids = r["sample_ids"]
        assert {rank for rank, _ in ids} == {0, 1}  # both processes sampled
        seeds = {rank: {s for q, s in ids if q == rank} for rank in (0, 1)}
        assert not seeds[0] & seeds[1]  # ... different samples
        assert r["weight_sync_max_diff"] == 0.0  # ... and hold identical weights after the updates
    assert rows[0]["weight_checksum"] != rows[1]["weight_checksum"]  # the weights did change
    assert rows[-1]["samples"] == 2 * 2 * 2 * 2  # epochs × processes × prompts × samples per prompt


def test_human_label_path_sample_annotate_train(tmp_path, tiny_pipe_dir, open_clip_dir):
    import io

    from diffusion_align.label import annotate, load_labelled
    from diffusion_align.label import main as label_main
    from diffusion_align.train import main

    cfg = _write_cfg(tmp_path, tiny_pipe_dir, open_clip_dir)
    out = tmp_path / "labels"
    assert label_main(["sample", "--config", str(cfg), "--out", str(out), "--prompts", "2", "--per-prompt", "3"]) == 6
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    assert [(p["a"], p["b"]) for p in pairs] == [(0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (4, 5)]
    assert all((out / p["image"]).is_file() for p in pairs)
    # a person: left, right, tie, skip, then quits; a second session resumes with the skipped pair
    shown = io.StringIO()
    assert annotate(out, inp=io.StringIO("1\n2\nt\ns\nq\n"), out=shown) == 3
    assert "which image is better" in shown.getvalue() and pairs[0]["prompt"] in shown.getvalue()
    assert annotate(out, inp=io.StringIO("2\n\n"), out=io.StringIO()) == 1
    labels = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    assert labels == [{"pair": 0, "chosen": 0}, {"pair": 1, "chosen": 1}, {"pair": 2, "chosen": None},
                      {"pair": 3, "chosen": 1}]
    ro, idx, pref = load_labelled(out)
    assert idx.tolist() == [[0, 1], [0, 2], [3, 4]] and pref.tolist() == [[1, -1], [-1, 1], [-1, 1]]
    assert len(ro) == 6 and ro.latents.shape[1] == 4
    # a second annotator disagreeing on pair 0 makes it a tie (majority vote); the auto-labeller fills all
    (out / "labels_b.jsonl").write_text(json.dumps({"pair": 0, "chosen": 1}) + "\n")
    assert load_labelled(out)[1].tolist() == [[0, 2], [3, 4]]
    assert annotate(out, annotator="clip", auto=f"clip:{open_clip_dir}") == 6
    # the trajectories must be re-scored with the sampler that drew them
    with pytest.raises(UserError, match="sampled with other settings"):
        main(["--config", str(cfg), "--set", "feedback=labels", "--set", f"labels_dir={out}", "--set", "sample_steps=5",
              "--no-progress"])
    # train on the labels: no sampling, updates on the labelled pairs
    res = main(["--config", str(cfg), "--set", "feedback=labels", "--set", f"labels_dir={out}", "--set", "num_epochs=1",
                "--no-progress"])
    assert res["updates"] >= 1
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["pairs"] == len(load_labelled(out)[1]) and "score_mean" not in rows[0]


@pytest.mark.slow
def test_labels_from_the_web_page_train(tmp_path, tiny_pipe_dir, open_clip_dir):
    """label sample → the page's API (two annotators, a changed mind, an undo) → train.py with feedback: labels."""
    from starlette.testclient import TestClient

    from diffusion_align.label import load_labelled
    from diffusion_align.label import main as label_main
    from diffusion_align.label_server import create_app
    from diffusion_align.train import main

    cfg = _write_cfg(tmp_path, tiny_pipe_dir, open_clip_dir)
    out = tmp_path / "labels"
    label_main(["sample", "--config", str(cfg), "--out", str(out), "--prompts", "2", "--per-prompt", "3"])
    groups = [json.loads(x) for x in (out / "groups.jsonl").read_text().splitlines()]
    assert [g["index"] for g in groups] == [[0, 1, 2], [3, 4, 5]] and all((out / n).is_file() for g in groups for n in g["images"])
    c = TestClient(create_app(out))
    c.post("/api/label", json={"annotator": "ann", "group": 0, "best": 0})  # pairs 0 (0,1), 1 (0,2), 2 (1,2)
    c.post("/api/label", json={"annotator": "ann", "group": 0, "best": 2})  # changed mind: (0,1) tie, 2 wins
    c.post("/api/label", json={"annotator": "ann", "group": 1, "ranking": [1, 0, 2]})  # 4 > 3 > 5
    c.post("/api/label", json={"annotator": "bea", "group": 1, "best": 0})
    c.post("/api/label", json={"annotator": "bea", "group": 0, "best": 1})
    assert c.post("/api/undo", json={"annotator": "bea"}).json()["group"] == 0
    # ann: (0,2) b, (1,2) b, (3,4) b, (3,5) a, (4,5) a; bea: (3,4) a, (3,5) a, (4,5) tie → (3,4) is 1:1, left out
    ro, idx, pref = load_labelled(out)
    assert idx.tolist() == [[0, 2], [1, 2], [3, 5], [4, 5]]
    assert pref.tolist() == [[-1, 1], [-1, 1], [1, -1], [1, -1]]
    res = main(["--config", str(cfg), "--set", "feedback=labels", "--set", f"labels_dir={out}", "--set", "num_epochs=1",
                "--no-progress"])
    assert res["updates"] >= 1
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["pairs"] == 4


@pytest.mark.slow
def test_ctrl_c_finishes_the_epoch_and_resume_continues(tmp_path, tiny_pipe_dir, open_clip_dir):

    cfg = _write_cfg(tmp_path, tiny_pipe_dir, open_clip_dir, num_epochs=1000, checkpoint_every=1000, grid_every=0)
    cmd = [sys.executable, str(ROOT / "diffusion_align" / "train.py"), "--config", str(cfg), "--no-progress"]
    metrics = tmp_path / "run" / "metrics.jsonl"
    code, output = interrupt_when(cmd, lambda: metrics.is_file() and bool(metrics.read_text().strip()), cwd=tmp_path)
    assert code == 0, output
    assert "stop requested" in output and "stopped (interrupt)" in output
    from diffusion_align.train import main
    from mmreward.checkpoint import read_state_info

    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    epoch, _ = read_state_info(tmp_path / "run" / "checkpoint")
    assert epoch == len(rows) >= 1  # whole epochs only: the checkpoint holds every logged epoch
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()  # exported on Ctrl-C too
    res = main(["--config", str(cfg), "--resume", "--set", f"num_epochs={epoch + 1}", "--no-progress"])
    assert res["epoch"] == epoch + 1
    assert [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()] == list(range(epoch + 1))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["module", "script"])
def test_the_entry_point_runs_as_a_module_and_as_a_script(tmp_path, how):
    """`python -m diffusion_align.train` (so `accelerate launch -m`) and `python diffusion_align/train.py`
    (the script's folder first on sys.path, with no sys.path edit) both reach the config check."""
    cmd = [sys.executable, "-m", "diffusion_align.train"] if how == "module" else [
        sys.executable, str(ROOT / "diffusion_align" / "train.py")]
    res = subprocess.run([*cmd, "--config", str(tmp_path / "none.yaml")], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert res.returncode == 2 and "error: config file not found" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
