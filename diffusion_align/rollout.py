"""Sampling a diffusers text-to-image pipeline as a policy: DDIM trajectories with per-step log-probabilities.

A :class:`Rollout` holds everything training needs to re-evaluate a trajectory under new weights
(latents ``x_T .. x_0``, timesteps, prompt embeddings) plus the log-probabilities of its transitions
under the sampling weights (``log_probs``, PPO's "old" policy) and, when asked, under the frozen base
model (``ref_log_probs``: D3PO's reference, computed with the LoRA adapters switched off).

Classifier-free guidance is applied inside the policy (:func:`diffusion_align.pipelines.guided_output`),
in sampling and training alike. Every pipeline layout of :mod:`diffusion_align.pipelines` (SD 1.x/2.x,
SDXL, PixArt-α) samples the same way; the functions take a pipeline or its adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .ddim_logprob import ddim_step_deterministic, ddim_step_with_logprob
from .lora import adapters_disabled
from .pipelines import Cond, PipelineAdapter, guided_output, make_adapter

__all__ = ["Rollout", "adapters_disabled", "ddim_scheduler", "guided_output", "initial_noise", "sample_rollouts",
           "transition_log_prob"]


@dataclass
class Rollout:
    """A batch of ``B`` DDIM trajectories of ``T`` steps (latents ``[C,h,w]``, images ``[3,H,W]``)."""

    prompts: list[str]
    latents: torch.Tensor  # [B, T+1, C, h, w]: x_T, ..., x_0
    timesteps: torch.Tensor  # [T] (long)
    log_probs: torch.Tensor  # [B, T] under the sampling weights (NaN on deterministic steps: sde_steps)
    cond: Cond  # the prompts' conditioning (batch-first tensors, e.g. encoder_hidden_states [B, L, D])
    uncond: Cond  # the empty/negative prompt's (classifier-free guidance)
    images: torch.Tensor  # [B, 3, H, W] in [0, 1]
    seeds: torch.Tensor  # [B] (long) the seed of each trajectory's noise
    ref_log_probs: torch.Tensor | None = None  # [B, T] under the frozen base model
    layout: str = "sd"  # the pipeline layout the conditioning belongs to (diffusion_align.pipelines)

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, index: torch.Tensor | list[int]) -> Rollout:
        """The trajectories at ``index`` (a new Rollout)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "prompts":
                out[f.name] = [v[int(i)] for i in idx]
            elif f.name in ("timesteps", "layout") or v is None:
                out[f.name] = v
            elif isinstance(v, dict):
                out[f.name] = {k: x[idx.to(x.device)] for k, x in v.items()}
            else:
                out[f.name] = v[idx.to(v.device)]
        return Rollout(**out)

    def save(self, path, info: dict | None = None) -> None:
        """Write to a safetensors file (tensors, conditioning as ``cond.<key>``; prompts, layout and ``info``,
        e.g. the sampler, in the metadata)."""
        import json

        from safetensors.torch import save_file

        tensors = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, dict):
                tensors.update({f"{f.name}.{k}": x.detach().cpu().contiguous() for k, x in v.items()})
            elif isinstance(v, torch.Tensor):
                tensors[f.name] = v.detach().cpu().contiguous()
        save_file(tensors, str(path), metadata={"prompts": json.dumps(self.prompts), "layout": self.layout,
                                                "info": json.dumps(info or {})})

    @staticmethod
    def load(path, device: str | torch.device = "cpu") -> tuple[Rollout, dict]:
        """``(rollout, info)`` from :meth:`save`."""
        import json

        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        for name in ("cond", "uncond"):  # a file of the SD-only format holds one embedding tensor each
            flat = {k.split(".", 1)[1]: tensors.pop(k) for k in list(tensors) if k.startswith(name + ".")}
            tensors[name] = flat or {"encoder_hidden_states": tensors.pop(name)}
        rollout = Rollout(prompts=json.loads(meta["prompts"]), layout=meta.get("layout", "sd"), **tensors)
        return rollout, json.loads(meta.get("info", "{}"))

    @staticmethod
    def cat(rollouts: list[Rollout]) -> Rollout:
        """Concatenate rollouts that share their timesteps."""
        out = {}
        for f in fields(Rollout):
            vs = [getattr(r, f.name) for r in rollouts]
            if f.name == "prompts":
                out[f.name] = [p for v in vs for p in v]
            elif f.name in ("timesteps", "layout"):
                out[f.name] = vs[0]
            elif any(v is None for v in vs):
                out[f.name] = None
            elif isinstance(vs[0], dict):
                out[f.name] = {k: torch.cat([v[k] for v in vs]) for k in vs[0]}
            else:
                out[f.name] = torch.cat(vs)
        return Rollout(**out)


