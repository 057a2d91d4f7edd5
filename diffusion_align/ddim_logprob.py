"""One DDIM step with the log-probability of its transition (DDPO's ``ddim_step_with_logprob``).

With ``eta > 0`` a DDIM step is a Gaussian policy ``π(x_{t-1} | x_t, c) = N(μ, σ_t² I)``::

    σ_t = η · √((1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev))
    μ   = √ᾱ_prev · x̂_0 + √(1 − ᾱ_prev − σ_t²) · ε̂
    log π = mean over C×H×W of  −(x_{t−1} − μ)²/(2σ_t²) − log σ_t − log √(2π)

As in the reference: the log-probability is *averaged* over the latent's entries (so PPO's clip range
and D3PO's ratio clamp act on a per-dimension scale), ``x_{t−1}`` is detached, and the previous timestep
is clamped to ≥ 0 (``ᾱ_0``, not the scheduler's ``final_alpha_cumprod``, at the last step). A schedule whose
last timestep is 0 (``leading`` spacing without offset) has a σ = 0 step and is refused.
``epsilon``, ``v_prediction`` and ``sample`` parametrisations are supported.
"""

from __future__ import annotations

import math

import torch


def _per_sample(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Gather ``values[t]`` and shape it ``[B, 1, 1, ...]`` for broadcasting over a latent of ``ndim`` dims."""
    return values.to(t.device)[t].view(-1, *[1] * (ndim - 1))


def split_prediction(scheduler, model_output: torch.Tensor, sample: torch.Tensor, alpha_t: torch.Tensor):
    """``(x̂_0, ε̂)`` from the model output for the scheduler's ``prediction_type``."""
    kind = scheduler.config.prediction_type
    a, s = alpha_t.sqrt(), (1 - alpha_t).sqrt()
    if kind == "epsilon":
        eps = model_output
        x0 = (sample - s * eps) / a
    elif kind == "v_prediction":
        x0 = a * sample - s * model_output
        eps = a * model_output + s * sample
    elif kind == "sample":
        x0 = model_output
        eps = (sample - a * x0) / s
    else:
        raise ValueError(f"unsupported prediction_type {kind!r}; expected epsilon, v_prediction or sample")
    if getattr(scheduler.config, "thresholding", False):
        raise ValueError("schedulers with thresholding=True are not supported (dynamic thresholding of x̂_0)")
    if getattr(scheduler.config, "clip_sample", False):
        r = scheduler.config.clip_sample_range
        x0 = x0.clamp(-r, r)  # ε̂ stays the model's (diffusers' default use_clipped_model_output=False)
    return x0, eps


def ddim_step_with_logprob(
    scheduler,
    model_output: torch.Tensor,
    timestep: int | torch.Tensor,
    sample: torch.Tensor,
    eta: float = 1.0,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step ``x_t -> x_{t-1}`` and ``log π(x_{t-1} | x_t)``.

    ``model_output``, ``sample``: ``[B, C, h, w]``; ``timestep``: an int or ``[B]`` (samples may sit at
    different steps, as in training with shuffled timesteps). ``prev_sample`` given: its log-probability
    is computed (training); otherwise a new one is drawn with ``generator`` (one per sample or shared).
    Returns ``(prev_sample [B,C,h,w], log_prob [B])`` with ``log_prob`` in float32.
    """
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(steps) before stepping")
    if eta <= 0:
        raise ValueError(f"eta must be > 0 for a stochastic policy with a log-probability, got {eta}")
    alpha_t, alpha_prev, x0, eps = _alphas_and_prediction(scheduler, model_output, timestep, sample)
    variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
    std = eta * variance.clamp(min=0).sqrt()
    if (std <= 0).any():
        t = torch.as_tensor(timestep).reshape(-1).tolist()
        raise ValueError(f"timestep {t} has a zero-variance DDIM step (its previous timestep clamps to itself); "
                         "use timestep_spacing='trailing' or steps_offset >= 1")
    mean = alpha_prev.sqrt() * x0 + (1 - alpha_prev - std**2).clamp(min=0).sqrt() * eps
    if prev_sample is None:
        if isinstance(generator, list):
            noise = torch.stack([torch.randn(sample.shape[1:], generator=g, device=g.device) for g in generator])
        else:
            noise = torch.randn(sample.shape, generator=generator, device=sample.device if generator is None else generator.device)
        prev_sample = (mean + std * noise.to(sample.device)).to(sample.dtype)
    prev32 = prev_sample.detach().float()
    log_prob = -((prev32 - mean) ** 2) / (2 * std**2) - std.log() - math.log(math.sqrt(2 * math.pi))
    return prev_sample.detach(), log_prob.flatten(1).mean(1)


def ddim_step_deterministic(scheduler, model_output: torch.Tensor, timestep: int | torch.Tensor,
                            sample: torch.Tensor) -> torch.Tensor:
    """One DDIM step with eta = 0 (no noise, no log-probability): ``x_{t-1} = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev)·ε̂``
    ``[B,C,h,w]``, the same step as diffusers' ``DDIMScheduler.step(..., eta=0)`` (with the previous timestep
    clamped at 0 as above). The deterministic tail of a mixed sampler (``sde_steps``)."""
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(steps) before stepping")
    _, alpha_prev, x0, eps = _alphas_and_prediction(scheduler, model_output, timestep, sample)
    return (alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps).to(sample.dtype)


def _alphas_and_prediction(scheduler, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor):
    """``(ᾱ_t, ᾱ_prev, x̂_0, ε̂)`` in float32, the alphas shaped ``[B,1,1,1]`` (``timestep``: an int or ``[B]``)."""
    b = sample.shape[0]
    t = torch.as_tensor(timestep, device=sample.device).long().reshape(-1).expand(b)
    prev_t = (t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps).clamp(min=0)
    acp = scheduler.alphas_cumprod.to(torch.float32)
    alpha_t = _per_sample(acp, t, sample.ndim)
    alpha_prev = _per_sample(acp, prev_t, sample.ndim)
    x0, eps = split_prediction(scheduler, model_output.float(), sample.float(), alpha_t)
    return alpha_t, alpha_prev, x0, eps
