"""ControlNet++ (reward consistency) and Ctrl-U (uncertainty-weighted reward) fine-tuning of a ControlNet.

    accelerate launch diffusion_align/train.py --config configs/controlnet_seg_shapes.yaml     (method: controlnet_reward)

One optimiser step, for a batch of scenes of the ShapesWorld world (training compositions), each with its
condition (``seg``: palette segmentation image; ``edges``: edge map) and caption (the scene's prompt):

1. **Diffusion loss.** The real image's latent is noised to ``t ~ U[0, T)``; the ControlNet-guided UNet
   predicts in the model's own parametrisation (the embedded teacher predicts ``v``: the loss is on ``v``).
2. **Reward consistency (ControlNet++).** The one-step estimate ``x̂0`` (``√ᾱ_t·x_t − √(1−ᾱ_t)·v``, or
   ``(x_t − √(1−ᾱ_t)·ε)/√ᾱ_t`` for ε-prediction) is decoded, the reward model reads the condition back from it,
   and the per-pixel loss against the condition (cross-entropy for segmentation, squared error for edges) is
   averaged over the samples with ``t ≤ t_max`` only: ``L = L_diff + grad_scale · L_rew``.
3. **Uncertainty (Ctrl-U, ``uncertainty`` not ``none``).** The batch is duplicated — ``timestep``: the same
   noise at ``t`` and ``min(t + 1, T − 1)`` (the reference code); ``noise``: the same ``t`` with a second noise
   (the paper) — giving a primary and an auxiliary reading ``ĉ1, ĉ2``; per pixel, not detached,
   segmentation: ``U = u_scale·KL(ĉ2 ‖ ĉ1)`` and ``L = L_diff + λ_r · masked_mean(exp(−U) ⊙ L_rew) + mean(U)``;
   edges (the reference code's dense form): ``U = |ĉ1 − ĉ2|`` and ``… + u_scale·mean(U)``. ``λ_r`` rises
   linearly over ``reward_warmup`` of the run (the reference: 5k of 35k steps) to ``grad_scale``.

Deviation: ADE20K's unlabelled pixels are ignored by the references; here background is a real class of the
world and is scored, so extra objects are punished. Only the ControlNet trains; checkpoints, resume, Ctrl-C,
the time budget and ``metrics.jsonl`` are the trainer layer's; ``controlnet/`` is the exported model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mmreward.config_file import ConfigError, YamlConfig, need
from mmreward.trainer import Trainer

CONDITIONS = ("seg", "edges")
UNCERTAINTY = ("none", "timestep", "noise")
#: the references' defaults: ControlNet++ (grad_scale, t_max) and Ctrl-U (grad_scale, t_max, u_scale) per condition
DEFAULTS = {("seg", False): (0.5, 200, None), ("edges", False): (1.0, 200, None),
            ("seg", True): (0.1, 400, 1.0), ("edges", True): (1.0, 400, 0.1)}


@dataclass
class ControlNetRewardConfig(YamlConfig):
    method: str = "controlnet_reward"
    pretrained: str = "assets/shapesworld-t2i-teacher"  #: the text-to-image pipeline the ControlNet steers
    controlnet: str = "assets/shapesworld-controlnet-seg"  #: a ControlNetModel folder or hub id
    condition: str = "seg"
    #: the per-pixel reward model: a transformers segmenter (seg) or an edge estimator folder (edges)
    reward_model: str = "assets/shapesworld-segformer"
    output_dir: str = "outputs/controlnet_seg_shapes"
    seed: int = 0
    uncertainty: str = "none"  #: none (ControlNet++), timestep or noise (Ctrl-U)
    grad_scale: float | None = None  #: None: the reference's value for the condition and method
    t_max: int | None = None  #: samples with t <= t_max are rewarded (None: 200 ControlNet++, 400 Ctrl-U)
    u_scale: float | None = None  #: None: 1 (seg), 0.1 (edges)
    add_timestep: int = 1  #: the auxiliary pass's timestep offset (uncertainty: timestep)
    reward_warmup: float = 1 / 7  #: share of total_steps over which λ_r rises linearly (Ctrl-U)
    learning_rate: float = 1e-4
    max_grad_norm: float = 1.0
    batch_size: int = 8
    total_steps: int = 300
    max_minutes: float | None = None
    checkpoint_every: int = 25

    def validate(self) -> None:
        need(self.method == "controlnet_reward", f"method must be 'controlnet_reward', got {self.method!r}")
        need(self.condition in CONDITIONS, f"condition must be one of {CONDITIONS}, got {self.condition!r}")
        need(self.uncertainty in UNCERTAINTY, f"uncertainty must be one of {UNCERTAINTY}, got {self.uncertainty!r}")
        g, t, u = DEFAULTS[(self.condition, self.uncertainty != "none")]
        self.grad_scale = g if self.grad_scale is None else self.grad_scale
        self.t_max = t if self.t_max is None else self.t_max
        self.u_scale = (u or 0.0) if self.u_scale is None else self.u_scale
        need(self.grad_scale >= 0, f"grad_scale must be >= 0, got {self.grad_scale}")
        need(0 <= self.t_max, f"t_max must be >= 0, got {self.t_max}")
        need(self.u_scale >= 0, f"u_scale must be >= 0, got {self.u_scale}")
        need(self.add_timestep >= 0, f"add_timestep must be >= 0, got {self.add_timestep}")
        need(0 <= self.reward_warmup <= 1, f"reward_warmup must be in [0, 1], got {self.reward_warmup}")
        for k in ("batch_size", "total_steps", "checkpoint_every"):
            need(getattr(self, k) >= 1, f"{k} must be >= 1, got {getattr(self, k)}")
        need(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        need(self.max_minutes is None or self.max_minutes > 0, "max_minutes must be > 0 or null")


def x0_estimate(sched, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The one-step clean latent ``[B,C,h,w]`` from the model's prediction, in the scheduler's
    ``prediction_type`` (:func:`diffusion_align.ddim_logprob.split_prediction`); ``t`` ``[B]``."""
    from diffusion_align.ddim_logprob import split_prediction

    try:
        return split_prediction(sched, pred, x_t, sched.alphas_cumprod.to(x_t.device)[t].view(-1, 1, 1, 1))[0]
    except ValueError as e:
        raise ConfigError(f"pretrained: {e}") from e


