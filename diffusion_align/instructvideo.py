"""InstructVideo (Yuan et al., CVPR 2024): reward fine-tuning of a text-to-video model, framed as editing.

    accelerate launch diffusion_align/train.py --config configs/instructvideo_shapes.yaml    (method: instructvideo)

One optimiser step, for a batch of video-world prompts:

1. **Editing.** A source video (``source: dataset``, the reference: a ground-truth video of the prompt;
   ``sample``: a fresh sample of the model) is encoded and noised with the forward process to the DDIM step
   ``d(τ·D)`` (``D = ddim_steps``, ``τ = tau``: with D = 20, τ = 0.6 the reference starts at t = 551), and the
   remaining ``τ·D`` DDIM steps (eta 0, classifier-free guidance) denoise it. ``full_chain: true`` runs all
   ``D`` steps from pure noise instead.
2. **Truncated backpropagation.** Only the last ``backprop_steps`` (K) steps run with gradients (each under
   gradient checkpointing); the earlier ones run without.
3. **Segmental, temporally attenuated reward** (:class:`mmreward.SegmentalVideoReward`): the decoded frames
   are split into ``segments``, one frame per segment is scored by the image reward ``reward`` (any spec), with
   weights ``exp(−lambda_tar·|g(i) − F//2|)``; the loss is ``mean(1 − R)``.

Only LoRA adapters (rank 4 on the spatial and temporal attention projections) train. Checkpoints, resume,
Ctrl-C, the time budget and ``metrics.jsonl`` are the trainer layer's; ``lora/`` loads with
``AnimateDiffPipeline.load_lora_weights``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from mmreward.config_file import ConfigError, YamlConfig, need
from mmreward.trainer import Trainer

SOURCES = ("dataset", "sample")


@dataclass
class InstructVideoConfig(YamlConfig):
    method: str = "instructvideo"
    pretrained: str = "assets/shapesworld-t2v"  #: an AnimateDiff pipeline (folder or hub id)
    output_dir: str = "outputs/instructvideo_shapes"
    seed: int = 0
    #: image reward spec scoring the sampled frames (any spec of mmreward.load_reward)
    reward: str = "clip:assets/shapesworld-clip"
    #: what the image reward reads: the prompt without its motion phrase (content) or the whole prompt (full)
    reward_prompt: str = "content"
    segments: int = 4
    sampling: str = "tsn"
    lambda_tar: float = 1.0  #: 0 turns the temporal attenuation off
    normalize_tar: bool = False  #: the reference's weights are unnormalised
    #: training prompts: the video world's training compositions, this share with a motion phrase
    motion_share: float = 0.5
    frames: int = 8
    source: str = "dataset"
    full_chain: bool = False
    ddim_steps: int = 20  #: D
    tau: float = 0.6  #: the edited share of the chain (τ·D steps)
    backprop_steps: int = 1  #: K, the last steps that carry gradients
    guidance_scale: float = 3.0
    gradient_checkpointing: bool = True
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    learning_rate: float = 1e-4
    max_grad_norm: float = 1.0
    batch_size: int = 2
    total_steps: int = 1000
    max_minutes: float | None = None
    checkpoint_every: int = 20

    def validate(self) -> None:
        need(self.method == "instructvideo", f"method must be 'instructvideo', got {self.method!r}")
        need(self.source in SOURCES, f"source must be one of {SOURCES}, got {self.source!r}")
        need(self.reward_prompt in ("content", "full"), f"reward_prompt must be 'content' or 'full', got {self.reward_prompt!r}")
        need(self.sampling in ("tsn", "uniform", "all"), f"sampling must be tsn, uniform or all, got {self.sampling!r}")
        need(0 < self.tau <= 1, f"tau must be in (0, 1], got {self.tau}")
        edited = self.ddim_steps if self.full_chain else int(self.tau * self.ddim_steps)
        need(edited >= 1, f"tau * ddim_steps = {self.tau * self.ddim_steps:g} leaves no DDIM step to run")
        need(1 <= self.backprop_steps <= edited,
             f"backprop_steps must be in 1..{edited} (the steps that run), got {self.backprop_steps}")
        for k in ("segments", "frames", "ddim_steps", "lora_rank", "batch_size", "total_steps", "checkpoint_every"):
            need(getattr(self, k) >= 1, f"{k} must be >= 1, got {getattr(self, k)}")
        need(self.sampling == "all" or self.frames >= self.segments,
             f"frames ({self.frames}) must be at least segments ({self.segments})")
        need(self.lambda_tar >= 0, f"lambda_tar must be >= 0, got {self.lambda_tar}")
        need(0 <= self.motion_share <= 1, f"motion_share must be in [0, 1], got {self.motion_share}")
        need(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        need(self.max_minutes is None or self.max_minutes > 0, "max_minutes must be > 0 or null")


def edit_steps(timesteps: torch.Tensor, cfg: InstructVideoConfig) -> torch.Tensor:
    """The DDIM timesteps that run (descending): the last ``τ·D`` of the ``D``-step schedule, or all of them
    with ``full_chain``; the first is the step the source video is noised to."""
    return timesteps if cfg.full_chain else timesteps[len(timesteps) - int(cfg.tau * cfg.ddim_steps):]


class InstructVideoTrainer(Trainer):
    """InstructVideo on the trainer layer: one unit is one optimiser step."""

    run_files = ("lora",)

    def __init__(self, cfg: InstructVideoConfig, resume: bool = False, stop_after_epochs: int | None = None,
                 progress: bool = True, overwrite: bool = False) -> None:
        from diffusion_align.lora import add_lora
        from diffusion_align.pipelines import AnimateDiffAdapter, make_adapter
        from diffusion_align.rollout import ddim_scheduler
        from diffusion_align.sampling import load_pipeline
        from mmreward.video_reward import load_video_reward

        super().__init__(cfg.output_dir, cfg.total_steps, vars(cfg), resume=resume, overwrite=overwrite,
                         checkpoint_every=cfg.checkpoint_every, max_minutes=cfg.max_minutes, stop_after=stop_after_epochs,
                         progress=progress, name="instructvideo", unit="step")
        self.cfg = cfg
        self.adapter = make_adapter(load_pipeline(cfg.pretrained, self.accelerator.device))
        if not isinstance(self.adapter, AnimateDiffAdapter):
            raise ConfigError(f"pretrained: {cfg.pretrained!r} is not an AnimateDiff (text-to-video) pipeline")
        self.adapter.frames = cfg.frames
        self.unet = self.adapter.denoiser
        torch.manual_seed(cfg.seed)
        try:
            self.params = add_lora(self.unet, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        except ValueError as e:
            raise ConfigError(f"lora_targets: {e}") from e
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.opt = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=1e-4)
        self.sched = ddim_scheduler(self.adapter, cfg.ddim_steps)
        self.reward = load_video_reward(cfg.reward, cfg.segments, cfg.sampling, cfg.lambda_tar, cfg.normalize_tar,
                                        device=self.accelerator.device)

    def state(self):
        from diffusion_align.lora import LoraState

        return LoraState(self.unet), self.opt

    def postfix(self, row: dict) -> dict:
        return {"reward": f"{row['reward']:.3f}"}

    def source_latents(self, metas: list[dict], rng: np.random.Generator, gen: torch.Generator, cond, uncond):
        """The clean latents ``[B,C,F,h,w]`` to edit: ground-truth videos, or the model's own samples."""
        from diffusion_align.embedded.train_shapes_t2v import encode_videos
        from mmreward.shapes.video import sample_video

        cfg = self.cfg
        if cfg.source == "dataset":
            videos = np.stack([sample_video(m, rng, cfg.frames, allow_held_out=False) for m in metas])
            return encode_videos(self.adapter.pipe.vae, videos).to(self.adapter.device)
        x = torch.randn(self.adapter.latent_shape(len(metas)), generator=gen).to(self.adapter.device)
        with torch.no_grad():
            for t in self.sched.timesteps:
                x = self._step(x, t, cond, uncond)
        return x

    def _step(self, x, t, cond, uncond):
        from diffusion_align.ddim_logprob import ddim_step_deterministic

        out = self.adapter.denoise(x, t, cond, uncond, self.cfg.guidance_scale, model=self.unet)
        return ddim_step_deterministic(self.sched, out, t, x)

    def train_step(self, i: int) -> dict:
        from mmreward.shapes.video import content_meta, sample_video_meta

        cfg, t0 = self.cfg, time.time()
        rng = np.random.default_rng([cfg.seed, i])  # the step's draws depend on (seed, step) only: resumable
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + i)
        metas = [sample_video_meta(rng, "train", cfg.motion_share) for _ in range(cfg.batch_size)]
        prompts = [m["prompt"] for m in metas]
        cond, uncond = self.adapter.encode(prompts, guidance=cfg.guidance_scale > 1)
        steps = edit_steps(self.sched.timesteps, cfg)
        if cfg.full_chain:
            x = torch.randn(self.adapter.latent_shape(cfg.batch_size), generator=gen).to(self.adapter.device)
        else:
            z0 = self.source_latents(metas, rng, gen, cond, uncond)
            noise = torch.randn(z0.shape, generator=gen).to(z0.device)
            x = self.sched.add_noise(z0, noise, steps[:1].expand(cfg.batch_size))
        grad_from = len(steps) - cfg.backprop_steps
        for k, t in enumerate(steps):
            with torch.set_grad_enabled(k >= grad_from):
                x = self._step(x, t, cond, uncond)
        video = self.adapter.decode(x)  # [B, F, 3, H, W] in [0, 1]
        reward_prompts = [content_meta(m)["prompt"] for m in metas] if cfg.reward_prompt == "content" else prompts
        score = self.reward.evaluate(video, reward_prompts, generator=gen)
        if not torch.isfinite(score.reward).all():
            raise ValueError(f"step {i}: the reward returned NaN/inf; stopping (the last checkpoint is kept)")
        loss = (1 - score.reward).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm))
        self.opt.step()
        return {"reward": score.reward.mean().item(), "loss": loss.item(), "grad_norm": norm,
                "frame_score_mean": score.scores.mean().item(), "edited_steps": len(steps),
                "step_s": time.time() - t0, "elapsed_s": self.seconds}

    def finish(self) -> dict:
        from peft.utils import get_peft_model_state_dict

        self.adapter.pipe.save_lora_weights(self.out / "lora", unet_lora_layers=get_peft_model_state_dict(self.unet),
                                            safe_serialization=True)
        return {"lora": str(self.out / "lora")}


def train(cfg: InstructVideoConfig, resume: bool = False, stop_after_epochs: int | None = None, progress: bool = True,
          overwrite: bool = False) -> dict:
    """Run an InstructVideo config; returns the run's result (steps, stop reason, the exported LoRA)."""
    trainer = InstructVideoTrainer(cfg, resume=resume, stop_after_epochs=stop_after_epochs, progress=progress,
                                   overwrite=overwrite)
    return {**trainer.run(), "elapsed": trainer.seconds}
