"""D3PO (Yang et al., CVPR 2024): direct preference optimisation of a diffusion model, without a reward model.

Each epoch samples groups of ``samples_per_prompt`` images sharing a prompt and ``x_T``; the feedback
source (the ShapesWorld evaluator, a reward spec, or human labels from :mod:`diffusion_align.label`)
orders each pair of a group, ties are skipped, and every denoising step of the preferred and rejected
trajectories is trained with the DPO loss on the per-step log-ratios against a reference policy
(:func:`diffusion_align.losses.d3po_loss`). Each distinct image is run through the denoiser once per
trained step however many pairs it is in (a group of k images gives C(k, 2) pairs for k trajectories).
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from diffusion_align.lora import adapters_disabled
from diffusion_align.losses import d3po_loss, pair_preferences
from diffusion_align.rl_trainer import DiffusionRLTrainer, PolicyUpdate, train_steps
from diffusion_align.rollout import Rollout, transition_log_prob
from diffusion_align.sampling import group_pairs


def noise_groups(rollout: Rollout) -> torch.Tensor:
    """``[B]`` the group of each trajectory: those sharing ``x_T`` (one prompt's ``samples_per_prompt``
    draws, as sampled), numbered by first appearance."""
    _, inv = torch.unique(rollout.latents[:, 0].flatten(1), dim=0, return_inverse=True)
    first = torch.full((int(inv.max()) + 1,), len(inv), dtype=torch.long).scatter_reduce(
        0, inv, torch.arange(len(inv)), "amin")
    return torch.argsort(torch.argsort(first))[inv]


def pair_components(pairs: torch.Tensor, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images [U], pos [P,2], comp [U])``: the distinct images of pairs ``[P,2]``, each pair as positions
    into ``images``, and each image's group among them (``group``: ``[B]`` per trajectory, see
    :func:`noise_groups`), numbered 0.. in group order. Images are scored once per step however many pairs
    they are in, and a group shares its step order, so both images of every pair train at the same step."""
    images, inverse = torch.unique(pairs.reshape(-1), return_inverse=True)
    comp = torch.unique(group.to(images.device)[images], return_inverse=True)[1]
    return images, inverse.view(-1, 2), comp


def d3po_update(u: PolicyUpdate, rollout: Rollout, pairs: torch.Tensor, pref: torch.Tensor, rng: torch.Generator,
                scale: float = 1.0, group: torch.Tensor | None = None) -> dict:
    """One optimiser step on a minibatch of pairs ``[P,2]`` (indices into ``rollout``) with preferences ``[P,2]``.

    ``scale`` multiplies this process's mean loss (so that, averaged over processes, every pair of the step
    weighs the same). With ``reference: base`` the reference log-probabilities (adapters off) are computed
    here, only for the images trained on, unless the rollout already carries them; ``reference: sampler``
    takes the sampling-time ones. ``group``: :func:`noise_groups` of ``rollout`` (computed when not given)."""
    cfg, accelerator, sched, unet = u.cfg, u.accelerator, u.sched, u.unet
    module = accelerator.unwrap_model(unet)  # the same weights, without the DDP wrapper
    T = rollout.latents.shape[1] - 1
    images, pos, comp = pair_components(pairs, noise_groups(rollout) if group is None else group)
    steps = train_steps(cfg, T, rng, int(comp.max()) + 1)[comp]  # [U, T_train]: one order per component
    sub = rollout.select(images)
    pref = pref.to(sub.latents.device)
    losses, kls = [], []
    for jj in range(steps.shape[1]):
        j = steps[:, jj].to(sub.latents.device)  # [U]
        if cfg.reference == "sampler":  # π_ref refreshed every round: the policy that drew the samples
            ref_lp = sub.log_probs[torch.arange(len(sub), device=j.device), j]
        elif sub.ref_log_probs is not None:
            ref_lp = sub.ref_log_probs[torch.arange(len(sub), device=j.device), j]
        else:
            with torch.no_grad(), accelerator.autocast(), adapters_disabled(module):
                ref_lp = transition_log_prob(sched, module, sub, j, cfg.guidance_scale, cfg.sample_eta)
        last = jj == steps.shape[1] - 1
        with accelerator.autocast(), (nullcontext() if last else accelerator.no_sync(unet)):
            lp = transition_log_prob(sched, unet, sub, j, cfg.guidance_scale, cfg.sample_eta)
            loss = d3po_loss(lp[pos], ref_lp[pos], pref, cfg.beta, cfg.eps)
            # k2 estimate of KL(π_θ‖π_ref) on the transitions trained (its gradient is KL's score-function gradient)
            kl = 0.5 * ((lp - ref_lp.to(lp.device)) ** 2).mean()
        accelerator.backward((loss + cfg.kl_coef * kl) * scale / steps.shape[1])
        losses.append(loss.item())
        kls.append(kl.item())
    return {"loss": float(np.mean(losses)), "kl": float(np.mean(kls)), "images": len(images), **u.step()}


