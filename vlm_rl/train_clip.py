"""Train the embedded reward model of the RL scenes: a small open_clip CLIP trained on renders of the
humanoid, CartPole and MountainCar captioned from their state (:mod:`vlm_rl.scene_data`). It is *trained on
these scenes*, not zero-shot like the reference's ViT-bigG-14; it stands in for it where the hub cannot be
reached.

    python -m vlm_rl.train_clip --out assets/vlm-rl-clip

The loss is a sigmoid (multi-label) one over the whole caption set: a frame has several true captions
(the baseline prompt, e.g. "a humanoid robot", is true of every humanoid frame), so a softmax over
captions, which makes them compete, does not fit. Frames are stored squashed to the model's input size,
as the reward's preprocessing squashes them (VLM-RM), and the exported folder says ``resize_mode:
squash``. Seeded and resumable: the datasets are written once to ``--work``, the training state is
checkpointed there every ``--ckpt-every`` steps, and the same command continues a killed run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmreward.backbones import save_open_clip
from mmreward.clip_training import add_training_args, model_config, optimizer_step, round_to_fp16
from mmreward.command import run_command, with_examples
from mmreward.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from mmreward.schedules import warmup_cosine
from mmreward.trainer import StepTrainer, start_run

from .scene_data import load_dataset, render_dataset, save_dataset
from .tasks import TASKS

CLIP_CFG = {
    "embed_dim": 128,
    # SigLIP's initial temperature and bias; the bias is part of the exported model
    "init_logit_scale": float(np.log(10)),
    "init_logit_bias": -10.0,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "patch_size": 8, "head_width": 32, "pos_embed_type": "sin_cos_2d"},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
}
#: frames rendered per environment, and the share of each batch drawn from it
ENV_FRAMES = {"humanoid": 16000, "cartpole": 6000, "mountaincar": 4000}
ENV_WEIGHTS = {"humanoid": 0.55, "cartpole": 0.3, "mountaincar": 0.15}
HELD_OUT = 0.1  # the last 10% of each environment's frames are held out for evaluation


def load_or_render(work: Path, env: str, n: int, size: int, seed: int) -> tuple[torch.Tensor, list[list[str]]]:
    """Frames ``[n,S,S,3]`` uint8 (rendered at 224x224 as the configs do, squashed to ``S = size``) and
    their captions, rendered once into ``work/data/<env>`` and read from there afterwards."""
    folder = work / "data" / env
    if (folder / "captions.json").is_file():
        frames, caps = load_dataset(folder)
        if len(caps) == n and frames.shape[1] == size:
            return frames, caps
    frames, caps = render_dataset(env, n, (224, 224), seed=seed, store_size=size)
    save_dataset(folder, frames, caps)
    return frames, caps


def truth(captions: list[list[str]], vocab: list[str]) -> torch.Tensor:
    """``[N, V]`` float: caption ``v`` is true of frame ``n``."""
    index = {c: i for i, c in enumerate(vocab)}
    out = torch.zeros(len(captions), len(vocab))
    for n, caps in enumerate(captions):
        out[n, [index[c] for c in caps]] = 1.0
    return out


def to_pixels(frames: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B,S,S,3]`` to normalised model inputs ``[B,3,S,S]``."""
    return (frames.permute(0, 3, 1, 2).float() / 255 - mean) / std


