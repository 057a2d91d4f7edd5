"""Train the embedded ShapesWorld text-to-image model in three resumable stages.

    python -m diffusion_align.embedded.train_shapes_t2i vae     --work outputs/shapes_t2i
    python -m diffusion_align.embedded.train_shapes_t2i teacher --work outputs/shapes_t2i --out assets/shapesworld-t2i-teacher --fp16
    python -m diffusion_align.embedded.train_shapes_t2i distill --work outputs/shapes_t2i --out assets/shapesworld-t2i --fp16

1. ``vae``: an AutoencoderKL (64x64x3 <-> 16x16x4) on ShapesWorld renders.
2. ``teacher``: a text-conditioned latent diffusion model (v-prediction, 10% prompt dropout for
   classifier-free guidance), jointly training the CLIP text encoder; sampled with DDIM.
3. ``distill``: teacher DDIM trajectories (with guidance) are recorded once; the student (initialised
   from the teacher, same v-parametrisation) learns to map any point of a trajectory straight to its
   end, so it samples in one step without guidance, SD-Turbo style, and refines in 2-4 LCM steps.

Each stage checkpoints to ``--work/<stage>/`` (safetensors + JSON): ``--resume`` continues it,
``--overwrite`` starts it again. ``--device cuda`` trains on a GPU (same recipe).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mmreward.command import run_command, with_examples
from mmreward.errors import ModelLoadError
from mmreward.schedules import warmup_cosine
from mmreward.shapes.data import sample_batch
from mmreward.trainer import StepTrainer, add_run_args, start_run

from ..pipelines import encode_images
from .shapes_t2i import SCHEDULER_CONFIG, TEXT_MAX_LENGTH, build_components, save_pipeline

TEACHER_STEPS = 20


def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    ids = tokenizer(prompts, padding="max_length", max_length=TEXT_MAX_LENGTH, truncation=True, return_tensors="pt")
    return text_encoder(ids.input_ids.to(text_encoder.device))[0]


def _loop(args, stage: str, modules: torch.nn.ModuleDict, step_fn, lr: float, seed_offset: int) -> Path:
    """One stage's resumable training (:class:`mmreward.trainer.StepTrainer` in ``--work/<stage>``):
    ``step_fn(rng) -> (loss, logs)`` is called ``args.steps`` times, under a warm-up + cosine schedule."""
    work = Path(args.work) / stage
    work.mkdir(parents=True, exist_ok=True)
    params = [p for p in modules.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    rng = np.random.default_rng(args.seed + seed_offset)
    torch.manual_seed(args.seed + seed_offset)

    def step(i: int) -> dict:
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(i, args.steps, lr, warmup=100)
        loss, logs = step_fn(rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return {"step": i + 1, "loss": loss.item(), **logs}

    trainer = StepTrainer(work, args.steps, modules, opt, step, np_rng=rng, checkpoint_every=args.ckpt_every,
                          stop_after=args.stop_after, name=stage, resume=args.resume, overwrite=args.overwrite, config=vars(args))
    trainer.run()
    if trainer.position >= args.steps:
        timing = {"steps": trainer.position, "batch": args.batch, "wall_time_s": round(trainer.seconds, 1),
                  "threads": args.threads, "device": args.device}
        (work / "timing.json").write_text(json.dumps(timing))
    return work


def _training_record(args, stages: tuple[str, ...], teacher: Path | None = None) -> dict:
    """Steps and wall time of each finished stage (from ``--work/<stage>/timing.json``; the stages
    before distillation come from ``teacher/training.json`` when distilling from an exported teacher)."""
    out = {}
    earlier = json.loads((teacher / "training.json").read_text()) if teacher and (teacher / "training.json").is_file() else {}
    for stage in stages:
        f = Path(args.work) / stage / "timing.json"
        if f.is_file():
            out[stage] = json.loads(f.read_text())
        elif stage in earlier:
            out[stage] = earlier[stage]
    traj = Path(args.work) / "distill" / "trajectories.json"
    if "distill" in stages and traj.is_file():
        out["teacher_trajectories"] = json.loads(traj.read_text())
    out["total_wall_time_s"] = round(sum(v["wall_time_s"] for v in out.values() if isinstance(v, dict)), 1)
    return out


# ----------------------------------------------------------------------------------------------
def stage_vae(args) -> None:
    comps = build_components(seed=args.seed, tiny=args.tiny)
    vae = comps["vae"].to(args.device).train()

    def step_fn(rng):
        x, _ = sample_batch(rng, args.batch)
        x = x.to(args.device) * 2 - 1
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample()).sample
        rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        kl = post.kl().mean() / (4 * 16 * 16)
        return rec + args.kl_weight * kl, {"rec": rec.item(), "kl": kl.item()}

    work = _loop(args, "vae", torch.nn.ModuleDict({"vae": vae}), step_fn, args.lr or 1e-3, 0)
    if args.stop_after is None or args.stop_after >= args.steps:
        vae.eval()
        with torch.no_grad():
            x, _ = sample_batch(np.random.default_rng(999), 256)
            x = x.to(args.device)
            z = vae.encode(x * 2 - 1).latent_dist.mean
            err = (vae.decode(z).sample - (x * 2 - 1)).abs().mean().item() / 2
        vae.register_to_config(scaling_factor=float(1.0 / z.std()))
        vae.to("cpu").save_pretrained(work / "model", safe_serialization=True)
        (work / "summary.json").write_text(json.dumps({"l1_error_01": err, "scaling_factor": 1.0 / z.std().item()}))
        print(f"vae: mean abs reconstruction error {err:.4f} (images in [0,1]); scaling factor {1 / z.std():.3f}")


def _teacher_scheduler():
    from diffusers import DDIMScheduler

    cfg = {k: v for k, v in SCHEDULER_CONFIG.items() if k != "original_inference_steps"}
    return DDIMScheduler(**{**cfg, "prediction_type": "v_prediction"})


def stage_teacher(args) -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(Path(args.work) / "vae" / "model").to(args.device).eval().requires_grad_(False)
    comps = build_components(seed=args.seed + 1, tiny=args.tiny)
    unet, text_encoder, tokenizer = comps["unet"].to(args.device).train(), comps["text_encoder"].to(args.device).train(), comps["tokenizer"]
    sched = _teacher_scheduler()

    def step_fn(rng):
        x, metas = sample_batch(rng, args.batch)
        prompts = ["" if rng.random() < 0.1 else m["prompt"] for m in metas]
        lat = encode_images(vae, x)
        noise = torch.randn_like(lat)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(lat),)).to(args.device)
        noisy = sched.add_noise(lat, noise, t)
        pred = unet(noisy, t, encode_prompts(tokenizer, text_encoder, prompts)).sample
        return F.mse_loss(pred, sched.get_velocity(lat, noise, t)), {}

    modules = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder})
    work = _loop(args, "teacher", modules, step_fn, args.lr or 5e-4, 1)
    if args.stop_after is None or args.stop_after >= args.steps:
        teacher = {**comps, "vae": vae.cpu(), "unet": unet.eval().cpu(), "text_encoder": text_encoder.eval().cpu(),
                   "scheduler": sched}
        save_pipeline(teacher, work / "model")
        print(f"teacher pipeline saved to {work / 'model'}")
        if args.out:  # the multi-step (DDIM) model as a standalone asset
            save_pipeline(teacher, args.out, fp16=args.fp16)
            record = {"model": "teacher (v-prediction, DDIM)", **_training_record(args, ("vae", "teacher")), "args": vars(args)}
            (Path(args.out) / "training.json").write_text(json.dumps(record, indent=2))
            print(f"teacher pipeline exported to {args.out}")


@torch.no_grad()
def teacher_trajectories(pipe, prompts: list[str], generator: torch.Generator, guidance: float) -> torch.Tensor:
    """DDIM with guidance from pure noise; returns latents ``[B, TEACHER_STEPS + 1, 4, 16, 16]``
    (x_T, ..., x_0) on the teacher's timestep grid."""
    unet, sched = pipe.unet, pipe.scheduler
    sched.set_timesteps(TEACHER_STEPS)
    cond = encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts)
    uncond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""] * len(prompts))
    x = torch.randn((len(prompts), 4, 16, 16), generator=generator).to(unet.device)
    traj = [x.cpu()]
    for t in sched.timesteps:
        out = unet(torch.cat([x, x]), t, torch.cat([uncond, cond])).sample
        u, c = out.chunk(2)
        x = sched.step(u + guidance * (c - u), t, x).prev_sample
        traj.append(x.cpu())
    return torch.stack(traj, 1)


