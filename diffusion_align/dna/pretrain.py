"""Pretrain the masked DNA diffusion model (:mod:`diffusion_align.dna.mdlm`) on natural sequences: those of
the ground-truth world (a fresh batch every step, so nothing is memorised) or of a FASTA/CSV file.

    python -m diffusion_align.dna.pretrain --out assets/dna-mdlm --steps 4000
    python -m diffusion_align.dna.pretrain --out my_model --data enhancers.fa --steps 20000

Checkpoints every ``--checkpoint-every`` steps and on Ctrl-C; ``--resume`` continues. Logs the training
loss and, every ``--eval-every`` steps, the validation ELBO (nats per base) to ``metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from diffusion_align.dna.mdlm import Denoiser, DenoiserConfig, diffusion_loss, save_model
from diffusion_align.dna.world import ALPHABET, DNAWorld, data_alphabet, encode, read_sequences


@torch.no_grad()
def validation_elbo(model, x: torch.Tensor, repeats: int = 4, seed: int = 0) -> float:
    """Mean ELBO (nats per base; lower is better) of ``x`` ``[N, L]``, ``repeats`` time draws per sequence."""
    g = torch.Generator().manual_seed(seed)
    vals = [diffusion_loss(model, x[k : k + 256], g).item() for _ in range(repeats) for k in range(0, len(x), 256)]
    return float(np.mean(vals))


def main(argv: list[str] | None = None) -> dict:
    from tqdm import tqdm

    from mmreward.checkpoint import load_state, run_checkpoint_dir, save_state
    from mmreward.config_file import ConfigError
    from mmreward.stop import StopFlag

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--data", default=None, help="FASTA or CSV of natural sequences (default: the ground-truth world)")
    p.add_argument("--alphabet", default=ALPHABET, help="the tokens of --data, in order, or 'auto' (its sorted characters)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--stop-after", type=int, default=None, help="stop (checkpointed, resumable) after this many steps")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    try:
        work = run_checkpoint_dir(out, args.resume, name="training", where="--out")
    except ConfigError as e:
        raise SystemExit(str(e)) from e

    world = DNAWorld()
    data = None
    alphabet = ALPHABET
    if args.data:
        seqs = read_sequences(args.data)
        alphabet = data_alphabet(seqs) if args.alphabet == "auto" else args.alphabet
        data = encode(seqs, alphabet)
        g = torch.Generator().manual_seed(args.seed)
        data = data[torch.randperm(len(data), generator=g)]
        val, data = data[: min(1000, len(data) // 10)], data[min(1000, len(data) // 10) :]
        length = data.shape[1]
    else:
        val = world.sample(1000, np.random.default_rng(10**6))
        length = world.length
    torch.manual_seed(args.seed)
    model = Denoiser(DenoiserConfig(vocab=len(alphabet), length=length, channels=args.channels))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = 200
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    step = 0
    if args.resume:
        step, extra = load_state(work, model, opt)
        sched.load_state_dict(extra["sched"])
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.jsonl"
    if not args.resume:
        metrics.write_text("")

    def batch_at(s: int) -> torch.Tensor:  # a function of (seed, step): resumable
        rng = np.random.default_rng([args.seed, s])
        if data is None:
            return world.sample(args.batch, rng)
        return data[torch.from_numpy(rng.integers(len(data), size=args.batch))]

    def checkpoint() -> None:
        save_state(work, model, opt, step, {"sched": sched.state_dict()})

    bar = tqdm(total=args.steps, initial=step, desc="mdlm pretrain", dynamic_ncols=True)
    t0, losses = time.time(), []
    with StopFlag("step") as flag, metrics.open("a") as log:
        while step < args.steps and not flag.requested and (args.stop_after is None or step < args.stop_after):
            g = torch.Generator().manual_seed(args.seed * 7919 + step)
            model.train()
            loss = diffusion_loss(model, batch_at(step), g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            rec = None
            if step % args.eval_every == 0 or step == args.steps:
                model.eval()
                rec = {"step": step, "train_loss": float(np.mean(losses[-50:])), "val_elbo": validation_elbo(model, val),
                       "elapsed_s": time.time() - t0}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                tqdm.write(json.dumps(rec))
            if step % args.checkpoint_every == 0:
                checkpoint()
    bar.close()
    checkpoint()
    model.eval()
    info = {"steps": step, "val_elbo_nats_per_base": validation_elbo(model, val), "data": args.data or "DNAWorld(seed=0)",
            "alphabet": alphabet}
    save_model(model, out, info)
    if flag.requested:
        print(f"stopped at step {step}; --resume continues from {work}")
    return info


if __name__ == "__main__":
    main()
