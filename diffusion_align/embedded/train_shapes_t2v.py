"""Train the embedded ShapesWorld text-to-video model: the multi-step ShapesWorld teacher lifted to video with
a ``MotionAdapter`` (AnimateDiff), trained on the ShapesWorld video world.

    mmalign assets shapes-t2v --out assets/shapesworld-t2v            # python -m diffusion_align.embedded.train_shapes_t2v

* ``UNetMotionModel.from_unet2d(teacher UNet, MotionAdapter)``; the motion modules' output projections start at
  zero, so the lifted model starts as the image model applied to each frame.
* Trained: the motion modules (all their weights) and LoRA on the spatial attention projections
  (self- and cross-attention: the motion modules have no text input, so a prompted direction is only
  learnable through text-conditioned weights). The VAE and the text encoder stay frozen.
* Data: ground-truth videos (``mmreward.shapes.video``, training compositions only), ``--motion-share`` of them
  one object with a motion phrase; 10% of prompts dropped for classifier-free guidance; the teacher's
  v-prediction loss on every frame's latent.
* The run checkpoints to ``--work`` (``--resume`` continues, ``--overwrite`` starts again). The export is an
  ``AnimateDiffPipeline`` folder (``--out``, the LoRA merged into the UNet) whose ``motion_adapter/`` is the
  adapter on its own, and ``--out/lora`` with the LoRA for ``load_lora_weights`` on the teacher + adapter.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmreward.command import run_command, with_examples
from mmreward.config_file import ConfigError
from mmreward.schedules import warmup_cosine
from mmreward.shapes.video import sample_video, sample_video_meta
from mmreward.trainer import StepTrainer, add_run_args, start_run

from .shapes_t2i import load_as_float32, load_teacher
from .train_shapes_t2i import encode_prompts

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def lift_to_video(unet2d, layers_per_block: int = 1, max_frames: int = 32):
    """``UNetMotionModel`` from a 2-D UNet with a fresh ``MotionAdapter`` whose output projections are zero
    (the lifted model equals the image model on each frame)."""
    from diffusers import MotionAdapter, UNetMotionModel

    groups = unet2d.config.norm_num_groups
    adapter = MotionAdapter(block_out_channels=tuple(unet2d.config.block_out_channels),
                            motion_layers_per_block=layers_per_block, motion_norm_num_groups=groups,
                            motion_max_seq_length=max_frames)
    unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    for name, module in unet.named_modules():
        if "motion_modules" in name and name.endswith("proj_out"):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)
    return unet


def spatial_attention_names(unet) -> list[str]:
    """The spatial (image) attention projections of a motion UNet: LoRA targets outside the motion modules."""
    return [n for n, _ in unet.named_modules() if n.endswith(LORA_TARGETS) and "motion_modules" not in n]


def encode_videos(vae, videos: np.ndarray) -> torch.Tensor:
    """Latents ``[B, C, F, h, w]`` (scaled) of uint8 videos ``[B, F, H, W, 3]``."""
    b, f = videos.shape[:2]
    x = torch.from_numpy(videos).float().div(127.5).sub(1).permute(0, 1, 4, 2, 3).reshape(b * f, 3, *videos.shape[2:4])
    with torch.no_grad():
        z = vae.encode(x.to(vae.device)).latent_dist.mean * vae.config.scaling_factor
    return z.view(b, f, *z.shape[1:]).permute(0, 2, 1, 3, 4)


def export(pipe, unet, out: Path, record: dict, fp16: bool = False) -> None:
    """The AnimateDiff pipeline folder (LoRA merged), its ``motion_adapter/`` and ``lora/``; ``fp16`` halves
    the size on disk (the folder still loads in float32 by default)."""
    from diffusers import AnimateDiffPipeline, MotionAdapter
    from peft.utils import get_peft_model_state_dict

    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if fp16 else torch.float32
    lora = {k: v.to(dtype) for k, v in get_peft_model_state_dict(unet).items()}
    AnimateDiffPipeline.save_lora_weights(out / "lora", unet_lora_layers=lora, safe_serialization=True)
    merged = copy.deepcopy(unet).to("cpu")
    merged.fuse_lora()
    merged.unload_lora()
    merged.to(dtype)
    merged.save_motion_modules(str(out / "motion_adapter"), safe_serialization=True)
    adapter = MotionAdapter.from_pretrained(out / "motion_adapter")
    video_pipe = AnimateDiffPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                     unet=merged, motion_adapter=adapter, scheduler=pipe.scheduler).to(dtype)
    video_pipe.save_pretrained(out, safe_serialization=True)
    if fp16:
        load_as_float32(out / "text_encoder" / "config.json")
    (out / "training.json").write_text(json.dumps(record, indent=2))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="assets/shapesworld-t2i-teacher", help="the multi-step image pipeline to lift")
    p.add_argument("--work", default="outputs/shapes_t2v", help="checkpoints and logs of the run")
    p.add_argument("--out", default="assets/shapesworld-t2v", help="AnimateDiff pipeline folder to export")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4, help="motion modules")
    p.add_argument("--lora-lr", type=float, default=1e-4)
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--motion-share", type=float, default=0.5, help="share of training videos with a motion phrase")
    p.add_argument("--prompt-dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--stop-after", type=int, default=None, help="checkpoint and exit after this step (simulates a kill)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--fp16", action="store_true", help="save the exported pipeline in fp16 (it loads in float32)")
    add_run_args(p)
    with_examples(p, "mmalign assets shapes-t2v --out outputs/shapesworld-t2v --steps 2000",
                  "mmalign assets shapes-t2v --out outputs/shapesworld-t2v --resume")
    args = p.parse_args(argv)
    if not 2 <= args.frames <= 32:
        raise ConfigError(f"--frames must be in 2..32, got {args.frames}")
    start_run(args, seed=False)  # seeded after the teacher loads, as the shipped model was trained
    from peft import LoraConfig

    pipe = load_teacher(args.teacher)
    torch.manual_seed(args.seed)
    unet = lift_to_video(pipe.unet, max_frames=max(32, args.frames)).to(args.device)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=args.lora_rank, lora_alpha=args.lora_rank, init_lora_weights="gaussian",
                                target_modules=spatial_attention_names(unet)))
    motion = [q for n, q in unet.named_parameters() if "motion_modules" in n]
    for q in motion:
        q.requires_grad_(True)
    lora = [q for n, q in unet.named_parameters() if "lora_" in n]
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    opt = torch.optim.AdamW([{"params": motion, "lr": args.lr}, {"params": lora, "lr": args.lora_lr}], weight_decay=1e-2)
    vae, text_encoder, tokenizer, sched = pipe.vae.to(args.device), pipe.text_encoder.to(args.device), pipe.tokenizer, pipe.scheduler
    rng = np.random.default_rng(args.seed)
    base_lrs = [g["lr"] for g in opt.param_groups]

    def step(i: int) -> dict:
        for g, lr in zip(opt.param_groups, base_lrs, strict=True):
            g["lr"] = warmup_cosine(i, args.steps, lr, warmup=100)
        metas = [sample_video_meta(rng, "train", args.motion_share) for _ in range(args.batch)]
        videos = np.stack([sample_video(m, rng, args.frames, allow_held_out=False) for m in metas])
        latents = encode_videos(vae, videos)
        prompts = ["" if rng.random() < args.prompt_dropout else m["prompt"] for m in metas]
        with torch.no_grad():  # the text encoder is frozen
            emb = encode_prompts(tokenizer, text_encoder, prompts).repeat_interleave(args.frames, 0)  # [B*F, L, D]
        noise = torch.from_numpy(rng.standard_normal(latents.shape).astype(np.float32)).to(latents.device)
        t = torch.from_numpy(rng.integers(0, sched.config.num_train_timesteps, args.batch)).to(latents.device)
        noisy = sched.add_noise(latents, noise, t)
        target = sched.get_velocity(latents, noise, t)
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=emb).sample, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(motion + lora, 1.0)
        opt.step()
        return {"step": i + 1, "loss": loss.item(), "motion_share": float(np.mean(["motion" in m for m in metas]))}

    trainer = StepTrainer(args.work, args.steps, unet, opt, step, np_rng=rng, checkpoint_every=args.ckpt_every,
                          stop_after=args.stop_after, name="shapes-t2v", resume=args.resume, overwrite=args.overwrite,
                          config=vars(args))
    trainer.run()
    if trainer.position < args.steps:
        return {"steps": trainer.position, "stopped": True}
    record = {"model": "ShapesWorld teacher lifted to video (AnimateDiff motion modules + spatial-attention LoRA)",
              "steps": trainer.position, "wall_time_s": round(trainer.seconds, 1), "teacher": args.teacher,
              "args": vars(args)}
    export(pipe, unet.eval(), Path(args.out), record, fp16=args.fp16)
    print(f"text-to-video pipeline saved to {args.out}")
    return record


if __name__ == "__main__":
    sys.exit(run_command(main))
