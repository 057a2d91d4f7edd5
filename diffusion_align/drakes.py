"""DRAKES (Wang et al., ICLR 2025): reward fine-tuning of a masked discrete diffusion model by
backpropagating the reward through a Gumbel-softmax relaxation of its sampling trajectory, with a KL
penalty against the frozen pretrained model.

    python diffusion_align/train.py --config configs/drakes_dna.yaml      (method: drakes)

Objective: ``max_θ E[r(x_0)] − α·KL(P_θ ‖ P_pre)`` over whole trajectories (optimum ∝ ``p_pre·exp(r/α)``).
Each optimiser step (``num_accum_steps`` batches of ``batch_size`` trajectories):

1. **Sample** ``sample_steps`` ancestral steps from all-masked. The first ``sample_steps − truncate_steps``
   are hard draws, detached. The last ``truncate_steps`` (K) draw ``y = softmax((log q + G)/τ)`` with
   Gumbel noise ``G`` and carry gradients; the new state is ``c·x_t + (1 − c)·y`` with ``c = 1 − x_t[mask]``
   (unmasked positions are copied). With ``hard_states`` (default) ``y`` is straight-through
   (``onehot(argmax y)`` forward, ``∇y`` backward) at every step, so the forward values are exactly the hard
   sampler's and the denoiser always sees the one-hot inputs it was trained on; ``hard_states: false`` feeds
   soft states as the reference does, with straight-through only on the output.
2. **Reward** ``r(x_0)`` of the oracle on the straight-through output ``[B, L, 4]``.
3. **KL**: at each step, the exact KL between the two models' transition distributions at the current state,
   ``(t − s)/t · Σ_masked Σ_v p_θ(v) log(p_θ(v)/p_pre(v))`` (unmasked positions transition
   deterministically under both), summed over steps: a one-sample estimate of the path KL. Over the
   early, detached steps it still reaches θ through ``p_θ`` (``truncate_kl: false``, the default); each
   early step's term is backpropagated at once, so memory stays at K steps. ``early_kl_samples: N`` takes
   N random early steps per batch, weighted by (early steps)/N: unbiased, and the other early steps cost
   one no-grad forward pass instead of two forwards and a backward.
   *Deviation:* the reference multiplies its per-step term by the copy flag and the current one-hot, which
   makes it exactly 0 at hard states (it only acts through soft ones); this is the KL the paper defines.
4. ``loss = −mean r + α·mean KL``; gradients clipped to ``max_grad_norm``; Adam.

Outputs in ``output_dir``: ``metrics.jsonl``, ``checkpoint/`` (model, optimizer, RNG; every
``checkpoint_every`` steps, at the time budget and on Ctrl-C; ``--resume`` continues), ``model/`` (the
fine-tuned denoiser, loadable with :func:`diffusion_align.dna.mdlm.load_model`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffusion_align.dna.mdlm import gumbel, one_hot_state, step_probs, timesteps, x0_log_probs
from mmreward.config_file import ConfigError, YamlConfig, need
from mmreward.trainer import Trainer


@dataclass
class DrakesConfig(YamlConfig):
    method: str = "drakes"
    #: DNA diffusion model folder (:func:`diffusion_align.dna.mdlm.load_model`)
    pretrained: str = "assets/dna-mdlm"
    #: reward oracle: folder, TorchScript file (:func:`diffusion_align.dna.oracle.load_oracle`)
    reward: str = "assets/dna-oracle-reward"
    reward_column: int = 0
    #: a second oracle logged alongside (the paper's evaluation oracle); null: none
    eval_reward: str | None = "assets/dna-oracle-eval"
    output_dir: str = "outputs/drakes_dna"
    seed: int = 0

    sample_steps: int = 64  # reference: 128
    truncate_steps: int = 16  # K, the last steps that carry gradients (reference: 50 of 128)
    gumbel_temp: float = 1.0
    hard_states: bool = True
    alpha: float = 1.0e-3  # KL weight (0: DRAKES without KL)
    truncate_kl: bool = False  # true: KL over the last K steps only
    #: the KL of this many random early steps per batch, weighted (unbiased, cheaper); null: every early step
    early_kl_samples: int | None = None

    batch_size: int = 16
    num_accum_steps: int = 2
    learning_rate: float = 1.0e-4
    max_grad_norm: float = 1.0
    num_epochs: int = 300  # optimiser steps
    max_minutes: float | None = None
    checkpoint_every: int = 20

    def validate(self) -> None:
        need(self.method == "drakes", f"method must be drakes, got {self.method!r}")
        need(bool(self.pretrained.strip()), "pretrained must name a DNA diffusion model folder")
        need(bool(self.reward.strip()), "reward must name an oracle (folder or TorchScript file)")
        need(self.sample_steps >= 1, f"sample_steps must be >= 1, got {self.sample_steps}")
        need(1 <= self.truncate_steps <= self.sample_steps,
             f"truncate_steps must be in [1, sample_steps={self.sample_steps}], got {self.truncate_steps}")
        need(self.gumbel_temp > 0, f"gumbel_temp must be > 0, got {self.gumbel_temp}")
        need(self.alpha >= 0 and math.isfinite(self.alpha), f"alpha must be a finite number >= 0, got {self.alpha}")
        need(self.early_kl_samples is None or self.early_kl_samples >= 1,
             f"early_kl_samples must be >= 1 or null, got {self.early_kl_samples}")
        for k in ("batch_size", "num_accum_steps", "num_epochs", "checkpoint_every"):
            need(getattr(self, k) >= 1, f"{k} must be >= 1, got {getattr(self, k)}")
        need(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        need(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        need(self.max_minutes is None or self.max_minutes > 0, f"max_minutes must be > 0, got {self.max_minutes}")


# --------------------------------------------------------------------------------- the pieces
def step_kl(logp: torch.Tensor, logp_ref: torch.Tensor, state: torch.Tensor, t: float, s: float) -> torch.Tensor:
    """KL ``[B]`` between the transitions ``x_t → x_s`` of two models at ``state`` ``[B, L, V+1]``, given their
    ``log p(x_0 | x_t)`` ``[B, L, V]``: ``(t − s)/t · Σ_l state[l, mask]·Σ_v p(v)(log p(v) − log p_ref(v))``."""
    masked = state[..., -1]
    per_pos = (logp.exp() * (logp - logp_ref)).sum(-1)
    return (t - s) / t * (masked * per_pos).sum(-1)


def relaxed_trajectory(model, ref, n: int, steps: int, truncate: int, temp: float = 1.0, hard_states: bool = True,
                       generator: torch.Generator | None = None,
                       early_kl: Callable[[torch.Tensor], None] | None = None,
                       early_kl_samples: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch of DRAKES trajectories. Returns ``(x0 [n, L, V+1]`` (straight-through one-hot, gradients
    through the last ``truncate`` steps), ``kl_late [n]`` (with gradients), ``kl_early [n]`` (values)).

    ``ref``: the frozen pretrained model for the KL (``None``: no KL). ``early_kl``: called with each early
    step's KL ``[n]`` (a graph through ``model``'s weights) to backpropagate it at once; ``None`` leaves the
    early steps without gradients (then their KL is still returned, as values). ``early_kl_samples``: only
    that many early steps, drawn at random, get the KL, weighted by ``early steps / early_kl_samples`` (an
    unbiased estimate of the early KL and its gradient for this trajectory, at a fraction of the cost)."""
    cfg = model.config
    V, L = cfg.vocab, cfg.length
    device = next(model.parameters()).device
    ts = timesteps(steps).tolist()
    x = one_hot_state(torch.full((n, L), V, dtype=torch.long, device=device), V)
    kl_late = torch.zeros(n, device=device)
    kl_early = torch.zeros(n, device=device)
    n_early = steps - truncate
    picked, weight = set(range(n_early)), 1.0
    if ref is not None and early_kl_samples is not None and early_kl_samples < n_early:
        picked = set(torch.randperm(n_early, generator=generator)[:early_kl_samples].tolist())
        weight = n_early / early_kl_samples
    for i in range(steps):
        t, s = ts[i], ts[i + 1]
        late = i >= n_early
        with torch.set_grad_enabled(late or (early_kl is not None and i in picked)):
            logp = x0_log_probs(model, x)
            if ref is not None and (late or i in picked):
                with torch.no_grad() if not late else torch.enable_grad():
                    logp_ref = x0_log_probs(ref, x)
                kl = step_kl(logp, logp_ref, x, t, s)
                if late:
                    kl_late = kl_late + kl
                else:
                    kl_early += weight * kl.detach()
                    if early_kl is not None:
                        early_kl(weight * kl)
        q = step_probs(logp if late else logp.detach(), t, s)
        g = gumbel(q.shape, generator, device)
        if late:
            y = torch.softmax((q.clamp_min(1e-30).log() + g) / temp, -1)
            hard = F.one_hot(y.argmax(-1), V + 1).to(y.dtype)
            if hard_states:
                y = hard + (y - y.detach())  # straight-through
            keep = 1 - x[..., V : V + 1]  # 1 where x_t is unmasked: copied
            x = keep * x + (1 - keep) * y
        else:
            draw = F.one_hot((q.clamp_min(1e-30).log() + g).argmax(-1), V + 1).float()
            x = torch.where(x[..., V : V + 1] > 0.5, draw, x).detach()
    if not hard_states:  # the reference's output: straight-through of the final soft state
        hard = F.one_hot(x[..., :V].argmax(-1), V + 1).to(x.dtype)
        x = hard + (x - x.detach())
    return x, kl_late, kl_early