def pair_minibatches(pairs: torch.Tensor, group: torch.Tensor, size: int, g: torch.Generator) -> list[torch.Tensor]:
    """Pair indices per optimiser step: the groups of the pairs' images (``group``: ``[B]`` per trajectory)
    in random order, each group's pairs kept in one minibatch (so its images are run once), a minibatch
    closed once it holds ``size`` pairs."""
    if len(pairs) == 0:
        return []
    _, pos, comp = pair_components(pairs, group)
    group = comp[pos[:, 0]]
    batches, current = [], []
    for gid in torch.randperm(int(group.max()) + 1, generator=g).tolist():
        current += torch.nonzero(group == gid).flatten().tolist()
        if len(current) >= size:
            batches.append(torch.tensor(current))
            current = []
    if current:
        batches.append(torch.tensor(current))
    return batches


def train_d3po_epoch(u: PolicyUpdate, rollout: Rollout, pairs: torch.Tensor, pref: torch.Tensor,
                     g: torch.Generator) -> tuple[list[dict], int]:
    """All optimiser steps of one epoch on this process's untied pairs; returns the steps' metrics and the
    number of pairs over all processes. Every process takes the same number of steps (DDP's collectives
    must match); a process out of pairs contributes zero, and each process's loss is scaled by
    ``N · local / global`` pairs of the step so every pair weighs the same."""
    accelerator, cfg = u.accelerator, u.cfg
    N, rank = accelerator.num_processes, accelerator.process_index
    n = accelerator.gather(torch.tensor([len(pairs)], device=accelerator.device)).cpu().tolist()
    updates, group = [], noise_groups(rollout)
    for _ in range(cfg.num_inner_epochs):
        batches = pair_minibatches(pairs, group, cfg.train_batch_size, g)
        n_steps = int(accelerator.gather(torch.tensor([len(batches)], device=accelerator.device)).max())
        mine = torch.zeros(n_steps, dtype=torch.long)
        mine[: len(batches)] = torch.tensor([len(b) for b in batches], dtype=torch.long)
        counts = accelerator.gather(mine[None].to(accelerator.device)).cpu()  # [N, n_steps]
        for s in range(n_steps):
            if s < len(batches):
                mb_pairs, mb_pref = pairs[batches[s]], pref[batches[s]]
            else:  # a dummy pair with zero preference: constant loss, zero gradient, collectives in step
                mb_pairs, mb_pref = group_pairs(1, 2), torch.zeros(1, 2)
            scale = N * counts[rank, s].item() / counts[:, s].sum().item()
            updates.append(d3po_update(u, rollout, mb_pairs, mb_pref, g, scale, group))
    return updates, sum(n)


class D3POTrainer(DiffusionRLTrainer):
    """D3PO on the shared diffusion RL trainer: pairs within each group, preferences from the feedback."""

    def load_offline(self):
        if self.cfg.feedback != "labels":
            return None
        from diffusion_align.label import load_labelled

        return load_labelled(self.cfg.labels_dir, self.accelerator.device, self.cfg)

    def update(self, rollout, scores, all_scores, rec, g):
        cfg, acc = self.cfg, self.accelerator
        if scores is None:  # human labels: the labelled pairs every epoch, split over processes
            rank, n = acc.process_index, acc.num_processes
            pairs, pref = self.offline[1][rank::n], self.offline[2][rank::n]
        else:
            pairs = group_pairs(len(rollout) // cfg.samples_per_prompt, cfg.samples_per_prompt)
            pref = pair_preferences(scores, pairs)
            keep = pref[:, 0] != 0  # ties carry no gradient: skip them
            rec["tie_rate"] = 1 - keep.float().mean().item()  # this process's share
            pairs, pref = pairs[keep], pref[keep]
        updates, rec["pairs"] = train_d3po_epoch(self.updater, rollout, pairs, pref, g)
        self.counters["pairs"] += rec["pairs"]
        return updates
