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
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config_file import ConfigError, YamlConfig, need
from .heads import INPUTS, REFERENCE_DROPOUT, REFERENCE_HIDDEN
from .preference import PreferenceExample, pairwise_accuracy, preference_loss, read_preferences
from .stop import StopFlag

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
def train(cfg: RewardTrainConfig, resume: bool = False, stop_after_steps: int | None = None, progress: bool = True) -> dict:
    from accelerate import Accelerator
    from tqdm import tqdm

    from .checkpoint import load_state, run_checkpoint_dir, save_state

    torch.manual_seed(cfg.seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    main_proc = accelerator.is_main_process
    out = Path(cfg.output_dir)
    ckpt = run_checkpoint_dir(out, resume)
    try:
        train_ex = read_preferences(cfg.data)
        val_ex = read_preferences(cfg.val_data) if cfg.val_data else []
    except Exception as e:
        raise ConfigError(str(e)) from e
    model, backbone = build(cfg)
    paths, idx, label, prompts = index_images(train_ex)
    weight = prompt_weights(prompts) if cfg.per_prompt_weighting else None

    # inputs of every image: head features (frozen backbone, computed once) or preprocessed pixels
    t0 = time.time()
    if cfg.mode == "head":
        with torch.no_grad():
            pixels = load_pixels(paths, backbone.preprocess)
            img = torch.cat([backbone.encode_image(pixels[i : i + 256]) for i in range(0, len(pixels), 256)])
        txt = backbone.encode_text(list(dict.fromkeys(prompts)))
        tpos = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
        ptxt = txt[torch.tensor([tpos[p] for p in prompts])]  # [E, D]
        embed_s = time.time() - t0
        model.head.train()
    else:
        pixels = load_pixels(paths, backbone.preprocess)
        embed_s = 0.0
        model.train()

    def rewards_of(rows: torch.Tensor) -> torch.Tensor:
        """Rewards ``[b,K]`` of the images of training examples ``rows``."""
        k = idx.shape[1]
        flat = idx[rows].flatten()
        if cfg.mode == "head":
            from .heads import head_features

            x = head_features(img[flat], ptxt[rows].repeat_interleave(k, 0), cfg.inputs)
            return net(x).view(len(rows), k)
        return net(pixels[flat], [prompts[int(r)] for r in rows for _ in range(k)]).view(len(rows), k)

    # the trained module goes through accelerate's wrapper (gradients all-reduced across processes)
    raw = model
    trainable = model.head if cfg.mode == "head" else model
    params = [p for p in trainable.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    net, opt = accelerator.prepare(trainable, opt)
    steps_per_epoch = math.ceil(len(train_ex) / cfg.batch_size)
    step, counters = 0, {"elapsed": 0.0, "pairs": 0, "train_s": 0.0}
    if resume:
        step, extra = load_state(ckpt, trainable, opt)
        counters = extra["counters"]
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    if main_proc:
        old = [x for x in metrics_path.read_text().splitlines() if x.strip()] if resume and metrics_path.is_file() else []
        metrics_path.write_text("".join(x + "\n" for x in old if json.loads(x)["step"] <= step))
        (out / "config.json").write_text(json.dumps(vars(cfg), indent=2))

    def checkpoint() -> None:
        if main_proc:
            counters["elapsed"] = time.time() - t_start
            save_state(ckpt, trainable, opt, step, {"counters": counters, "mode": cfg.mode})

    def log(rec: dict) -> None:
        if main_proc:
            with metrics_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")

    total = cfg.epochs * steps_per_epoch
    t_start = time.time() - counters["elapsed"]
    bar = tqdm(total=total, initial=step, desc=f"reward {cfg.mode}", disable=not (progress and main_proc), dynamic_ncols=True)
    stopped_by, losses = None, []
    try:
        with StopFlag("step") as flag:
            while step < total:
                epoch, within = divmod(step, steps_per_epoch)
                order = torch.randperm(len(train_ex), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
                rows = order[within * cfg.batch_size : (within + 1) * cfg.batch_size]
                rows = rows[accelerator.process_index :: accelerator.num_processes]
                t_step = time.time()
                with accelerator.autocast():
                    loss = preference_loss(rewards_of(rows), label[rows], None if weight is None else weight[rows])
                if not torch.isfinite(loss):
                    raise ValueError(f"step {step}: non-finite loss; stopping (the last checkpoint is kept; lower learning_rate)")
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss.item())
                counters["pairs"] += len(rows) * accelerator.num_processes
                counters["train_s"] += time.time() - t_step
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
                over = cfg.max_minutes is not None and time.time() - t_start > cfg.max_minutes * 60
                if step % steps_per_epoch == 0 or step == total:
                    rec = {"step": step, "epoch": step // steps_per_epoch, "loss": float(np.mean(losses)),
                           "pairs_per_s": counters["pairs"] / max(counters["train_s"], 1e-9)}
                    losses = []
                    if val_ex:
                        trainable.eval()
                        rec.update({f"val_{k}": v for k, v in evaluate_examples(raw, cfg, backbone, val_ex).items()})
                        trainable.train()
                    log(rec)
                if step % cfg.checkpoint_every == 0 or step % steps_per_epoch == 0 or over:
                    checkpoint()
                if stop_after_steps is not None and step >= stop_after_steps:
                    checkpoint()
                    stopped_by = "stop_after_steps"
                    break
                if over:
                    stopped_by = "time budget"
                    break
                if flag.requested:  # Ctrl-C: stop at this step boundary, saved
                    checkpoint()
                    stopped_by = "interrupt"
                    print(f"interrupted at step {step}; checkpoint saved in {ckpt} (--resume continues)", flush=True)
                    break
    finally:
        bar.close()
    result = {"step": step, "total_steps": total, "stopped_by": stopped_by, "embed_s": embed_s, **counters,
              "output_dir": str(out)}
    if step >= total and main_proc:
        trainable.eval()
        result["model"] = str(export(raw, cfg, backbone, rewards_of, len(train_ex)))
    return result


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
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (YAML value)")
    p.add_argument("--stop-after-steps", type=int, default=None, help="checkpoint and stop after this step (simulates a kill)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        cfg = RewardTrainConfig.from_cli(args.config, args.set)
        res = train(cfg, resume=args.resume, stop_after_steps=args.stop_after_steps, progress=not args.no_progress)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from e
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
