"""Fine-tune a diffusion model's LoRA adapters with D3PO or DDPO, one config file per run (``method: drakes``
runs :mod:`diffusion_align.drakes` on a discrete DNA diffusion model instead).

    accelerate launch diffusion_align/train.py --config configs/d3po_shapes.yaml
    python diffusion_align/train.py --config configs/d3po_shapes.yaml [--resume] [--set key=value ...]

Every epoch: (1) each process samples ``num_batches_per_epoch × sample_batch_size`` prompts
(``samples_per_prompt`` DDIM trajectories each, sharing ``x_T``) with per-step log-probabilities;
(2) the feedback source scores the images (D3PO turns scores into pair preferences, DDPO into
per-prompt-normalised advantages); (3) the LoRA weights are updated, the loss accumulated over the
denoising steps of each minibatch and the gradients averaged across processes (the forward pass goes
through the accelerate-wrapped UNet, so LoRA gradients are all-reduced: ddpo-pytorch issue #10).

Outputs in ``output_dir``: ``metrics.jsonl`` (one line per epoch and per update), ``grids/epoch_NNNN.png``,
``checkpoint/`` (``pytorch_lora_weights.safetensors`` loadable with ``pipe.load_lora_weights`` plus
optimizer state as safetensors; written every ``checkpoint_every`` epochs, at the end, when the time
budget runs out and on Ctrl-C, which finishes the current epoch first) and ``lora/`` (the final adapters).
``--resume`` continues from ``checkpoint/`` and gives the weights of an uninterrupted run.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: its folder must not shadow top-level modules (config, losses...)
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import math
import time
from contextlib import nullcontext

import numpy as np
import torch

from diffusion_align import lora
from diffusion_align.config import ConfigError, TrainConfig
from diffusion_align.lora import LoraState, adapters_disabled, save_lora
from diffusion_align.losses import PerPromptStatTracker, d3po_loss, ddpo_loss, pair_preferences
from diffusion_align.pipelines import make_adapter
from diffusion_align.rollout import Rollout, ddim_scheduler, transition_log_prob
from diffusion_align.sampling import group_pairs, load_pipeline, read_prompts, sample_epoch, seeds_for
from mmreward.stop import StopFlag


# ------------------------------------------------------------------------------------------ setup
def add_lora(model: torch.nn.Module, cfg: TrainConfig) -> list[torch.nn.Parameter]:
    """LoRA adapters of the config's rank, alpha and targets on ``model``; the trainable parameters."""
    try:
        return lora.add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    except ValueError as e:
        raise ConfigError(str(e)) from e


# --------------------------------------------------------------------------------------- training
def train_steps(cfg: TrainConfig, T: int, rng: torch.Generator, n: int) -> torch.Tensor:
    """``[n, T_train]`` step indices (0 = the first, noisiest step): a random order of the trainable steps
    per pair/sample (all ``T``, or the first ``train_first_steps``), of which the first
    ``int(pool * timestep_fraction)`` (at least 1) are trained, as in the references."""
    pool = T if cfg.train_first_steps is None else min(T, cfg.train_first_steps)
    t_train = max(1, int(pool * cfg.timestep_fraction))
    return torch.stack([torch.randperm(pool, generator=rng)[:t_train] for _ in range(n)])