def stage_distill(args) -> None:
    from diffusers import DiffusionPipeline, LCMScheduler

    teacher_dir = Path(args.teacher) if args.teacher else Path(args.work) / "teacher" / "model"
    if not (teacher_dir / "model_index.json").is_file():
        raise ModelLoadError(f"no teacher pipeline at {teacher_dir}: run the teacher stage first or pass --teacher "
                                "assets/shapesworld-t2i-teacher")
    teacher = DiffusionPipeline.from_pretrained(teacher_dir, torch_dtype=torch.float32).to(args.device)
    teacher.unet.eval()
    work = Path(args.work) / "distill"
    work.mkdir(parents=True, exist_ok=True)
    data_file = work / "trajectories.safetensors"
    if not data_file.is_file():  # recorded once; resumable training reads it back
        from safetensors.torch import save_file

        gen = torch.Generator().manual_seed(args.seed + 2)
        rng = np.random.default_rng(args.seed + 2)
        t0 = time.time()
        chunks, prompts = [], []
        for _ in tqdm(range(args.trajectories // args.batch), desc="teacher trajectories"):
            _, metas = sample_batch(rng, args.batch)
            ps = [m["prompt"] for m in metas]
            chunks.append(teacher_trajectories(teacher, ps, gen, args.guidance).half())
            prompts += ps
        save_file({"latents": torch.cat(chunks).contiguous()}, str(data_file))
        (work / "trajectory_prompts.json").write_text(json.dumps(prompts))
        (work / "trajectories.json").write_text(json.dumps({
            "trajectories": len(prompts), "guidance": args.guidance, "wall_time_s": round(time.time() - t0, 1),
            "threads": args.threads, "device": args.device}))
    from safetensors.torch import load_file

    traj = load_file(str(data_file))["latents"].float()
    prompts = json.loads((work / "trajectory_prompts.json").read_text())
    teacher.scheduler.set_timesteps(TEACHER_STEPS)
    grid = torch.cat([teacher.scheduler.timesteps, torch.tensor([-1])])  # time of each recorded point
    unet = copy.deepcopy(teacher.unet).train()
    text_encoder = teacher.text_encoder.eval().requires_grad_(False)
    with torch.no_grad():
        cond = torch.cat([encode_prompts(teacher.tokenizer, text_encoder, prompts[i : i + 256])
                          for i in range(0, len(prompts), 256)])

    alphas = teacher.scheduler.alphas_cumprod.to(args.device)

    def step_fn(rng):
        idx = torch.from_numpy(rng.integers(len(traj), size=args.batch))
        # half the batch at t = T (the one-step case), the rest anywhere on the trajectory
        k = torch.from_numpy(rng.integers(TEACHER_STEPS, size=args.batch))
        k[: args.batch // 2] = 0
        x_t, x_0, t = traj[idx, k].to(args.device), traj[idx, -1].to(args.device), grid[k].to(args.device)
        # the student keeps the teacher's v-parametrisation; its clean-latent estimate
        # x0 = sqrt(a_t) x_t - sqrt(1 - a_t) v is matched to the end of the teacher's trajectory
        v = unet(x_t, t, cond[idx.to(args.device)]).sample
        a = alphas[t].view(-1, 1, 1, 1)
        return F.mse_loss(a.sqrt() * x_t - (1 - a).sqrt() * v, x_0), {}

    _loop(args, "distill", torch.nn.ModuleDict({"unet": unet}), step_fn, args.lr or 1e-4, 2)
    if args.stop_after is None or args.stop_after >= args.steps:
        sched = LCMScheduler(**{**SCHEDULER_CONFIG, "original_inference_steps": TEACHER_STEPS})
        comps = {"tokenizer": teacher.tokenizer, "text_encoder": text_encoder.cpu(), "vae": teacher.vae.cpu(),
                 "unet": unet.eval().cpu(), "scheduler": sched}
        save_pipeline(comps, args.out, fp16=args.fp16)
        record = {"model": "one-step student (v-prediction distilled to the teacher trajectory ends, LCM scheduler)",
                  **_training_record(args, ("vae", "teacher", "distill"), teacher_dir), "args": vars(args)}
        (Path(args.out) / "training.json").write_text(json.dumps(record, indent=2))
        print(f"one-step pipeline saved to {args.out}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["vae", "teacher", "distill"])
    p.add_argument("--work", default="outputs/shapes_t2i")
    p.add_argument("--out", default=None,
                   help="pipeline folder to export: the one-step model (distill; default assets/shapesworld-t2i) "
                        "or the multi-step teacher (teacher; default: none)")
    p.add_argument("--steps", type=int, default=None, help="default: vae 1000, teacher 4000, distill 1500")
    p.add_argument("--batch", type=int, default=None, help="default: vae 32, teacher 32, distill 64")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kl-weight", type=float, default=1e-4)
    p.add_argument("--teacher", default=None,
                   help="distill: teacher pipeline folder (default: --work/teacher/model, e.g. assets/shapesworld-t2i-teacher)")
    p.add_argument("--guidance", type=float, default=3.0, help="teacher guidance when recording trajectories")
    p.add_argument("--trajectories", type=int, default=4096)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--stop-after", type=int, default=None, help="checkpoint and exit after this step")
    p.add_argument("--fp16", action="store_true", help="save the final pipeline in fp16")
    p.add_argument("--tiny", action="store_true", help="tiny widths (tests)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda)")
    add_run_args(p)
    with_examples(p, "mmalign assets shapes-t2i vae", "mmalign assets shapes-t2i teacher --out outputs/t2i-teacher", "mmalign assets shapes-t2i distill --out outputs/t2i")
    args = p.parse_args(argv)
    args.steps = args.steps or {"vae": 1000, "teacher": 4000, "distill": 1500}[args.stage]
    args.batch = args.batch or {"vae": 32, "teacher": 32, "distill": 64}[args.stage]
    if args.stage == "distill" and args.out is None:
        args.out = "assets/shapesworld-t2i"
    start_run(args, seed=False)  # each stage seeds itself
    {"vae": stage_vae, "teacher": stage_teacher, "distill": stage_distill}[args.stage](args)


if __name__ == "__main__":
    sys.exit(run_command(main))