# ------------------------------------------------------------------------------------- training
class DrakesTrainer(Trainer):
    """DRAKES on the trainer layer: one unit is one optimiser step (``num_accum_steps`` batches)."""

    run_files = ("model",)

    def __init__(self, cfg: DrakesConfig, resume: bool = False, stop_after_epochs: int | None = None,
                 progress: bool = True, overwrite: bool = False) -> None:
        from diffusion_align.dna.mdlm import load_model
        from diffusion_align.dna.oracle import load_oracle

        super().__init__(cfg.output_dir, cfg.num_epochs, vars(cfg), resume=resume, overwrite=overwrite,
                         checkpoint_every=cfg.checkpoint_every,
                         max_minutes=cfg.max_minutes, stop_after=stop_after_epochs, progress=progress, name="drakes",
                         unit="epoch")
        self.cfg = cfg
        try:
            self.model = load_model(cfg.pretrained)
            self.reward = load_oracle(cfg.reward, column=cfg.reward_column)
            self.eval_reward = load_oracle(cfg.eval_reward, column=cfg.reward_column) if cfg.eval_reward else None
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(str(e)) from e
        self.ref = copy.deepcopy(self.model).requires_grad_(False).eval() if cfg.alpha > 0 else None
        self.model.train()
        torch.manual_seed(cfg.seed)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.learning_rate)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.early = None
        if self.ref is not None and not cfg.truncate_kl:
            def early(kl: torch.Tensor) -> None:  # each early step's KL, backpropagated at once
                (cfg.alpha * kl.mean() / cfg.num_accum_steps).backward()

            self.early = early

    def state(self):
        return self.model, self.opt

    def state_extra(self) -> dict:
        return {"method": "drakes"}

    def postfix(self, row: dict) -> dict:
        return {"reward": f"{row['reward']:.3f}", "kl": f"{row['kl']:.2f}"}

    def train_step(self, epoch: int) -> dict:
        cfg, n_acc, B = self.cfg, self.cfg.num_accum_steps, self.cfg.batch_size
        # the step's RNG depends on (seed, step) only: resumable and reproducible
        self.gen.manual_seed(cfg.seed * 1_000_003 + epoch)
        t0 = time.time()
        rec = {"reward": 0.0, "kl": 0.0, "eval_reward": 0.0}
        for _ in range(n_acc):
            x0, kl_late, kl_early = relaxed_trajectory(self.model, self.ref, B, cfg.sample_steps, cfg.truncate_steps,
                                                       cfg.gumbel_temp, cfg.hard_states, self.gen, self.early,
                                                       cfg.early_kl_samples)
            r = self.reward(x0[..., :-1])
            if not torch.isfinite(r).all():
                raise ValueError(f"step {epoch}: the reward oracle returned NaN/inf; stopping (the checkpoint of "
                                 f"step {epoch - epoch % cfg.checkpoint_every} is kept)")
            loss = (-r.mean() + cfg.alpha * kl_late.mean()) / n_acc
            loss.backward()
            rec["reward"] += r.mean().item() / n_acc
            rec["kl"] += (kl_late.detach() + kl_early).mean().item() / n_acc
            if self.eval_reward is not None:
                with torch.no_grad():
                    rec["eval_reward"] += self.eval_reward(x0.detach()[..., :-1]).mean().item() / n_acc
        norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm))
        if math.isfinite(norm):
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        rec.update({"grad_norm": norm, "skipped": not math.isfinite(norm), "step_s": time.time() - t0,
                    "elapsed_s": self.seconds})
        if self.eval_reward is None:
            rec.pop("eval_reward")
        return rec

    def save_model(self) -> None:
        from diffusion_align.dna.mdlm import save_model

        save_model(self.model, self.out / "model", {"fine_tuned_from": self.cfg.pretrained, "method": "drakes",
                                                    "alpha": self.cfg.alpha, "steps": self.position})


def train(cfg: DrakesConfig, resume: bool = False, stop_after_epochs: int | None = None, progress: bool = True,
          overwrite: bool = False) -> dict:
    """Run a DRAKES config; ``model/`` holds the weights reached (also when stopped early: ``--resume``
    continues from the checkpoint)."""
    trainer = DrakesTrainer(cfg, resume=resume, stop_after_epochs=stop_after_epochs, progress=progress,
                            overwrite=overwrite)
    res = trainer.run()
    trainer.save_model()
    return {**res, "elapsed": trainer.seconds}
