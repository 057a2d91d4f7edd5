"""What D3PO and DDPO share: a diffusion pipeline sampled as a policy with LoRA adapters, on the
:class:`mmreward.trainer.Trainer` layer. One epoch = (1) each process samples ``num_batches_per_epoch ×
sample_batch_size`` prompts (``samples_per_prompt`` DDIM trajectories each, sharing ``x_T``) with per-step
log-probabilities; (2) the feedback source scores the images; (3) the method's :meth:`update` trains the
LoRA weights on them. The forward pass of training goes through the accelerate-wrapped denoiser, so LoRA
gradients are all-reduced across processes (ddpo-pytorch issue #10).

Exports: ``checkpoint/`` holds the LoRA weights in the pipeline's own format next to the training state
(:func:`diffusion_align.lora.save_lora`), ``lora/`` the final adapters, ``grids/epoch_NNNN.png`` samples.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffusion_align import lora
from diffusion_align.config import ConfigError, DiffusionRLConfig
from diffusion_align.lora import LoraState, save_lora
from diffusion_align.pipelines import make_adapter
from diffusion_align.rollout import Rollout, ddim_scheduler
from diffusion_align.sampling import load_pipeline, read_prompts, sample_epoch, seeds_for
from mmreward.trainer import Trainer


def add_lora(model: torch.nn.Module, cfg: DiffusionRLConfig) -> list[torch.nn.Parameter]:
    """LoRA adapters of the config's rank, alpha and targets on ``model``; the trainable parameters."""
    try:
        return lora.add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def train_steps(cfg: DiffusionRLConfig, T: int, rng: torch.Generator, n: int) -> torch.Tensor:
    """``[n, T_train]`` step indices (0 = the first, noisiest step): a random order of the trainable steps
    per pair/sample (all ``T``, or the first ``train_first_steps``), of which the first
    ``int(pool * timestep_fraction)`` (at least 1) are trained, as in the references."""
    pool = T if cfg.train_first_steps is None else min(T, cfg.train_first_steps)
    t_train = max(1, int(pool * cfg.timestep_fraction))
    return torch.stack([torch.randperm(pool, generator=rng)[:t_train] for _ in range(n)])


def optimizer_step(accelerator, opt, params, max_norm: float) -> dict:
    """Clip the (all-reduced) gradients and step; a non-finite gradient norm skips the step instead of
    writing NaN into the weights (every process sees the same norm, so all skip together).
    Returns ``{"grad_norm", "skipped"}`` for the metrics."""
    norm = float(accelerator.clip_grad_norm_(params, max_norm))
    if math.isfinite(norm):
        opt.step()
    opt.zero_grad(set_to_none=True)
    return {"grad_norm": norm, "skipped": float(not math.isfinite(norm))}