def ddim_scheduler(pipe: PipelineAdapter, steps: int):
    """A DDIM scheduler with the pipeline's noise schedule, set to ``steps`` steps (``pipe``: a pipeline
    or its adapter)."""
    from diffusers import DDIMScheduler

    pipe = pipe.pipe if isinstance(pipe, PipelineAdapter) else pipe
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps, device=pipe.device)
    if int(sched.timesteps.min()) == 0:
        raise ValueError(f"the {steps}-step DDIM schedule of this pipeline ends at t = 0, a step without noise (no "
                         "log-probability); set the scheduler's timestep_spacing to 'trailing' or steps_offset to 1")
    return sched


def initial_noise(pipe: PipelineAdapter, seeds: list[int]) -> torch.Tensor:
    """``x_T`` ``[B,C,h,w]``: one standard-normal draw per seed (independent of the batch it is in)."""
    from .inputs import noise_for_seeds

    adapter = make_adapter(pipe)
    return noise_for_seeds(adapter.latent_shape(1), seeds, adapter.device)


@torch.no_grad()
def sample_rollouts(
    pipe: PipelineAdapter,
    unet: torch.nn.Module,
    prompts: list[str],
    noise: torch.Tensor,
    step_seeds: list[int],
    steps: int = 20,
    eta: float = 1.0,
    guidance: float = 3.0,
    reference: bool = False,
    sde_steps: int | None = None,
) -> Rollout:
    """Sample ``len(prompts)`` DDIM trajectories from ``noise`` ``[B,C,h,w]`` (``x_T``) of ``pipe`` (a
    pipeline or its adapter), running the denoiser ``unet`` (the pipeline's, possibly wrapped).

    The step noise of trajectory ``b`` comes from a generator seeded ``step_seeds[b]``: trajectories with
    the same ``x_T`` and different step seeds diverge (D3PO's pairs). ``unet`` may carry LoRA adapters;
    ``reference=True`` also scores every transition under the base model (adapters off).
    ``sde_steps``: only the first ``sde_steps`` steps are stochastic (eta ``eta``); the rest are deterministic
    DDIM (eta 0; MixGRPO's mixed SDE/ODE sampling), so the image is a function of the stochastic steps'
    draws alone, and a policy trained on those steps controls the whole outcome. Their ``log_probs`` (and
    ``ref_log_probs``) are NaN: a deterministic step has no density.
    """
    if sde_steps is not None and not 1 <= sde_steps <= steps:
        raise ValueError(f"sde_steps must be in [1, steps={steps}] or None, got {sde_steps}")
    adapter = make_adapter(pipe)
    sched = ddim_scheduler(adapter, steps)
    cond, uncond = adapter.encode(prompts, guidance=True)
    layout = adapter.layout
    gens = [torch.Generator(noise.device).manual_seed(int(s)) for s in step_seeds]
    x = noise * sched.init_noise_sigma
    latents, log_probs, ref_log_probs = [x], [], []
    nan = torch.full((len(prompts),), float("nan"), device=x.device)
    for i, t in enumerate(sched.timesteps):
        out = guided_output(unet, x, t, cond, uncond, guidance, layout)
        if sde_steps is not None and i >= sde_steps:
            x_next, lp, ref_lp = ddim_step_deterministic(sched, out, t, x), nan, nan
        else:
            x_next, lp = ddim_step_with_logprob(sched, out, t, x, eta, generator=gens)
            ref_lp = None
            if reference:
                with adapters_disabled(unet):
                    ref_out = guided_output(unet, x, t, cond, uncond, guidance, layout)
                ref_lp = ddim_step_with_logprob(sched, ref_out, t, x, eta, prev_sample=x_next)[1]
        latents.append(x_next)
        log_probs.append(lp)
        ref_log_probs.append(ref_lp)
        x = x_next
    return Rollout(
        prompts=list(prompts), latents=torch.stack(latents, 1), timesteps=sched.timesteps.clone(),
        log_probs=torch.stack(log_probs, 1), cond=cond, uncond=uncond, images=adapter.decode(x),
        seeds=torch.as_tensor(step_seeds, dtype=torch.long),
        ref_log_probs=torch.stack(ref_log_probs, 1) if reference else None, layout=layout)


def transition_log_prob(sched, unet, rollout: Rollout, j: torch.Tensor, guidance: float, eta: float) -> torch.Tensor:
    """``log π_θ(x_{t-1} | x_t)`` ``[B]`` of step ``j[b]`` of each trajectory under ``unet``'s current
    weights, with gradients (the training forward pass)."""
    b = torch.arange(len(rollout), device=rollout.latents.device)
    x, x_next = rollout.latents[b, j], rollout.latents[b, j + 1]
    t = rollout.timesteps.to(x.device)[j]
    out = guided_output(unet, x, t, rollout.cond, rollout.uncond, guidance, rollout.layout)
    return ddim_step_with_logprob(sched, out, t, x, eta, prev_sample=x_next)[1]
