"""Train a reward model on preference data (Bradley–Terry / pairwise cross-entropy, ties 0.5/0.5).

    python -m mmreward.train_reward --config configs/reward_head_shapes.yaml [--resume] [--set key=value ...]
    accelerate launch -m mmreward.train_reward --config ...

Modes (one config dataclass, :class:`RewardTrainConfig`):

* ``head``: an :class:`~mmreward.heads.MLPHead` on the frozen CLIP backbone (the LAION aesthetic
  predictor's / ImageReward's MLP). Embeddings are computed once; the output folder loads with
  ``load_reward("head:OUT")``.
* ``finetune``: CLIP itself, as PickScore and HPSv2 do: the reward of an image is
  ``exp(logit_scale) · cos(text, image)`` and the softmax over an example's images is fitted to its label.
  ``lora``: the same with peft LoRA adapters on the towers' linear layers, merged at export. The output
  is an open_clip model folder: ``load_reward("clip:OUT?mode=logit")``.

Outputs in ``output_dir``: the model (``OUT/``), ``metrics.jsonl`` (a line per epoch: loss, accuracy on the
validation data against its labels and, when present, against the noise-free ``truth``), and
``checkpoint/`` (weights, optimizer, position in the epoch, RNG; written every ``checkpoint_every``
steps, at each epoch's end and on Ctrl-C, which finishes the current step first), from which ``--resume``
continues.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .command import run_command, with_examples
from .config_file import ConfigError, YamlConfig, need
from .heads import INPUTS, REFERENCE_DROPOUT, REFERENCE_HIDDEN
from .preference import PreferenceExample, pairwise_accuracy, preference_loss, read_preferences
from .trainer import Trainer, setup_logging

MODES = ("head", "finetune", "lora")


@dataclass
class RewardTrainConfig(YamlConfig):
    data: str = ""  #: training preference JSONL (mmreward.preference)
    val_data: str | None = None  #: evaluated after every epoch
    backbone: str = "clip:assets/shapesworld-clip"  #: an open_clip spec (clip:...) for every mode; hfclip:... for head
    mode: str = "head"
    output_dir: str = "outputs/reward_head"
    seed: int = 0
    # head
    inputs: str = "image_text"
    hidden: list[int] = field(default_factory=lambda: list(REFERENCE_HIDDEN))
    dropout: list[float] = field(default_factory=lambda: list(REFERENCE_DROPOUT))
    activation: str = "none"
    normalize: bool = True  #: store the training rewards' mean/std as the score normalisation (ImageReward)
    # finetune / lora
    lora_rank: int = 8
    lora_alpha: float = 8.0
    #: the towers' MLP layers (open_clip's attention uses nn.MultiheadAttention, whose out_proj weight is read
    #: directly, so an adapter on it would be merged at export without having been trained)
    lora_targets: list[str] = field(default_factory=lambda: ["c_fc", "c_proj"])
    #: weight each example by 1 / (examples of its prompt), as PickScore does (prompts with many pairs do not dominate)
    per_prompt_weighting: bool = False
    # optimisation
    epochs: int = 20
    batch_size: int = 64  #: examples per step
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_minutes: float | None = None
    checkpoint_every: int = 200  #: steps

    def validate(self) -> None:
        need(bool(self.data.strip()), "data must name a preference JSONL file")
        need(self.mode in MODES, f"mode must be one of {MODES}, got {self.mode!r}")
        need(self.inputs in INPUTS, f"inputs must be one of {INPUTS}, got {self.inputs!r}")
        need(len(self.dropout) == len(self.hidden), f"dropout needs one value per hidden layer ({len(self.hidden)}), got {len(self.dropout)}")
        need(all(h >= 1 for h in self.hidden), f"hidden sizes must be >= 1, got {self.hidden}")
        need(all(0 <= p < 1 for p in self.dropout), f"dropouts must be in [0, 1), got {self.dropout}")
        need(self.activation in ("none", "relu", "gelu"), f"activation must be none, relu or gelu, got {self.activation!r}")
        for k in ("epochs", "batch_size", "checkpoint_every", "lora_rank"):
            need(getattr(self, k) >= 1, f"{k} must be >= 1, got {getattr(self, k)}")
        need(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        need(self.max_minutes is None or self.max_minutes > 0, f"max_minutes must be > 0, got {self.max_minutes}")
        if self.mode != "head":
            need(self.backbone.startswith("clip:"), f"mode {self.mode} fine-tunes an open_clip model: backbone must be clip:..., got {self.backbone!r}")


# ----------------------------------------------------------------------------------------- data
def load_pixels(paths: list[str], preprocess, batch: int = 256) -> torch.Tensor:
    """Preprocessed pixels ``[N,3,S,S]`` (the backbone's input) of image files, in torch (differentiable ops)."""
    from .images import to_tensor

    out = []
    for i in range(0, len(paths), batch):
        ims = [to_tensor(p) for p in paths[i : i + batch]]
        out.extend(preprocess(im[None])[0] for im in ims)
    return torch.stack(out)


def index_images(examples: list[PreferenceExample]) -> tuple[list[str], torch.Tensor, torch.Tensor, list[str]]:
    """``(unique paths, image index [E,K], label [E,K], prompts)``; every example must have the same K."""
    ks = {len(e.images) for e in examples}
    if len(ks) != 1:
        raise ConfigError(f"all examples must have the same number of images, got {sorted(ks)}")
    paths = list(dict.fromkeys(p for e in examples for p in e.images))
    pos = {p: i for i, p in enumerate(paths)}
    idx = torch.tensor([[pos[p] for p in e.images] for e in examples])
    label = torch.tensor([e.label for e in examples], dtype=torch.float32)
    return paths, idx, label, [e.prompt for e in examples]


def prompt_weights(prompts: list[str]) -> torch.Tensor:
    """``[E]`` weights ``1 / (examples sharing the prompt)`` (PickScore's weighting: every prompt counts once)."""
    counts = Counter(prompts)
    return torch.tensor([1.0 / counts[p] for p in prompts])


# ---------------------------------------------------------------------------------------- models
class ClipPreference(torch.nn.Module):
    """CLIP fine-tuned on preferences: reward ``exp(logit_scale) · cos(text, image)`` (PickScore)."""

    def __init__(self, backbone) -> None:
        super().__init__()
        self.model, self.tokenizer = backbone.model, backbone.tokenizer

    def forward(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Pixels ``[B,3,S,S]`` (preprocessed), one prompt each -> rewards ``[B]``."""
        import torch.nn.functional as F

        img = F.normalize(self.model.encode_image(pixels), dim=-1)
        uniq = list(dict.fromkeys(prompts))
        txt = F.normalize(self.model.encode_text(self.tokenizer(uniq).to(pixels.device)), dim=-1)
        txt = txt[torch.tensor([uniq.index(p) for p in prompts], device=pixels.device)]
        return self.model.logit_scale.exp() * (img * txt).sum(-1)


def build(cfg: RewardTrainConfig):
    """``(trainable module, backbone, reward_fn)``: ``reward_fn(batch_items) -> [B,K]`` is set up in :func:`train`."""
    from .heads import HeadReward, MLPHead
    from .registry import load_backbone

    try:
        backbone = load_backbone(cfg.backbone)
    except Exception as e:
        raise ConfigError(f"backbone {cfg.backbone!r}: {e}") from e
    if cfg.mode == "head":
        dim = backbone.encode_text(["a"]).shape[-1]
        in_dim = dim if cfg.inputs == "image" else 2 * dim
        head = MLPHead(in_dim, tuple(cfg.hidden), tuple(cfg.dropout), cfg.activation)
        return HeadReward(backbone, head, cfg.inputs, backbone_spec=cfg.backbone), backbone
    model = ClipPreference(backbone)
    model.model.requires_grad_(True)
    if cfg.mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        model.model.requires_grad_(False)
        inject_adapter_in_model(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=cfg.lora_targets), model.model)
        model.model.logit_scale.requires_grad_(False)
    return model, backbone


# ----------------------------------------------------------------------------------------- the run
class RewardTrainer(Trainer):
    """Preference training on the trainer layer: one unit is one optimiser step; a metrics row (and a
    checkpoint) at the end of every epoch over the training examples."""

    run_files = ("model",)

    def __init__(self, cfg: RewardTrainConfig, resume: bool = False, stop_after_steps: int | None = None,
                 progress: bool = True, overwrite: bool = False) -> None:
        from accelerate import Accelerator

        torch.manual_seed(cfg.seed)
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
        super().__init__(cfg.output_dir, 0, vars(cfg), resume=resume, overwrite=overwrite,
                         checkpoint_every=cfg.checkpoint_every,
                         max_minutes=cfg.max_minutes, stop_after=stop_after_steps, progress=progress,
                         accelerator=accelerator, name=f"reward {cfg.mode}", unit="step")
        self.cfg = cfg
        try:
            self.train_ex = read_preferences(cfg.data)
            self.val_ex = read_preferences(cfg.val_data) if cfg.val_data else []
        except Exception as e:
            raise ConfigError(str(e)) from e
        self.steps_per_epoch = math.ceil(len(self.train_ex) / cfg.batch_size)
        self.total = cfg.epochs * self.steps_per_epoch
        self.raw, self.backbone = build(cfg)
        paths, self.idx, self.label, self.prompts = index_images(self.train_ex)
        self.weight = prompt_weights(self.prompts) if cfg.per_prompt_weighting else None
        # inputs of every image: head features (frozen backbone, computed once) or preprocessed pixels
        t0 = time.time()
        if cfg.mode == "head":
            with torch.no_grad():
                pixels = load_pixels(paths, self.backbone.preprocess)
                self.img = torch.cat([self.backbone.encode_image(pixels[i : i + 256]) for i in range(0, len(pixels), 256)])
            txt = self.backbone.encode_text(list(dict.fromkeys(self.prompts)))
            tpos = {p: i for i, p in enumerate(dict.fromkeys(self.prompts))}
            self.ptxt = txt[torch.tensor([tpos[p] for p in self.prompts])]  # [E, D]
            self.embed_s = time.time() - t0
            self.raw.head.train()
        else:
            self.pixels = load_pixels(paths, self.backbone.preprocess)
            self.embed_s = 0.0
            self.raw.train()
        # the trained module goes through accelerate's wrapper (gradients all-reduced across processes)
        self.trainable = self.raw.head if cfg.mode == "head" else self.raw
        self.params = [p for p in self.trainable.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.net, self.opt = accelerator.prepare(self.trainable, opt)
        self.counters = {"pairs": 0, "train_s": 0.0}
        self.losses: list[float] = []

    def rewards_of(self, rows: torch.Tensor) -> torch.Tensor:
        """Rewards ``[b,K]`` of the images of training examples ``rows``."""
        k = self.idx.shape[1]
        flat = self.idx[rows].flatten()
        if self.cfg.mode == "head":
            from .heads import head_features

            x = head_features(self.img[flat], self.ptxt[rows].repeat_interleave(k, 0), self.cfg.inputs)
            return self.net(x).view(len(rows), k)
        return self.net(self.pixels[flat], [self.prompts[int(r)] for r in rows for _ in range(k)]).view(len(rows), k)

    def state(self):
        return self.trainable, self.opt

    def state_extra(self) -> dict:
        return {"counters": {**self.counters, "elapsed": self.seconds}, "mode": self.cfg.mode}

    def load_state_extra(self, extra: dict) -> None:
        self.counters = {k: extra["counters"][k] for k in ("pairs", "train_s")}
        self.elapsed = float(extra.get("elapsed", extra["counters"]["elapsed"]))

    def checkpoint_due(self, position: int) -> bool:
        return position % self.checkpoint_every == 0 or position % self.steps_per_epoch == 0

    def row_position(self, row: dict) -> int:
        return int(row["step"]) - 1  # rows carry the step count after their step

    def postfix(self, row: dict) -> dict:
        return {"loss": f"{np.mean(self.losses[-20:]):.4f}"} if self.losses else {}

    def train_step(self, step: int) -> dict | None:
        cfg, acc, spe = self.cfg, self.accelerator, self.steps_per_epoch
        epoch, within = divmod(step, spe)
        order = torch.randperm(len(self.train_ex), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
        rows = order[within * cfg.batch_size : (within + 1) * cfg.batch_size]
        rows = rows[acc.process_index :: acc.num_processes]
        t_step = time.time()
        with acc.autocast():
            loss = preference_loss(self.rewards_of(rows), self.label[rows], None if self.weight is None else self.weight[rows])
        if not torch.isfinite(loss):
            raise ValueError(f"step {step}: non-finite loss; stopping (the last checkpoint is kept; lower learning_rate)")
        acc.backward(loss)
        acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.losses.append(loss.item())
        self.counters["pairs"] += len(rows) * acc.num_processes
        self.counters["train_s"] += time.time() - t_step
        done = step + 1
        if done % spe and done != self.total:
            return None
        rec = {"step": done, "epoch": done // spe, "loss": float(np.mean(self.losses)),
               "pairs_per_s": self.counters["pairs"] / max(self.counters["train_s"], 1e-9)}
        self.losses = []
        if self.val_ex:
            self.trainable.eval()
            rec.update({f"val_{k}": v for k, v in evaluate_examples(self.raw, cfg, self.backbone, self.val_ex).items()})
            self.trainable.train()
        return rec

    def finish(self) -> dict:
        self.trainable.eval()
        return {"model": str(export(self.raw, self.cfg, self.backbone, self.rewards_of, len(self.train_ex)))}


def train(cfg: RewardTrainConfig, resume: bool = False, stop_after_steps: int | None = None, progress: bool = True,
          overwrite: bool = False) -> dict:
    """Run a reward-training config; returns the run's result (steps, counters, the exported model)."""
    trainer = RewardTrainer(cfg, resume=resume, stop_after_steps=stop_after_steps, progress=progress, overwrite=overwrite)
    res = trainer.run()
    return {**res, "total_steps": trainer.total, "embed_s": trainer.embed_s, **trainer.counters,
            "elapsed": trainer.seconds}


@torch.no_grad()
def evaluate_examples(raw, cfg: RewardTrainConfig, backbone, examples: list[PreferenceExample]) -> dict:
    """Pairwise accuracy against the labels (and the noise-free ``truth`` when every example has one)."""
    rewards = score_examples(reward_module(raw, cfg, backbone), examples)
    label = torch.tensor([e.label for e in examples])
    res = {"accuracy": pairwise_accuracy(rewards, label)["accuracy"]} if rewards.shape[1] == 2 else {}
    if rewards.shape[1] == 2 and all(e.truth is not None for e in examples):
        res["accuracy_truth"] = pairwise_accuracy(rewards, torch.tensor([e.truth for e in examples]))["accuracy"]
    res["loss"] = preference_loss(rewards, label).item()
    return res


def reward_module(raw, cfg: RewardTrainConfig, backbone):
    """A :class:`~mmreward.base.VisionReward` view of the model being trained."""
    if cfg.mode == "head":
        return raw
    from .zero_shot import CLIPScore

    return CLIPScore(backbone, mode="logit")  # the backbone wraps the same (trained) open_clip model


@torch.no_grad()
def score_examples(reward, examples: list[PreferenceExample], batch: int = 128) -> torch.Tensor:
    """Rewards ``[E,K]`` of every example's images under ``reward`` (a VisionReward), through the benchmark
    harness's scorer (each distinct image–prompt pair scored once)."""
    from .bench import BenchItem, score_candidates

    if hasattr(reward, "backbone"):
        reward.backbone.clear_cache()  # text embeddings change while CLIP is fine-tuned
    items = [BenchItem([(p, e.prompt) for p in e.images], e.label) for e in examples]
    return torch.tensor(score_candidates(reward, items, batch, progress=False), dtype=torch.float32)


def export(raw, cfg: RewardTrainConfig, backbone, rewards_of, n_train: int) -> Path:
    """Write the trained reward to ``output_dir/model``: a head folder or an open_clip folder."""
    folder = Path(cfg.output_dir) / "model"
    if cfg.mode == "head":
        from .heads import save_head_reward

        if cfg.normalize:
            with torch.no_grad():
                r = torch.cat([rewards_of(torch.arange(i, min(i + 1024, n_train))).flatten() for i in range(0, n_train, 1024)])
            raw.mean, raw.std = float(r.mean()), float(r.std().clamp(min=1e-6))
        return save_head_reward(raw, folder)
    from .backbones import save_open_clip

    src = cfg.backbone.removeprefix("clip:").removeprefix("local-dir:")
    cfg_file = Path(src) / "open_clip_config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"export: {cfg.backbone!r} is not an open_clip folder; fine-tuned export needs the model config")
    full = json.loads(cfg_file.read_text())
    model = raw.model
    if cfg.mode == "lora":
        from peft.tuners.tuners_utils import BaseTunerLayer

        for m in model.modules():
            if isinstance(m, BaseTunerLayer):
                m.merge()
        state = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    else:
        state = model.state_dict()
    import open_clip

    clean, _, _ = open_clip.create_model_and_transforms("local-dir:" + src)
    clean.load_state_dict(state)
    return save_open_clip(clean, full["model_cfg"], folder, full.get("preprocess_cfg"))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (RewardTrainConfig keys)")
    p.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in output_dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (YAML value)")
    p.add_argument("--stop-after-steps", type=int, default=None, help="checkpoint and stop after this step (simulates a kill)")
    p.add_argument("--no-progress", action="store_true")
    with_examples(p, "mmalign train-reward --config reward_head_shapes", "mmalign train-reward --config reward_head_shapes --resume")
    args = p.parse_args(argv)
    setup_logging()
    cfg = RewardTrainConfig.from_cli(args.config, args.set)
    res = train(cfg, resume=args.resume, stop_after_steps=args.stop_after_steps, progress=not args.no_progress,
                overwrite=args.overwrite)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    sys.exit(run_command(main))
