"""ReNO: reward-based noise optimisation for one-step text-to-image (Eyring et al., NeurIPS 2024).

The generator ``G`` (a diffusers pipeline sampled in 1-4 steps) stays frozen; its initial noise ``z`` is
optimised against a weighted sum of differentiable rewards, with a regulariser that keeps ``‖z‖`` on the
Gaussian shell::

    L(z) = -R(G(z, p), p) + λ · (½‖z‖² − (d − 1) · log‖z‖),      d = number of entries of one sample's z

``R`` is any reward of the reward core (a :class:`~mmreward.WeightedSum` for several). The regulariser
is the negative log-density of the χ distribution of ``‖z‖`` (minimum at ``‖z‖ = √(d − 1)``), computed
in float32. Defaults are the reference's: SGD with lr 5, momentum 0.9 and Nesterov, gradient-norm
clipping at 0.1, λ = 0.01, 50 iterations (50 evaluations, 49 updates: no step after the last); the
iterate with the best *reward* (regulariser excluded) is returned.

Every sample of a batch is optimised independently (per-sample regulariser, gradient clipping and best
iterate; rewards are summed, not averaged), so a batch of prompts gives exactly what one prompt at a
time gives.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from diffusion_align.pipelines import make_adapter
from mmreward.base import check_rewards
from mmreward.errors import RewardError


def chi_regulariser(z: torch.Tensor) -> torch.Tensor:
    """``½‖z‖² − (d − 1)·log‖z‖`` per sample, in float32. ``z``: ``[B, ...]`` -> ``[B]``."""
    flat = z.float().flatten(1)
    d = flat.shape[1]
    sq = (flat * flat).sum(1)
    return 0.5 * sq - (d - 1) * 0.5 * torch.log(sq)


def clip_grad_per_sample(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale each sample's gradient ``[B, ...]`` to an L2 norm of at most ``max_norm`` (in place)."""
    norms = grad.flatten(1).norm(dim=1).view(-1, *[1] * (grad.ndim - 1))
    grad.mul_(torch.clamp(max_norm / (norms + 1e-6), max=1.0))
    return grad


