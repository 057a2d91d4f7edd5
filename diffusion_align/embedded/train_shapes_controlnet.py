"""Train the embedded ShapesWorld ControlNets: the multi-step teacher conditioned on a dense condition.

    mmalign assets shapes-controlnet seg --out assets/shapesworld-controlnet-seg    # python -m diffusion_align.embedded.train_shapes_controlnet
    mmalign assets shapes-controlnet edges --out assets/shapesworld-controlnet-edges

* ``ControlNetModel.from_unet(teacher UNet)`` (its encoder copied, zero convolutions at the outputs), with a
  conditioning embedding that downsamples by the VAE's factor (4: 64×64 conditions onto 16×16 latents).
* Conditions from the world (:mod:`mmreward.shapes.conditions`): ``seg`` the palette image of the scene's
  segmentation (ADE20K style), ``edges`` its edge map (three equal channels); caption = the scene's prompt,
  10% dropped for classifier-free guidance. Scenes of every category, training compositions only.
* Only the ControlNet trains, on the teacher's v-prediction loss; the teacher UNet, VAE and text encoder stay
  frozen. The run checkpoints to ``--work`` (``--resume`` continues, ``--overwrite`` starts again); the export
  is a ``ControlNetModel`` folder that ``StableDiffusionControlNetPipeline.from_pretrained(teacher,
  controlnet=...)`` loads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmreward.clip_training import optimizer_step
from mmreward.command import run_command, with_examples
from mmreward.schedules import warmup_cosine
from mmreward.shapes.conditions import edge_map, palette_image, segmentation
from mmreward.shapes.data import sample_batch
from mmreward.trainer import StepTrainer, add_run_args, start_run

from ..pipelines import encode_images
from .shapes_t2i import load_teacher
from .train_shapes_t2i import encode_prompts

WARMUP = 100  #: warm-up steps of the learning rate
CONDITIONS = ("seg", "edges")


def condition_images(scenes, kind: str, size: int = 64) -> torch.Tensor:
    """``[B, 3, H, W]`` in [0, 1]: the ControlNet input of each scene (``seg``: palette image; ``edges``: the
    edge map in three channels)."""
    if kind == "seg":
        arr = np.stack([palette_image(segmentation(s, size)) for s in scenes]).astype(np.float32) / 255
        return torch.from_numpy(arr).permute(0, 3, 1, 2)
    if kind == "edges":
        return torch.from_numpy(np.stack([edge_map(s, size) for s in scenes]))[:, None].repeat(1, 3, 1, 1)
    raise ValueError(f"unknown condition {kind!r}; known: {CONDITIONS}")


def make_controlnet(unet, vae_scale_factor: int):
    """A ControlNet copied from ``unet`` whose conditioning embedding downsamples by ``vae_scale_factor``."""
    from diffusers import ControlNetModel

    channels = [16, 32, 64, 128][: int(np.log2(vae_scale_factor)) + 1]
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(channels))


def controlled_prediction(controlnet, unet, x_t: torch.Tensor, t: torch.Tensor, emb: torch.Tensor,
                          cond: torch.Tensor) -> torch.Tensor:
    """The UNet's output ``[B,C,h,w]`` on ``x_t`` with the ControlNet's residuals for conditions ``cond``
    ``[B,3,H,W]`` in [0, 1] (``emb``: text embeddings ``[B,L,D]``)."""
    down, mid = controlnet(x_t, t, encoder_hidden_states=emb, controlnet_cond=cond, return_dict=False)
    return unet(x_t, t, encoder_hidden_states=emb, down_block_additional_residuals=down,
                mid_block_additional_residual=mid).sample


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("condition", choices=CONDITIONS)
    p.add_argument("--teacher", default="assets/shapesworld-t2i-teacher", help="the multi-step image pipeline")
    p.add_argument("--work", default=None, help="checkpoints and logs (default outputs/shapes_controlnet_<condition>)")
    p.add_argument("--out", default=None, help="ControlNet folder to export (default assets/shapesworld-controlnet-<condition>)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--prompt-dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--stop-after", type=int, default=None, help="checkpoint and exit after this step (simulates a kill)")
    p.add_argument("--fp16", action="store_true", help="save the exported ControlNet in fp16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    add_run_args(p)
    with_examples(p, "mmalign assets shapes-controlnet seg --out outputs/shapesworld-controlnet-seg",
                  "mmalign assets shapes-controlnet edges --out outputs/shapesworld-controlnet-edges --resume")
    args = p.parse_args(argv)
    args.work = args.work or f"outputs/shapes_controlnet_{args.condition}"
    args.out = args.out or f"assets/shapesworld-controlnet-{args.condition}"
    start_run(args, seed=False)  # seeded after the teacher loads, as the shipped model was trained
    pipe = load_teacher(args.teacher)
    torch.manual_seed(args.seed)
    unet, vae, text_encoder, tokenizer, sched = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False).to(args.device)
    controlnet = make_controlnet(unet, pipe.vae_scale_factor).to(args.device).train()
    params = list(controlnet.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    rng = np.random.default_rng(args.seed)

    def step(i: int) -> dict:
        images, metas, scenes = sample_batch(rng, args.batch, return_scenes=True)
        cond = condition_images(scenes, args.condition).to(args.device)
        prompts = ["" if rng.random() < args.prompt_dropout else m["prompt"] for m in metas]
        latents = encode_images(vae, images)
        with torch.no_grad():
            emb = encode_prompts(tokenizer, text_encoder, prompts)
        noise = torch.from_numpy(rng.standard_normal(latents.shape).astype(np.float32)).to(args.device)
        t = torch.from_numpy(rng.integers(0, sched.config.num_train_timesteps, args.batch)).to(args.device)
        noisy = sched.add_noise(latents, noise, t)
        pred = controlled_prediction(controlnet, unet, noisy, t, emb, cond)
        loss = F.mse_loss(pred, sched.get_velocity(latents, noise, t))
        optimizer_step(opt, loss, params, warmup_cosine(i, args.steps, args.lr, warmup=WARMUP))
        return {"step": i + 1, "loss": loss.item()}

    trainer = StepTrainer(args.work, args.steps, controlnet, opt, step, np_rng=rng, checkpoint_every=args.ckpt_every,
                          stop_after=args.stop_after, name=f"shapes-controlnet {args.condition}", resume=args.resume,
                          overwrite=args.overwrite, config=vars(args))
    trainer.run()
    if trainer.position < args.steps:
        return {"steps": trainer.position, "stopped": True}
    record = {"model": f"ShapesWorld ControlNet ({args.condition}) on {args.teacher}", "steps": trainer.position,
              "wall_time_s": round(trainer.seconds, 1), "args": vars(args)}
    out = Path(args.out)
    controlnet.eval().to("cpu", torch.float16 if args.fp16 else torch.float32).save_pretrained(out, safe_serialization=True)
    (out / "training.json").write_text(json.dumps(record, indent=2))
    print(f"ControlNet saved to {out}")
    return record


if __name__ == "__main__":
    sys.exit(run_command(main))