def shift(x: torch.Tensor, g: torch.Generator, max_px: int = 2) -> torch.Tensor:
    """Random translations of up to ``max_px`` pixels (replicate padding): ``[B,3,S,S]``."""
    b, _, h, w = x.shape
    pad = F.pad(x, (max_px,) * 4, mode="replicate")
    dy, dx = (torch.randint(0, 2 * max_px + 1, (2, b), generator=g)).tolist()
    return torch.stack([pad[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


@torch.no_grad()
def evaluate(model, pixels: torch.Tensor, labels: torch.Tensor, vocab: list[str], env_of: list[str],
             caption_env: dict[str, str], context_length: int) -> dict:
    """On held-out frames: per caption the ROC AUC of its similarity against its truth (within the frames of
    its own environment), and per task the Pearson correlation of the VLM-RM reward (alpha 0: the cosine to
    the goal prompt) with the task's success predicate, which the goal caption records."""
    import open_clip

    model.eval()
    img = torch.cat([F.normalize(model.encode_image(pixels[k : k + 512]), dim=-1) for k in range(0, len(pixels), 512)])
    txt = F.normalize(model.encode_text(open_clip.tokenize(vocab, context_length=context_length)), dim=-1)
    sim = img @ txt.T
    envs = np.array(env_of)
    out: dict = {"auc": {}, "task_reward_success_pearson": {}}
    for j, cap in enumerate(vocab):
        rows = torch.from_numpy(envs == caption_env[cap])
        y, s = labels[rows, j], sim[rows, j]
        if 0 < y.sum() < len(y):
            out["auc"][cap] = auc(s, y)
    for name, task in TASKS.items():
        if task.goal not in vocab:
            continue
        rows = torch.from_numpy(envs == task.env)
        y, s = labels[rows, vocab.index(task.goal)], sim[rows, vocab.index(task.goal)]
        if 0 < y.sum() < len(y):
            out["task_reward_success_pearson"][name] = float(np.corrcoef(s.numpy(), y.numpy())[0, 1])
    out["mean_auc"] = float(np.mean(list(out["auc"].values())))
    return out


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC: the probability that a positive scores above a negative (ties count half)."""
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    greater = (pos[:, None] > neg[None, :]).float().mean()
    ties = (pos[:, None] == neg[None, :]).float().mean()
    return float(greater + 0.5 * ties)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # the asset: --batch 128 --steps 2000 --eval-every 250 (32 min on 2 cores)
    add_training_args(p, out="assets/vlm-rl-clip", work="outputs/train_vlm_rl_clip", steps=2000, batch=128, warmup=100)
    p.add_argument("--frames-scale", type=float, default=1.0, help="scale the frames rendered per environment")
    with_examples(p, "mmalign assets rl-clip --out outputs/vlm-rl-clip")
    args = p.parse_args(argv)
    start_run(args)
    import open_clip

    cfg = model_config(CLIP_CFG, args.tiny, image_size=32)
    size = cfg["vision_cfg"]["image_size"]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    # data: every environment's frames, captions and the shared caption vocabulary
    train_idx, held_idx, frames, captions, env_of = {}, [], [], [], []
    offset = 0
    for k, (env, n) in enumerate(ENV_FRAMES.items()):
        n = max(20, int(n * args.frames_scale))
        f, c = load_or_render(work, env, n, size, args.seed + k)
        cut = int(n * (1 - HELD_OUT))
        train_idx[env] = torch.arange(offset, offset + cut)
        held_idx += range(offset + cut, offset + n)
        frames.append(f)
        captions += c
        env_of += [env] * n
        offset += n
    frames = torch.cat(frames)
    vocab = sorted({c for caps in captions for c in caps})
    labels = truth(captions, vocab)
    cap_env = {c: e for caps, e in zip(captions, env_of) for c in caps}  # the scenes share no caption

    model = open_clip.CLIP(**cfg)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)  # the exported folder's preprocess_cfg
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    ctx = cfg["text_cfg"]["context_length"]
    tokens = open_clip.tokenize(vocab, context_length=ctx)
    held = torch.tensor(held_idx)
    held_pixels = to_pixels(frames[held], mean, std)
    held_env = [env_of[i] for i in held_idx]
    envs, weights = list(ENV_WEIGHTS), np.array(list(ENV_WEIGHTS.values()))

    def step(i: int) -> dict:
        model.train()
        counts = rng.multinomial(args.batch, weights / weights.sum())
        idx = torch.cat([train_idx[e][torch.from_numpy(rng.integers(len(train_idx[e]), size=m))] for e, m in zip(envs, counts)])
        pixels = shift(to_pixels(frames[idx], mean, std), gen)
        img = F.normalize(model.encode_image(pixels), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T + model.logit_bias  # [B, V]
        loss = F.binary_cross_entropy_with_logits(logits, labels[idx])
        optimizer_step(opt, loss, model.parameters(), warmup_cosine(i, args.steps, args.lr, args.warmup))
        rec = {"step": i + 1, "loss": loss.item()}
        if (i + 1) % args.eval_every == 0 or i + 1 == args.steps:
            rec["eval"] = evaluate(model, held_pixels, labels[held], vocab, held_env, cap_env, ctx)
            trainer.logger.info(f"step {i + 1}: mean AUC {rec['eval']['mean_auc']:.3f}, reward~success "
                                f"{json.dumps({k: round(v, 3) for k, v in rec['eval']['task_reward_success_pearson'].items()})}")
        return rec

    trainer = StepTrainer(
        work, args.steps, model, opt, step, np_rng=rng, checkpoint_every=args.ckpt_every, stop_after=args.stop_after, resume=args.resume, overwrite=args.overwrite, config=vars(args),
        name="vlm-rl-clip", extra_state=lambda: {"gen_state": gen.get_state().tolist(), "vocab": vocab},
        load_extra=lambda extra: gen.set_state(torch.tensor(extra["gen_state"], dtype=torch.uint8)))
    trainer.run()
    if trainer.position < args.steps:
        return {"steps": trainer.position, "stopped": True}
    round_to_fp16(model)
    final = evaluate(model, held_pixels, labels[held], vocab, held_env, cap_env, ctx)
    save_open_clip(model.half(), cfg, args.out, {"resize_mode": "squash", "interpolation": "bicubic"})
    summary = {"steps": trainer.position, "wall_time_s": trainer.seconds, "held_out": final, "vocab": vocab,
               "frames": {e: int(max(20, n * args.frames_scale)) for e, n in ENV_FRAMES.items()},
               "config": cfg, "args": vars(args)}
    (Path(args.out) / "training.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(final, indent=2))
    return summary


if __name__ == "__main__":
    sys.exit(run_command(main))