class FewStepGenerator:
    """Differentiable few-step sampling of a diffusers text-to-image pipeline: noise ``z`` ``[B,C,h,w]``
    (unit variance) -> images ``[B,3,H,W]`` in [0,1].

    Gradients flow from the images back to ``z`` through the VAE decoder, the scheduler steps and the
    denoiser; all weights are frozen. The last step returns the scheduler's clean-sample estimate (as the
    pipelines do for one step). ``timesteps`` overrides the scheduler's (PixArt-DMD uses ``[400]``).
    ``steps`` > 1 draws the schedulers' fresh noise from ``generator`` (ReNO re-seeds it every iteration so
    the map from ``z`` to the image stays fixed). How prompts condition the denoiser and how latents are
    decoded is the pipeline layout's (:mod:`diffusion_align.pipelines`).
    """

    def __init__(self, pipe, steps: int = 1, timesteps: list[int] | None = None,
                 gradient_checkpointing: bool = False) -> None:
        if not 1 <= steps <= 4:
            raise ValueError(f"steps must be between 1 and 4 for a one-step model, got {steps}")
        self.adapter = make_adapter(pipe).freeze()
        self.pipe, self.steps, self.timesteps = self.adapter.pipe, steps, timesteps
        for m in self.adapter.modules():
            m.eval()
        if gradient_checkpointing:
            self.adapter.denoiser.enable_gradient_checkpointing()
            self.adapter.denoiser.train()  # diffusers checkpoints only in training mode (these models have no dropout)

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.dtype

    @property
    def image_size(self) -> int:
        return self.adapter.image_size

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        return self.adapter.latent_shape(batch)

    def encode(self, prompts: list[str]) -> dict:
        """The conditioning of ``prompts`` (no classifier-free guidance: one-step models are distilled without)."""
        return self.adapter.encode(prompts)[0]

    def __call__(self, z: torch.Tensor, cond: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        sched = self.pipe.scheduler
        if self.timesteps is not None:
            sched.set_timesteps(timesteps=self.timesteps, device=self.device)
        else:
            sched.set_timesteps(self.steps, device=self.device)
        x = z.to(self.dtype) * sched.init_noise_sigma
        for i, t in enumerate(sched.timesteps):
            out = sched.step(self.adapter.denoise(sched.scale_model_input(x, t), t, cond), t, x, generator=generator)
            if i == len(sched.timesteps) - 1:  # the clean-sample estimate, not a re-noised one (DDPM)
                x = getattr(out, "pred_original_sample", None)
                x = out.prev_sample if x is None else x
            else:
                x = out.prev_sample
        return self.adapter.decode(x)


def make_generator(pipe, steps: int = 1, timesteps: list[int] | None = None,
                   gradient_checkpointing: bool = False) -> FewStepGenerator:
    """The few-step generator of ``pipe`` (SD 1.x/2.x, SDXL or PixArt-α layout; ``ValueError`` otherwise)."""
    return FewStepGenerator(pipe, steps=steps, timesteps=timesteps, gradient_checkpointing=gradient_checkpointing)


@dataclass
class RenoConfig:
    """Hyperparameters (reference defaults)."""

    iters: int = 50  #: reward evaluations; ``iters - 1`` updates
    lr: float = 5.0
    momentum: float = 0.9
    nesterov: bool = True
    reg_weight: float = 0.01  #: λ; 0 turns the regulariser off
    grad_clip: float = 0.1  #: per-sample gradient-norm clip; 0 turns it off
    seed: int = 0  #: seed of the schedulers' noise for multi-step sampling (re-seeded every iteration)


@dataclass
class RenoResult:
    """``initial`` / ``best`` images ``[B,3,H,W]``, their rewards ``[B]``, the best noise ``[B,...]``,
    the iteration each best came from, the noise after the last update, and one log record per iteration."""

    initial: torch.Tensor
    initial_reward: torch.Tensor
    best: torch.Tensor
    best_reward: torch.Tensor
    best_noise: torch.Tensor
    best_iter: torch.Tensor
    last_noise: torch.Tensor
    log: list[dict] = field(default_factory=list)


def reno(
    generator: Callable[..., torch.Tensor],
    reward: torch.nn.Module,
    prompts: list[str],
    noise: torch.Tensor,
    config: RenoConfig | None = None,
    progress: bool = True,
    on_iteration: Callable[[dict], None] | None = None,
) -> RenoResult:
    """Optimise ``noise`` ``[B,...]`` (one sample per prompt) for ``reward`` through ``generator``.

    ``generator`` is a :class:`FewStepGenerator` (see :func:`make_generator`); ``reward(images, prompts) -> [B]`` (higher is better).
    A reward with ``components()`` (a weighted sum) has each term logged. Non-finite rewards raise
    :class:`~mmreward.errors.RewardError`. ``KeyboardInterrupt`` stops early and returns the best so far.
    """
    cfg = config or RenoConfig()
    if cfg.iters < 1:
        raise ValueError(f"iters must be at least 1, got {cfg.iters}")
    if len(prompts) != noise.shape[0]:
        raise ValueError(f"{len(prompts)} prompts for {noise.shape[0]} noise samples")
    if any(not p.strip() for p in prompts):
        raise ValueError("empty prompt")
    for p in reward.parameters():
        p.requires_grad_(False)
    cond = generator.encode(prompts)
    z = noise.detach().clone().float().requires_grad_(True)
    opt = torch.optim.SGD([z], lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    has_terms = hasattr(reward, "components")  # a WeightedSum: log every term
    best = best_reward = best_noise = best_iter = initial = initial_reward = None
    log: list[dict] = []
    bar = tqdm(range(cfg.iters), desc="reno", disable=not progress, dynamic_ncols=True)
    try:
        for it in bar:
            t0 = time.perf_counter()
            gen = torch.Generator(generator.device).manual_seed(cfg.seed)
            images = generator(z, cond, generator=gen)
            terms = reward.components(images, prompts) if has_terms else {"total": reward(images, prompts)}
            r = terms["total"]
            check_rewards(r.detach(), len(prompts), type(reward).__name__)
            reg = chi_regulariser(z)
            loss = (-r).sum() + (cfg.reg_weight * reg).sum()
            with torch.no_grad():
                if best is None:
                    initial, initial_reward = images.detach().clone(), r.detach().clone()
                    best, best_reward = images.detach().clone(), r.detach().clone()
                    best_noise, best_iter = z.detach().clone(), torch.zeros(len(r), dtype=torch.long)
                else:
                    better = r.detach() > best_reward
                    best[better], best_reward[better] = images.detach()[better], r.detach()[better]
                    best_noise[better], best_iter[better] = z.detach()[better], it
            rec = {"iter": it, "reward": r.detach().cpu().tolist(), "reg": reg.detach().cpu().tolist(),
                   "noise_norm": z.detach().flatten(1).norm(dim=1).cpu().tolist()}
            if has_terms:
                rec["components"] = {k: v.detach().cpu().tolist() for k, v in terms.items() if k != "total"}
            if it < cfg.iters - 1:  # the last evaluation is not followed by a step
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if not torch.isfinite(z.grad).all():
                    raise RewardError("non-finite gradient of the reward with respect to the noise")
                if cfg.grad_clip > 0:
                    clip_grad_per_sample(z.grad, cfg.grad_clip)
                opt.step()
            rec["time"] = time.perf_counter() - t0
            log.append(rec)
            bar.set_postfix(reward=f"{r.detach().mean().item():.4f}", best=f"{best_reward.mean().item():.4f}")
            if on_iteration is not None:
                on_iteration(rec)
    except KeyboardInterrupt:
        if best is None:
            raise
        tqdm.write(f"reno: interrupted after {len(log)} iterations; returning the best so far")
    finally:
        bar.close()
    return RenoResult(initial, initial_reward, best, best_reward, best_noise, best_iter, z.detach().clone(), log)


def shell_radius(shape: tuple[int, ...]) -> float:
    """Where the regulariser of a sample with ``shape`` (without batch) is minimal: ``√(d − 1)``."""
    return math.sqrt(math.prod(shape) - 1)