def pair_components(pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images [U], pos [P,2], comp [U])``: the distinct images of pairs ``[P,2]``, each pair as positions
    into ``images``, and each image's connected component of the pair graph (images of one group: one
    prompt and ``x_T``). Images are scored once per step however many pairs they are in, and a component
    shares its step order, so both images of every pair are trained at the same step."""
    images, inverse = torch.unique(pairs.reshape(-1), return_inverse=True)
    parent = list(range(len(images)))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in inverse.view(-1, 2).tolist():
        parent[root(a)] = root(b)
    roots = torch.tensor([root(a) for a in range(len(images))])
    return images, inverse.view(-1, 2), torch.unique(roots, return_inverse=True)[1]


def d3po_update(cfg, accelerator, sched, unet, opt, params, rollout: Rollout, pairs: torch.Tensor,
                pref: torch.Tensor, rng: torch.Generator, scale: float = 1.0) -> dict:
    """One optimiser step on a minibatch of pairs ``[P,2]`` (indices into ``rollout``) with preferences ``[P,2]``.

    Each distinct image is run through the UNet once per trained step, however many pairs it is in (a
    group of k images gives C(k,2) pairs for the price of k trajectories). ``scale`` multiplies this
    process's mean loss (so that, averaged over processes, every pair of the step weighs the same). With
    ``reference: base`` the reference log-probabilities (adapters off) are computed here, only for the images
    trained on, unless the rollout already carries them; ``reference: sampler`` takes the sampling-time ones."""
    module = accelerator.unwrap_model(unet)  # the same weights, without the DDP wrapper
    T = rollout.latents.shape[1] - 1
    images, pos, comp = pair_components(pairs)
    steps = train_steps(cfg, T, rng, int(comp.max()) + 1)[comp]  # [U, T_train]: one order per component
    sub = rollout.select(images)
    pref = pref.to(sub.latents.device)
    losses, kls = [], []
    for jj in range(steps.shape[1]):
        j = steps[:, jj].to(sub.latents.device)  # [U]
        if cfg.reference == "sampler":  # π_ref refreshed every round: the policy that drew the samples
            ref_lp = sub.log_probs[torch.arange(len(sub), device=j.device), j]
        elif sub.ref_log_probs is not None:
            ref_lp = sub.ref_log_probs[torch.arange(len(sub), device=j.device), j]
        else:
            with torch.no_grad(), accelerator.autocast(), adapters_disabled(module):
                ref_lp = transition_log_prob(sched, module, sub, j, cfg.guidance_scale, cfg.sample_eta)
        last = jj == steps.shape[1] - 1
        with accelerator.autocast(), (nullcontext() if last else accelerator.no_sync(unet)):
            lp = transition_log_prob(sched, unet, sub, j, cfg.guidance_scale, cfg.sample_eta)
            loss = d3po_loss(lp[pos], ref_lp[pos], pref, cfg.beta, cfg.eps)
            # k2 estimate of KL(π_θ‖π_ref) on the transitions trained (its gradient is KL's score-function gradient)
            kl = 0.5 * ((lp - ref_lp.to(lp.device)) ** 2).mean()
        accelerator.backward((loss + cfg.kl_coef * kl) * scale / steps.shape[1])
        losses.append(loss.item())
        kls.append(kl.item())
    return {"loss": float(np.mean(losses)), "kl": float(np.mean(kls)), "images": len(images),
            **optimizer_step(accelerator, opt, params, cfg.max_grad_norm)}


def optimizer_step(accelerator, opt, params, max_norm: float) -> dict:
    """Clip the (all-reduced) gradients and step; a non-finite gradient norm skips the step instead of
    writing NaN into the weights (every process sees the same norm, so all skip together).
    Returns ``{"grad_norm", "skipped"}`` for the metrics."""
    norm = float(accelerator.clip_grad_norm_(params, max_norm))
    if math.isfinite(norm):
        opt.step()
    opt.zero_grad(set_to_none=True)
    return {"grad_norm": norm, "skipped": float(not math.isfinite(norm))}


def ddpo_update(cfg, accelerator, sched, unet, opt, params, rollout: Rollout, adv: torch.Tensor,
                rng: torch.Generator) -> dict:
    """One optimiser step on a minibatch of samples with advantages ``[B]`` (PPO-clip per denoising step,
    the loss averaged over the trained steps: the references' accumulation over timesteps)."""
    T = rollout.latents.shape[1] - 1
    steps = train_steps(cfg, T, rng, len(rollout))
    b = torch.arange(len(rollout))
    losses, kls, clips = [], [], []
    for jj in range(steps.shape[1]):
        j = steps[:, jj]
        last = jj == steps.shape[1] - 1
        with accelerator.autocast(), (nullcontext() if last else accelerator.no_sync(unet)):
            lp = transition_log_prob(sched, unet, rollout, j.to(rollout.latents.device), cfg.guidance_scale, cfg.sample_eta)
            old = rollout.log_probs[b, j].to(lp.device)
            loss, stats = ddpo_loss(lp, old, adv.to(lp.device), cfg.clip_range, cfg.adv_clip_max)
        accelerator.backward(loss / steps.shape[1])
        losses.append(loss.item())
        kls.append(stats["approx_kl"].item())
        clips.append(stats["clipfrac"].item())
    return {"loss": float(np.mean(losses)), "approx_kl": float(np.mean(kls)), "clipfrac": float(np.mean(clips)),
            **optimizer_step(accelerator, opt, params, cfg.max_grad_norm)}


def pair_minibatches(pairs: torch.Tensor, size: int, g: torch.Generator) -> list[torch.Tensor]:
    """Pair indices per optimiser step: the groups of the pair graph (:func:`pair_components`: one prompt
    and ``x_T`` each, however many images it had) in random order, each group's pairs kept in one
    minibatch (so its images are run once), a minibatch closed once it holds ``size`` pairs."""
    if len(pairs) == 0:
        return []
    _, pos, comp = pair_components(pairs)
    group = comp[pos[:, 0]]
    batches, current = [], []
    for gid in torch.randperm(int(group.max()) + 1, generator=g).tolist():
        current += torch.nonzero(group == gid).flatten().tolist()
        if len(current) >= size:
            batches.append(torch.tensor(current))
            current = []
    if current:
        batches.append(torch.tensor(current))
    return batches


def train_d3po_epoch(cfg, accelerator, sched, unet, opt, params, rollout, pairs, pref, g) -> tuple[list[dict], int]:
    """All optimiser steps of one epoch on this process's untied pairs. Every process takes the same
    number of steps (DDP's collectives must match); a process out of pairs contributes zero, and each
    process's loss is scaled by ``N · local / global`` pairs of the step so every pair weighs the same."""
    N, rank = accelerator.num_processes, accelerator.process_index
    n = accelerator.gather(torch.tensor([len(pairs)], device=accelerator.device)).cpu().tolist()
    updates = []
    for _ in range(cfg.num_inner_epochs):
        batches = pair_minibatches(pairs, cfg.train_batch_size, g)
        n_steps = int(accelerator.gather(torch.tensor([len(batches)], device=accelerator.device)).max())
        mine = torch.zeros(n_steps, dtype=torch.long)
        mine[: len(batches)] = torch.tensor([len(b) for b in batches], dtype=torch.long)
        counts = accelerator.gather(mine[None].to(accelerator.device)).cpu()  # [N, n_steps]
        for s in range(n_steps):
            if s < len(batches):
                mb_pairs, mb_pref = pairs[batches[s]], pref[batches[s]]
            else:  # a dummy pair with zero preference: constant loss, zero gradient, collectives in step
                mb_pairs, mb_pref = group_pairs(1, 2), torch.zeros(1, 2)
            scale = N * counts[rank, s].item() / counts[:, s].sum().item()
            updates.append(d3po_update(cfg, accelerator, sched, unet, opt, params, rollout, mb_pairs, mb_pref, g, scale))
    return updates, sum(n)


def weight_checksum(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """``[2]`` float64 (sum, sum of squares) of the trainable weights: equal on every process iff in sync."""
    flat = torch.cat([p.detach().double().flatten() for p in params])
    return torch.stack([flat.sum(), (flat * flat).sum()])


# ----------------------------------------------------------------------------------------- the run
def train(cfg: TrainConfig, resume: bool = False, stop_after_epochs: int | None = None, progress: bool = True) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from tqdm import tqdm

    from diffusion_align.feedback import make_scorer
    from mmreward.checkpoint import load_state, run_checkpoint_dir, save_state
    from mmreward.images import image_grid, to_pil

    if cfg.mixed_precision != "no" and not torch.cuda.is_available():
        raise ConfigError(f"mixed_precision: {cfg.mixed_precision} needs a GPU; use 'no' on the CPU")
    # no GPU: processes talk over gloo (launched by torchrun, e.g. `accelerate launch --multi_gpu`)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    main_proc, rank = accelerator.is_main_process, accelerator.process_index
    out = Path(cfg.output_dir)
    ckpt = run_checkpoint_dir(out, resume)
    offline = None
    if cfg.feedback == "labels":
        from diffusion_align.label import load_labelled

        offline = load_labelled(cfg.labels_dir, accelerator.device, cfg)
    prompts = read_prompts(cfg.prompts) if offline is None else []

    torch.manual_seed(cfg.seed)  # identical LoRA init on every process
    pipe = make_adapter(load_pipeline(cfg.pretrained, accelerator.device))
    try:
        sched = ddim_scheduler(pipe, cfg.sample_steps)
    except ValueError as e:
        raise ConfigError(f"pretrained {cfg.pretrained!r}: {e}") from e
    params = add_lora(pipe.denoiser, cfg)
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                            weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    unet, opt = accelerator.prepare(pipe.denoiser, opt)  # train through `unet` (wrapped): gradients are all-reduced
    module = accelerator.unwrap_model(unet)
    raw_opt = getattr(opt, "optimizer", opt)
    scorer = make_scorer(cfg.feedback, accelerator.device) if offline is None else None
    tracker = PerPromptStatTracker(cfg.stat_buffer_size, cfg.stat_min_count)
    lora_state = LoraState(module)

    epoch, counters = 0, {"samples": 0, "pairs": 0, "updates": 0, "elapsed": 0.0}
    if resume:
        epoch, extra = load_state(ckpt, lora_state, raw_opt)
        if extra.get("method") != cfg.method:
            raise ConfigError(f"--resume: {ckpt} is a {extra.get('method')} run, the config says {cfg.method}")
        counters = extra["counters"]
        tracker.load_state_dict(extra.get("tracker", {}))
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    if main_proc:
        (out / "config.json").write_text(json.dumps(vars(cfg), indent=2))
        # rows of epochs after the checkpoint (a killed run) are redone: drop them
        old = [x for x in metrics_path.read_text().splitlines() if x.strip()] if resume and metrics_path.is_file() else []
        metrics_path.write_text("".join(x + "\n" for x in old if json.loads(x)["epoch"] < epoch))
        if resume:
            print(f"resumed from {ckpt} at epoch {epoch}")
    metrics = metrics_path.open("a") if main_proc else None
    tb = None
    if main_proc:
        try:  # TensorBoard when installed
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            pass
    t_start = time.time() - counters["elapsed"]

    def checkpoint(next_epoch: int) -> None:
        accelerator.wait_for_everyone()
        if main_proc:
            counters["elapsed"] = time.time() - t_start
            save_state(ckpt, lora_state, raw_opt, next_epoch,
                       {"counters": counters, "tracker": tracker.state_dict(), "method": cfg.method})
            save_lora(pipe, ckpt)

    def log(rec: dict) -> None:
        if main_proc:
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()
            if tb is not None:
                for k, v in rec.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        tb.add_scalar(f"{cfg.method}/{k}", v, rec["epoch"])

    saved, stopped_by = epoch, None
    # a time budget usually ends the run before num_epochs: then the bar just counts epochs
    bar = tqdm(total=None if cfg.max_minutes else cfg.num_epochs, initial=epoch, desc=cfg.method, disable=not (progress and main_proc), dynamic_ncols=True)
    try:
        with StopFlag("epoch") as flag:
            while epoch < cfg.num_epochs:
                # every process must agree to stop (Ctrl-C or time budget), at an epoch boundary
                over = cfg.max_minutes is not None and time.time() - t_start > cfg.max_minutes * 60
                votes = accelerator.gather(torch.tensor([[flag.requested, over]], device=accelerator.device)).cpu()
                if votes.any():
                    stopped_by = "interrupt" if votes[:, 0].any() else "time budget"
                    break
                rec = {"epoch": epoch}
                t0 = time.time()
                if offline is not None:  # human labels: the labelled pairs every epoch, split over processes
                    rollout = offline[0]
                    pairs, pref = offline[1][rank :: accelerator.num_processes], offline[2][rank :: accelerator.num_processes]
                    all_scores = torch.zeros(0)
                else:
                    # 1. sample (no gradients; the adapters as they are now = the "old" policy)
                    unet.eval()
                    rollout = sample_epoch(cfg, pipe, module, prompts, epoch, rank)
                    rec["sample_s"] = time.time() - t0
                    rec["samples_per_s"] = len(rollout) / rec["sample_s"]
                    if not torch.isfinite(rollout.latents).all():
                        raise ValueError(f"epoch {epoch}: the policy sampled NaN/inf latents; stopping (the checkpoint "
                                         f"of epoch {saved} is kept; lower learning_rate or max_grad_norm)")
                    # 2. feedback
                    scores = scorer(rollout.images, rollout.prompts)
                    all_scores = accelerator.gather(scores.to(accelerator.device)).cpu()
                    if not torch.isfinite(all_scores).all():
                        raise ValueError(f"feedback {cfg.feedback!r} returned NaN/inf scores at epoch {epoch}; "
                                         f"stopping (the checkpoint of epoch {saved} is kept)")
                    rec["score_mean"] = all_scores.mean().item()
                    rec["score_std"] = all_scores.std().item() if len(all_scores) > 1 else 0.0
                    if cfg.check_weight_sync:
                        rec["sample_ids"] = gather_object([(rank, int(s)) for s in rollout.seeds])
                    if cfg.method == "d3po":
                        pairs = group_pairs(len(rollout) // cfg.samples_per_prompt, cfg.samples_per_prompt)
                        pref = pair_preferences(scores, pairs)
                        keep = pref[:, 0] != 0  # ties carry no gradient: skip them
                        rec["tie_rate"] = 1 - keep.float().mean().item()  # this process's share
                        pairs, pref = pairs[keep], pref[keep]
                # 3. train
                t1 = time.time()
                g = torch.Generator().manual_seed(int(seeds_for(cfg, epoch, 10**6, rank).integers(2**31)))
                unet.train()
                if cfg.method == "d3po":
                    updates, rec["pairs"] = train_d3po_epoch(cfg, accelerator, sched, unet, opt, params, rollout, pairs, pref, g)
                    counters["pairs"] += rec["pairs"]
                else:
                    all_prompts = gather_object(rollout.prompts)
                    s = all_scores.numpy()
                    adv_all = tracker.update(all_prompts, s) if cfg.per_prompt_stat_tracking else (s - s.mean()) / (s.std() + 1e-8)
                    adv = torch.tensor(adv_all[rank * len(rollout) : (rank + 1) * len(rollout)], dtype=torch.float32)
                    updates = []
                    for _ in range(cfg.num_inner_epochs):
                        order = torch.randperm(len(rollout), generator=g)
                        for k in range(0, len(rollout), cfg.train_batch_size):
                            idx = order[k : k + cfg.train_batch_size]
                            updates.append(ddpo_update(cfg, accelerator, sched, unet, opt, params, rollout.select(idx), adv[idx], g))
                counters["samples"] += len(all_scores)
                counters["updates"] += len(updates)
                rec["train_s"] = time.time() - t1
                for k in updates[0] if updates else {}:  # means (of the finite values); skipped steps counted
                    vals = [u[k] for u in updates if math.isfinite(u[k])]
                    rec[k] = float(np.sum(vals) if k == "skipped" else np.mean(vals) if vals else float("nan"))
                rec.update({"updates": len(updates), "samples": counters["samples"], "total_pairs": counters["pairs"],
                            "elapsed_s": time.time() - t_start})
                if cfg.method == "d3po":
                    rec["pairs_per_s"] = rec["pairs"] * cfg.num_inner_epochs / max(rec["train_s"], 1e-9)
                if cfg.check_weight_sync:
                    sums = accelerator.gather(weight_checksum(params).to(accelerator.device)[None]).cpu()
                    rec["weight_sync_max_diff"] = (sums - sums[0]).abs().max().item()
                    rec["weight_checksum"] = sums[0].tolist()
                if main_proc and cfg.grid_every and epoch % cfg.grid_every == 0:
                    (out / "grids").mkdir(exist_ok=True)
                    n = min(len(rollout), 4 * cfg.samples_per_prompt)
                    image_grid([to_pil(im) for im in rollout.images[:n]], cols=cfg.samples_per_prompt).save(
                        out / "grids" / f"epoch_{epoch:04d}.png")
                log(rec)
                epoch += 1
                bar.update(1)
                bar.set_postfix(score=f"{rec.get('score_mean', float('nan')):.3f}", loss=f"{rec.get('loss', float('nan')):.4f}")
                stop = stop_after_epochs is not None and epoch >= stop_after_epochs
                if epoch % cfg.checkpoint_every == 0 or epoch == cfg.num_epochs or stop:
                    checkpoint(epoch)
                    saved = epoch
                if stop:
                    stopped_by = "stop_after_epochs"
                    break
            if saved != epoch:
                checkpoint(epoch)
            if main_proc and epoch >= cfg.num_epochs:
                save_lora(pipe, out / "lora")
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
        if tb is not None:
            tb.close()
    if main_proc and stopped_by in ("interrupt", "time budget"):
        print(f"{cfg.method}: stopped ({stopped_by}) at epoch {epoch}; `--resume` continues from {ckpt}")
    accelerator.wait_for_everyone()
    return {"epoch": epoch, "interrupted": stopped_by == "interrupt", "stopped_by": stopped_by, **counters,
            "output_dir": str(out)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML run config (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (YAML value)")
    p.add_argument("--stop-after-epochs", type=int, default=None, help="checkpoint and stop after this epoch (simulates a kill)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        if config_method(args.config, args.set) == "drakes":  # discrete diffusion: its own config and loop
            from diffusion_align.drakes import DrakesConfig
            from diffusion_align.drakes import train as run
            cfg = DrakesConfig.from_cli(args.config, args.set)
        else:
            cfg, run = TrainConfig.from_cli(args.config, args.set), train
        return run(cfg, resume=args.resume, stop_after_epochs=args.stop_after_epochs, progress=not args.no_progress)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from e


def config_method(path: str, overrides: list[str]) -> str | None:
    """The ``method`` a config file (and its ``--set`` overrides) names, read before the config is validated."""
    import yaml

    if not Path(path).is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    method = data.get("method") if isinstance(data, dict) else None
    for item in overrides:
        if item.split("=", 1)[0].strip() == "method" and "=" in item:
            method = yaml.safe_load(item.split("=", 1)[1])
    return method


if __name__ == "__main__":
    main()
