"""The config dataclasses of D3PO and DDPO, read from YAML and validated: :class:`D3POConfig` and
:class:`DDPOConfig` share :class:`DiffusionRLConfig` (the pipeline, prompts, feedback, LoRA, sampler,
optimiser and budget keys), and ``DiffusionRLConfig.from_yaml`` / ``from_dict`` return the one the
``method`` key names.

Keys are flat, as in trl's ``DDPOConfig``; the defaults are the references' where they carry over (D3PO:
β 0.1, ε 0.1, eta 1, AdamW wd 1e-4, grad-norm 1; DDPO: clip range 1e-4, advantage clip 5, per-prompt
statistics with buffer 16 / min count 16) and sized for the embedded ShapesWorld model on a CPU otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmreward.config_file import ConfigError, YamlConfig, need

METHODS = ("d3po", "ddpo")
#: the keys that define the sampler (what a sample was drawn with: labels and cached evaluations check them)
SAMPLER_KEYS = ("pretrained", "sample_steps", "sample_eta", "guidance_scale", "sde_steps")
__all__ = ["ConfigError", "D3POConfig", "DDPOConfig", "DiffusionRLConfig", "METHODS", "SAMPLER_KEYS"]


@dataclass
class DiffusionRLConfig(YamlConfig):
    """What D3PO and DDPO share. Read through this class, a config becomes the subclass its ``method`` names."""

    method: str = "d3po"
    #: diffusers pipeline: hub id or local folder (default: the embedded multi-step ShapesWorld model)
    pretrained: str = "assets/shapesworld-t2i-teacher"
    output_dir: str = "outputs/d3po_shapes"
    seed: int = 0
    mixed_precision: str = "no"  # no | fp16 | bf16 (GPU)

    # prompts: "shapes:train" / "shapes:eval" (committed ShapesWorld suites) or a text/JSONL file
    prompts: str = "shapes:train"
    # preference (D3PO) / reward (DDPO) source: evaluator, evaluator:graded, a reward spec, or labels
    feedback: str = "evaluator"
    labels_dir: str | None = None  # with feedback: labels (written by diffusion_align.label)

    # LoRA (peft) on the UNet's attention projections
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])

    # sampler: DDIM with eta > 0 (a stochastic policy), classifier-free guidance inside the policy
    sample_steps: int = 20
    sample_eta: float = 1.0
    guidance_scale: float = 3.0
    #: only the first N steps stochastic (eta ``sample_eta``), deterministic DDIM (eta 0) after: the image is a
    #: function of the trained steps' draws alone (MixGRPO's mixed SDE/ODE sampling); None: all stochastic
    sde_steps: int | None = None
    #: prompts per sampling batch per process; D3PO draws ``samples_per_prompt`` images of each from one x_T
    sample_batch_size: int = 8
    samples_per_prompt: int = 2
    num_batches_per_epoch: int = 1

    # training
    num_epochs: int = 100
    num_inner_epochs: int = 1
    train_batch_size: int = 4  # pairs (D3PO) or samples (DDPO) per optimiser step and process
    timestep_fraction: float = 1.0
    #: train only the first N denoising steps (the noisiest, where the layout is decided); None: all steps
    train_first_steps: int | None = None
    learning_rate: float = 3e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0

    # budget, checkpoints, logging
    max_minutes: float | None = None  # stop (and checkpoint) after this much wall time
    checkpoint_every: int = 5  # epochs
    grid_every: int = 1  # epochs (0: never)
    check_weight_sync: bool = False  # all-gather a LoRA checksum after every update (multi-process test)
    #: experiment trackers of accelerate (``tensorboard``, ``wandb``, ``all``...; installed separately, e.g. the
    #: ``tensorboard`` extra), fed every metrics row; null: metrics.jsonl only
    log_with: str | None = None

    def validate(self) -> None:
        need(self.method in METHODS, f"method must be one of {METHODS} (drakes and instructvideo have their own configs), got {self.method!r}")
        need(self.mixed_precision in ("no", "fp16", "bf16"), f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        need(bool(self.pretrained.strip()), "pretrained must name a pipeline (hub id or folder)")
        need(bool(self.prompts.strip()), "prompts must name a suite (shapes:train) or a file")
        need(self.sample_steps >= 1, f"sample_steps must be >= 1, got {self.sample_steps}")
        need(0 < self.sample_eta <= 1, f"sample_eta must be in (0, 1] (eta = 0 is deterministic: no log-probability), got {self.sample_eta}")
        need(self.guidance_scale >= 0, f"guidance_scale must be >= 0, got {self.guidance_scale}")
        for k in ("sample_batch_size", "num_batches_per_epoch", "num_epochs", "num_inner_epochs", "train_batch_size",
                  "lora_rank"):
            need(getattr(self, k) >= 1, f"{k} must be >= 1, got {getattr(self, k)}")
        need(0 < self.timestep_fraction <= 1, f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        need(self.train_first_steps is None or 1 <= self.train_first_steps <= self.sample_steps,
             f"train_first_steps must be in [1, sample_steps={self.sample_steps}] or null, got {self.train_first_steps}")
        if self.sde_steps is not None:
            need(1 <= self.sde_steps <= self.sample_steps,
                 f"sde_steps must be in [1, sample_steps={self.sample_steps}] or null, got {self.sde_steps}")
            need(self.train_first_steps is not None and self.train_first_steps <= self.sde_steps,
                 f"steps after sde_steps={self.sde_steps} are deterministic (no log-probability to train): set "
                 f"train_first_steps <= sde_steps (got {self.train_first_steps})")
        need(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        need(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        need(self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        need(self.max_minutes is None or self.max_minutes > 0, f"max_minutes must be > 0, got {self.max_minutes}")
        need(bool(self.lora_targets), "lora_targets must name at least one module")
        if self.feedback == "labels":
            need(self.labels_dir is not None, "feedback: labels needs labels_dir (written by python -m diffusion_align.label)")

    @classmethod
    def from_dict(cls, data: dict):
        if cls is DiffusionRLConfig and isinstance(data, dict):  # the method's own config
            method = data.get("method", "d3po")
            need(method in METHODS, f"method must be one of {METHODS} (drakes and instructvideo have their own configs), got {method!r}")
            return {"d3po": D3POConfig, "ddpo": DDPOConfig}[method].from_dict(data)
        return super().from_dict(data)


@dataclass
class D3POConfig(DiffusionRLConfig):
    """D3PO: pairs of each group of ``samples_per_prompt`` images, the DPO loss on per-step log-ratios."""

    beta: float = 0.1
    eps: float = 0.1
    #: π_ref of the ratio: "base" (the frozen pretrained model, adapters off: the reference code) or "sampler"
    #: (the weights that drew this epoch's samples: the paper's per-round refresh of π_ref; no extra forward pass)
    reference: str = "base"
    #: weight of a KL anchor to the base model, ``kl_coef · ½·(log π_θ − log π_ref)²`` per trained transition (the
    #: k2 estimator, per-dimension log-probabilities; DPOK's and DRAKES' KL term): 0 is the reference D3PO
    kl_coef: float = 0.0

    def validate(self) -> None:
        super().validate()
        need(self.method == "d3po", f"a D3POConfig has method d3po, got {self.method!r}")
        need(self.samples_per_prompt >= 2, f"d3po needs samples_per_prompt >= 2 (pairs), got {self.samples_per_prompt}")
        need(self.beta > 0, f"beta must be > 0, got {self.beta}")
        need(0 < self.eps < 1, f"eps must be in (0, 1), got {self.eps}")
        need(self.reference in ("base", "sampler"), f"reference must be base or sampler, got {self.reference!r}")
        need(self.kl_coef >= 0, f"kl_coef must be >= 0, got {self.kl_coef}")


@dataclass
class DDPOConfig(DiffusionRLConfig):
    """DDPO: PPO-clip on the denoising steps with per-prompt normalised advantages."""

    method: str = "ddpo"
    clip_range: float = 1e-4
    adv_clip_max: float = 5.0
    per_prompt_stat_tracking: bool = True
    stat_buffer_size: int = 16
    stat_min_count: int = 16

    def validate(self) -> None:
        super().validate()
        need(self.method == "ddpo", f"a DDPOConfig has method ddpo, got {self.method!r}")
        need(self.samples_per_prompt >= 1, f"samples_per_prompt must be >= 1, got {self.samples_per_prompt}")
        for k in ("stat_buffer_size", "stat_min_count"):
            need(getattr(self, k) >= 1, f"{k} must be >= 1, got {getattr(self, k)}")
        need(self.clip_range > 0, f"clip_range must be > 0, got {self.clip_range}")
        need(self.adv_clip_max > 0, f"adv_clip_max must be > 0, got {self.adv_clip_max}")
        need(self.feedback != "labels", "ddpo needs a reward (evaluator or a reward spec), not labels")
        need(self.stat_min_count <= self.stat_buffer_size,
             f"stat_min_count ({self.stat_min_count}) must not exceed stat_buffer_size ({self.stat_buffer_size})")