def weight_checksum(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """``[2]`` float64 (sum, sum of squares) of the trainable weights: equal on every process iff in sync."""
    flat = torch.cat([p.detach().double().flatten() for p in params])
    return torch.stack([flat.sum(), (flat * flat).sum()])


def mean_metrics(updates: list[dict]) -> dict:
    """Per key, the mean of the updates' finite values (``skipped``: the count)."""
    out = {}
    for k in updates[0] if updates else {}:
        vals = [u[k] for u in updates if math.isfinite(u[k])]
        out[k] = float(np.sum(vals) if k == "skipped" else np.mean(vals) if vals else float("nan"))
    return out


@dataclass
class PolicyUpdate:
    """What one optimiser step of D3PO or DDPO works with: the config, the accelerator, the DDIM scheduler
    of the rollouts, the (accelerate-wrapped) denoiser, the optimiser and the trainable parameters."""

    cfg: DiffusionRLConfig
    accelerator: object
    sched: object
    unet: torch.nn.Module
    opt: torch.optim.Optimizer
    params: list[torch.nn.Parameter]

    def step(self) -> dict:
        """Clip and apply the accumulated gradients (:func:`optimizer_step`)."""
        return optimizer_step(self.accelerator, self.opt, self.params, self.cfg.max_grad_norm)


class DiffusionRLTrainer(Trainer):
    """Sampling, feedback, LoRA, checkpoints and exports; subclasses implement :meth:`update`."""

    run_files = ("lora", "grids")

    def __init__(self, cfg: DiffusionRLConfig, resume: bool = False, stop_after_epochs: int | None = None,
                 progress: bool = True, overwrite: bool = False) -> None:
        from accelerate import Accelerator

        if cfg.mixed_precision != "no" and not torch.cuda.is_available():
            raise ConfigError(f"mixed_precision: {cfg.mixed_precision} needs a GPU; use 'no' on the CPU")
        # no GPU: processes talk over gloo (launched by torchrun, e.g. `accelerate launch --multi_gpu`)
        tracker = {"log_with": cfg.log_with, "project_dir": cfg.output_dir} if cfg.log_with else {}
        try:
            accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available(), **tracker)
        except (ValueError, ImportError) as e:  # an unknown tracker
            raise ConfigError(f"log_with: {e}") from e
        if cfg.log_with and not accelerator.log_with:  # accelerate only warns when the tracker is not installed
            raise ConfigError(f"log_with: {cfg.log_with!r} is not installed (e.g. pip install 'mmalign[tensorboard]')")
        super().__init__(cfg.output_dir, cfg.num_epochs, vars(cfg), resume=resume, overwrite=overwrite,
                         checkpoint_every=cfg.checkpoint_every,
                         max_minutes=cfg.max_minutes, stop_after=stop_after_epochs, progress=progress,
                         accelerator=accelerator, name=cfg.method, unit="epoch")
        self.cfg = cfg
        self.offline = self.load_offline()
        self.prompts = read_prompts(cfg.prompts) if self.offline is None else []

        torch.manual_seed(cfg.seed)  # identical LoRA init on every process
        self.pipe = make_adapter(load_pipeline(cfg.pretrained, accelerator.device))
        try:
            self.sched = ddim_scheduler(self.pipe, cfg.sample_steps)
        except ValueError as e:
            raise ConfigError(f"pretrained {cfg.pretrained!r}: {e}") from e
        self.params = add_lora(self.pipe.denoiser, cfg)
        opt = torch.optim.AdamW(self.params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
        # train through `self.unet` (wrapped): gradients are all-reduced
        self.unet, self.opt = accelerator.prepare(self.pipe.denoiser, opt)
        self.module = accelerator.unwrap_model(self.unet)
        self.updater = PolicyUpdate(cfg, accelerator, self.sched, self.unet, self.opt, self.params)
        self.lora_state = LoraState(self.module)
        if self.offline is None:
            from diffusion_align.feedback import make_scorer

            self.scorer = make_scorer(cfg.feedback, accelerator.device)
        self.counters = {"samples": 0, "pairs": 0, "updates": 0}

    # ------------------------------------------------------------------------------ the method's part
    def load_offline(self) -> tuple[Rollout, torch.Tensor, torch.Tensor] | None:
        """Pre-sampled, labelled trajectories to train on instead of sampling (D3PO's human feedback)."""
        return None

    def update(self, rollout: Rollout, scores: torch.Tensor | None, all_scores: torch.Tensor, rec: dict,
               g: torch.Generator) -> list[dict]:
        """Train on this process's ``rollout`` with its feedback ``scores`` ``[B]`` (``all_scores``: every
        process's, in process order; ``None`` / empty for offline labels) drawing randomness from ``g``;
        returns one metrics dict per optimiser step and may add entries to the epoch's row ``rec``."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------- the layer's hooks
    def state(self):
        return self.lora_state, getattr(self.opt, "optimizer", self.opt)

    def state_extra(self) -> dict:
        return {"counters": dict(self.counters), "method": self.cfg.method}

    def load_state_extra(self, extra: dict) -> None:
        if extra.get("method") != self.cfg.method:
            raise ConfigError(f"--resume: {self.ckpt} is a {extra.get('method')} run, the config says {self.cfg.method}")
        self.counters = {k: extra["counters"][k] for k in ("samples", "pairs", "updates")}
        self.elapsed = float(extra.get("elapsed", extra["counters"].get("elapsed", 0.0)))

    def on_checkpoint(self, folder: Path) -> None:
        save_lora(self.pipe, folder)

    def finish(self) -> dict:
        save_lora(self.pipe, self.out / "lora")
        return {}

    def postfix(self, row: dict) -> dict:
        return {"score": f"{row.get('score_mean', float('nan')):.3f}", "loss": f"{row.get('loss', float('nan')):.4f}"}

    def train_step(self, epoch: int) -> dict:
        from accelerate.utils import gather_object

        cfg, acc = self.cfg, self.accelerator
        rec: dict = {}
        t0 = time.time()
        scores = None
        if self.offline is not None:  # labelled trajectories every epoch, split over processes
            rollout = self.offline[0]
            all_scores = torch.zeros(0)
        else:
            # 1. sample (no gradients; the adapters as they are now = the "old" policy)
            self.unet.eval()
            rollout = sample_epoch(cfg, self.pipe, self.module, self.prompts, epoch, acc.process_index)
            rec["sample_s"] = time.time() - t0
            rec["samples_per_s"] = len(rollout) / rec["sample_s"]
            if not torch.isfinite(rollout.latents).all():
                raise ValueError(f"epoch {epoch}: the policy sampled NaN/inf latents; stopping (the checkpoint "
                                 f"of epoch {self.saved_position} is kept; lower learning_rate or max_grad_norm)")
            # 2. feedback
            scores = self.scorer(rollout.images, rollout.prompts)
            all_scores = acc.gather(scores.to(acc.device)).cpu()
            if not torch.isfinite(all_scores).all():
                raise ValueError(f"feedback {cfg.feedback!r} returned NaN/inf scores at epoch {epoch}; "
                                 f"stopping (the checkpoint of epoch {self.saved_position} is kept)")
            rec["score_mean"] = all_scores.mean().item()
            rec["score_std"] = all_scores.std().item() if len(all_scores) > 1 else 0.0
            if cfg.check_weight_sync:
                rec["sample_ids"] = gather_object([(acc.process_index, int(s)) for s in rollout.seeds])
        # 3. train
        t1 = time.time()
        g = torch.Generator().manual_seed(int(seeds_for(cfg, epoch, 10**6, acc.process_index).integers(2**31)))
        self.unet.train()
        updates = self.update(rollout, scores, all_scores, rec, g)
        self.counters["samples"] += len(all_scores)
        self.counters["updates"] += len(updates)
        rec["train_s"] = time.time() - t1
        rec.update(mean_metrics(updates))
        rec.update({"updates": len(updates), "samples": self.counters["samples"], "total_pairs": self.counters["pairs"],
                    "elapsed_s": self.seconds})
        if "pairs" in rec:
            rec["pairs_per_s"] = rec["pairs"] * cfg.num_inner_epochs / max(rec["train_s"], 1e-9)
        if cfg.check_weight_sync:
            sums = acc.gather(weight_checksum(self.params).to(acc.device)[None]).cpu()
            rec["weight_sync_max_diff"] = (sums - sums[0]).abs().max().item()
            rec["weight_checksum"] = sums[0].tolist()
        if self.is_main and cfg.grid_every and epoch % cfg.grid_every == 0:
            from mmreward.images import image_grid, to_pil

            (self.out / "grids").mkdir(exist_ok=True)
            n = min(len(rollout), 4 * cfg.samples_per_prompt)
            image_grid([to_pil(im) for im in rollout.images[:n]], cols=cfg.samples_per_prompt).save(
                self.out / "grids" / f"epoch_{epoch:04d}.png")
        return rec

    def train(self) -> dict:
        """Run; the result adds the counters (samples, pairs, updates) and whether Ctrl-C stopped it."""
        res = self.run()
        return {**res, "interrupted": self.stopped_by == "interrupt", **self.counters, "elapsed": self.seconds}
