"""DDPO (Black et al., ICLR 2024), the policy-gradient baseline: PPO-clip on the denoising steps.

Each epoch's rewards become advantages — normalised per prompt over a running buffer (the references'
per-prompt stat tracking) or over the whole batch — and every trained denoising step of a sample is one
PPO-clip term against its sampling-time log-probability (:func:`diffusion_align.losses.ddpo_loss`), the
loss averaged over the trained steps (the references' gradient accumulation over timesteps).
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from diffusion_align.losses import PerPromptStatTracker, ddpo_loss
from diffusion_align.rl_trainer import DiffusionRLTrainer, PolicyUpdate, train_steps
from diffusion_align.rollout import Rollout, transition_log_prob


def ddpo_update(u: PolicyUpdate, rollout: Rollout, adv: torch.Tensor, rng: torch.Generator) -> dict:
    """One optimiser step on a minibatch of samples with advantages ``[B]``."""
    cfg, accelerator, unet = u.cfg, u.accelerator, u.unet
    T = rollout.latents.shape[1] - 1
    steps = train_steps(cfg, T, rng, len(rollout))
    b = torch.arange(len(rollout))
    losses, kls, clips = [], [], []
    for jj in range(steps.shape[1]):
        j = steps[:, jj]
        last = jj == steps.shape[1] - 1
        with accelerator.autocast(), (nullcontext() if last else accelerator.no_sync(unet)):
            lp = transition_log_prob(u.sched, unet, rollout, j.to(rollout.latents.device), cfg.guidance_scale, cfg.sample_eta)
            old = rollout.log_probs[b, j].to(lp.device)
            loss, stats = ddpo_loss(lp, old, adv.to(lp.device), cfg.clip_range, cfg.adv_clip_max)
        accelerator.backward(loss / steps.shape[1])
        losses.append(loss.item())
        kls.append(stats["approx_kl"].item())
        clips.append(stats["clipfrac"].item())
    return {"loss": float(np.mean(losses)), "approx_kl": float(np.mean(kls)), "clipfrac": float(np.mean(clips)),
            **u.step()}


class DDPOTrainer(DiffusionRLTrainer):
    """DDPO on the shared diffusion RL trainer: advantages from the rewards, PPO-clip minibatches."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tracker = PerPromptStatTracker(self.cfg.stat_buffer_size, self.cfg.stat_min_count)

    def state_extra(self) -> dict:
        return {**super().state_extra(), "tracker": self.tracker.state_dict()}

    def load_state_extra(self, extra: dict) -> None:
        super().load_state_extra(extra)
        self.tracker.load_state_dict(extra.get("tracker", {}))

    def update(self, rollout, scores, all_scores, rec, g):
        from accelerate.utils import gather_object

        cfg, acc = self.cfg, self.accelerator
        all_prompts = gather_object(rollout.prompts)
        s = all_scores.numpy()
        adv_all = self.tracker.update(all_prompts, s) if cfg.per_prompt_stat_tracking else (s - s.mean()) / (s.std() + 1e-8)
        n = len(rollout)
        adv = torch.tensor(adv_all[acc.process_index * n : (acc.process_index + 1) * n], dtype=torch.float32)
        updates = []
        for _ in range(cfg.num_inner_epochs):
            order = torch.randperm(n, generator=g)
            for k in range(0, n, cfg.train_batch_size):
                idx = order[k : k + cfg.train_batch_size]
                updates.append(ddpo_update(self.updater, rollout.select(idx), adv[idx], g))
        return updates