def diffusion_target(sched, latents, noise, t) -> torch.Tensor:
    return sched.get_velocity(latents, noise, t) if sched.config.prediction_type == "v_prediction" else noise


def load_reward_model(cfg: ControlNetRewardConfig, device):
    from mmreward.dense_rewards import EdgeReward, SegmentationReward

    if cfg.condition == "seg":
        return SegmentationReward.from_pretrained(cfg.reward_model).to(device)
    return EdgeReward.from_pretrained(cfg.reward_model).to(device)


class ControlNetRewardTrainer(Trainer):
    """ControlNet++ / Ctrl-U on the trainer layer: one unit is one optimiser step."""

    run_files = ("controlnet",)

    def __init__(self, cfg: ControlNetRewardConfig, resume: bool = False, stop_after_epochs: int | None = None,
                 progress: bool = True, overwrite: bool = False) -> None:
        from diffusers import ControlNetModel

        from diffusion_align.pipelines import make_adapter
        from diffusion_align.sampling import load_pipeline
        from mmreward.assets import resolve_asset

        super().__init__(cfg.output_dir, cfg.total_steps, vars(cfg), resume=resume, overwrite=overwrite,
                         checkpoint_every=cfg.checkpoint_every, max_minutes=cfg.max_minutes, stop_after=stop_after_epochs,
                         progress=progress, name=f"controlnet-{cfg.uncertainty if cfg.uncertainty != 'none' else 'plusplus'}",
                         unit="step")
        self.cfg = cfg
        device = self.accelerator.device
        pipe = load_pipeline(cfg.pretrained, device)
        self.adapter = make_adapter(pipe)
        self.unet, self.vae, self.sched = pipe.unet, pipe.vae, pipe.scheduler
        self.tokenizer, self.text_encoder = pipe.tokenizer, pipe.text_encoder
        for m in (self.unet, self.vae, self.text_encoder):
            m.requires_grad_(False)
        try:
            self.controlnet = ControlNetModel.from_pretrained(resolve_asset(cfg.controlnet)).to(device).train()
        except (OSError, ValueError) as e:
            raise ConfigError(f"controlnet: cannot load {cfg.controlnet!r}: {e}") from e
        self.reward = load_reward_model(cfg, device)
        self.opt = torch.optim.AdamW(self.controlnet.parameters(), lr=cfg.learning_rate, weight_decay=1e-2)

    def state(self):
        return self.controlnet, self.opt

    def postfix(self, row: dict) -> dict:
        return {"diff": f"{row['diffusion_loss']:.3f}", "rew": f"{row['reward_loss']:.3f}"}

    def reward_scale(self, i: int) -> float:
        cfg = self.cfg
        if cfg.uncertainty == "none" or cfg.reward_warmup == 0:
            return cfg.grad_scale
        return min(1.0, i / (cfg.reward_warmup * cfg.total_steps)) * cfg.grad_scale

    def predict(self, x_t, t, emb, cond) -> torch.Tensor:
        from diffusion_align.embedded.train_shapes_controlnet import controlled_prediction

        return controlled_prediction(self.controlnet, self.unet, x_t, t, emb, cond)

    def read(self, image: torch.Tensor):
        """The reward model's reading of images ``[B, 3, H, W]`` in [0, 1]: logits ``[B, C, H, W]`` (seg) or
        edges ``[B, H, W]``."""
        return self.reward.logits(image) if self.cfg.condition == "seg" else self.reward.predict(image)

    def read_condition(self, latents: torch.Tensor):
        """The reward model's reading of decoded latents (:meth:`read` of :meth:`PipelineAdapter.decode`)."""
        return self.read(self.adapter.decode(latents))

    def loss_map(self, reading, labels) -> torch.Tensor:
        if self.cfg.condition == "seg":
            return F.cross_entropy(reading, labels.long(), reduction="none")
        return (reading - labels) ** 2

    def train_step(self, i: int) -> dict:
        from diffusion_align.embedded.train_shapes_controlnet import condition_images
        from diffusion_align.embedded.train_shapes_t2i import encode_prompts
        from diffusion_align.pipelines import encode_images
        from mmreward.shapes.conditions import edge_map, segmentation
        from mmreward.shapes.data import sample_batch
        from mmreward.uncertainty import (
            regression_uncertainty,
            segmentation_uncertainty,
            uncertainty_weighted_loss,
        )

        cfg, t0, dev = self.cfg, time.time(), self.accelerator.device
        rng = np.random.default_rng([cfg.seed, i])  # the step's draws depend on (seed, step) only: resumable
        images, metas, scenes = sample_batch(rng, cfg.batch_size, return_scenes=True)
        cond = condition_images(scenes, cfg.condition).to(dev)
        if cfg.condition == "seg":
            labels = torch.from_numpy(np.stack([segmentation(s) for s in scenes])).to(dev)
        else:
            labels = torch.from_numpy(np.stack([edge_map(s) for s in scenes])).to(dev)
        z0 = encode_images(self.vae, images)
        with torch.no_grad():
            emb = encode_prompts(self.tokenizer, self.text_encoder, [m["prompt"] for m in metas])
        T = self.sched.config.num_train_timesteps
        t = torch.from_numpy(rng.integers(0, T, cfg.batch_size)).to(dev)
        noise = torch.from_numpy(rng.standard_normal(z0.shape).astype(np.float32)).to(dev)
        if cfg.uncertainty != "none":  # the primary and the auxiliary pass in one batch
            if cfg.uncertainty == "timestep":
                t2, noise2 = (t + cfg.add_timestep).clamp(max=T - 1), noise
            else:
                t2, noise2 = t, torch.from_numpy(rng.standard_normal(z0.shape).astype(np.float32)).to(dev)
            z0, emb, cond = z0.repeat(2, 1, 1, 1), emb.repeat(2, 1, 1), cond.repeat(2, 1, 1, 1)
            t, noise = torch.cat([t, t2]), torch.cat([noise, noise2])
        x_t = self.sched.add_noise(z0, noise, t)
        pred = self.predict(x_t, t, emb, cond)
        diff_loss = F.mse_loss(pred, diffusion_target(self.sched, z0, noise, t))
        b = cfg.batch_size
        rewarded = t[:b] <= cfg.t_max
        reward_loss, u_mean, scale = torch.zeros((), device=dev), torch.zeros((), device=dev), self.reward_scale(i)
        if rewarded.any() and (cfg.grad_scale > 0 or cfg.uncertainty != "none"):
            # decode only the rewarded samples (the others are masked out of the reward anyway)
            keep = torch.nonzero(rewarded).flatten()
            rows = torch.cat([keep, keep + b]) if cfg.uncertainty != "none" else keep
            reading = self.read_condition(x0_estimate(self.sched, pred[rows], x_t[rows], t[rows]))
            per_pixel = self.loss_map(reading[: len(keep)], labels[keep])
            if cfg.uncertainty == "none":
                reward_loss = per_pixel.mean((1, 2)).sum() / (len(keep) + 1e-10)
            else:
                primary, aux = reading[: len(keep)], reading[len(keep):]
                if cfg.condition == "seg":  # U = u_scale·KL in the weight and the regulariser
                    weighted = uncertainty_weighted_loss(per_pixel, segmentation_uncertainty(primary, aux, cfg.u_scale))
                    reward_loss, u_mean = weighted.reward, weighted.uncertainty
                else:  # the reference's dense form: exp(−|ĉ1 − ĉ2|) weights, u_scale on the regulariser only
                    weighted = uncertainty_weighted_loss(per_pixel, regression_uncertainty(primary, aux, 1.0))
                    reward_loss, u_mean = weighted.reward, cfg.u_scale * weighted.uncertainty
        loss = diff_loss + scale * reward_loss + u_mean
        if not torch.isfinite(loss):
            raise ValueError(f"step {i}: the loss is NaN/inf; stopping (the last checkpoint is kept)")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(self.controlnet.parameters(), cfg.max_grad_norm))
        self.opt.step()
        return {"loss": loss.item(), "diffusion_loss": diff_loss.item(), "reward_loss": reward_loss.item(),
                "uncertainty": u_mean.item(), "reward_scale": scale, "rewarded": int(rewarded.sum()),
                "grad_norm": norm, "step_s": time.time() - t0, "elapsed_s": self.seconds}

    def finish(self) -> dict:
        self.controlnet.save_pretrained(self.out / "controlnet", safe_serialization=True)
        return {"controlnet": str(self.out / "controlnet")}


def train(cfg: ControlNetRewardConfig, resume: bool = False, stop_after_epochs: int | None = None,
          progress: bool = True, overwrite: bool = False) -> dict:
    """Run a ControlNet++ / Ctrl-U config; returns the run's result (steps, stop reason, the exported ControlNet)."""
    trainer = ControlNetRewardTrainer(cfg, resume=resume, stop_after_epochs=stop_after_epochs, progress=progress,
                                      overwrite=overwrite)
    return {**trainer.run(), "elapsed": trainer.seconds}
