"""Sampling the policy for D3PO and DDPO (and for the labelling tool): the config's prompts and
pipeline, and one epoch of trajectory groups (``samples_per_prompt`` images per prompt from one shared
``x_T``) drawn reproducibly from (seed, epoch, batch, process)."""

from __future__ import annotations

import numpy as np
import torch

from diffusion_align import inputs
from diffusion_align.config import ConfigError, DiffusionRLConfig
from diffusion_align.pipelines import make_adapter
from diffusion_align.rollout import Rollout, initial_noise, sample_rollouts


def read_prompts(spec: str) -> list[str]:
    """The config's ``prompts`` (:func:`diffusion_align.inputs.read_prompts`), errors as config errors."""
    try:
        return inputs.read_prompts(spec)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def load_pipeline(name: str, device):
    """The pipeline ``name`` (hub id or folder) of a supported layout (SD 1.x/2.x, SDXL, PixArt-α:
    :mod:`diffusion_align.pipelines`), all weights frozen."""
    try:
        pipe = inputs.load_pipeline(name, device)
        make_adapter(pipe).freeze()
    except ValueError as e:
        raise ConfigError(f"pretrained: {e}") from e
    return pipe


def seeds_for(cfg: DiffusionRLConfig, epoch: int, batch: int, process: int) -> np.random.Generator:
    """The RNG of one sampling batch: a function of (seed, epoch, batch, process) only, so runs are
    reproducible, resumable at any epoch and different on every process."""
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, epoch, batch, process]))


def sample_epoch(cfg: DiffusionRLConfig, pipe, unet, prompts: list[str], epoch: int, process: int) -> Rollout:
    """This process's trajectories for one epoch: ``samples_per_prompt`` per drawn prompt, adjacent and
    sharing ``x_T``; different step noise per trajectory."""
    k = cfg.samples_per_prompt
    out = []
    for b in range(cfg.num_batches_per_epoch):
        rng = seeds_for(cfg, epoch, b, process)
        chosen = [prompts[int(i)] for i in rng.integers(len(prompts), size=cfg.sample_batch_size)]
        noise_seeds = rng.integers(2**31, size=cfg.sample_batch_size)
        step_seeds = rng.integers(2**31, size=cfg.sample_batch_size * k)
        noise = initial_noise(pipe, [int(s) for s in noise_seeds for _ in range(k)])
        out.append(sample_rollouts(pipe, unet, [p for p in chosen for _ in range(k)], noise, step_seeds.tolist(),
                                   steps=cfg.sample_steps, eta=cfg.sample_eta, guidance=cfg.guidance_scale,
                                   sde_steps=cfg.sde_steps))
    return Rollout.cat(out)


def group_pairs(n_groups: int, k: int) -> torch.Tensor:
    """All ``C(k, 2)`` index pairs ``[P, 2]`` within each group of ``k`` adjacent trajectories."""
    within = [(a, b) for a in range(k) for b in range(a + 1, k)]
    return torch.tensor([(g * k + a, g * k + b) for g in range(n_groups) for a, b in within], dtype=torch.long)
