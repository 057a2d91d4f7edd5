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
import sys
import time

import numpy as np
import torch

from diffusion_align.dna.mdlm import Denoiser, DenoiserConfig, diffusion_loss, save_model
from diffusion_align.dna.world import ALPHABET, DNAWorld, data_alphabet, encode, read_sequences
from mmreward.command import run_command, with_examples
from mmreward.schedules import warmup_cosine
from mmreward.trainer import Trainer, setup_logging

WARMUP = 200  #: learning-rate warm-up steps


@torch.no_grad()
def validation_elbo(model, x: torch.Tensor, repeats: int = 4, seed: int = 0) -> float:
    """Mean ELBO (nats per base; lower is better) of ``x`` ``[N, L]``, ``repeats`` time draws per sequence."""
    g = torch.Generator().manual_seed(seed)
    vals = [diffusion_loss(model, x[k : k + 256], g).item() for _ in range(repeats) for k in range(0, len(x), 256)]
    return float(np.mean(vals))


class PretrainTrainer(Trainer):
    """Masked-diffusion pretraining on the trainer layer: one unit is one optimiser step; a metrics row
    (train loss, validation ELBO) every ``eval_every`` steps; ``OUT/training`` holds the checkpoint."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args.out, args.steps, vars(args), resume=args.resume, overwrite=args.overwrite,
                         config_name="training/run_config.json",
                         checkpoint_every=args.checkpoint_every,
                         stop_after=args.stop_after, name="mdlm pretrain", unit="step", where="--out",
                         checkpoint_name="training")
        self.args = args
        self.world = DNAWorld()
        self.data = None
        self.alphabet = ALPHABET
        if args.data:
            seqs = read_sequences(args.data)
            self.alphabet = data_alphabet(seqs) if args.alphabet == "auto" else args.alphabet
            data = encode(seqs, self.alphabet)
            g = torch.Generator().manual_seed(args.seed)
            data = data[torch.randperm(len(data), generator=g)]
            self.val, self.data = data[: min(1000, len(data) // 10)], data[min(1000, len(data) // 10) :]
            length = self.data.shape[1]
        else:
            self.val = self.world.sample(1000, np.random.default_rng(10**6))
            length = self.world.length
        torch.manual_seed(args.seed)
        self.model = Denoiser(DenoiserConfig(vocab=len(self.alphabet), length=length, channels=args.channels))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.98))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: warmup_cosine(s, args.steps, 1.0, WARMUP))
        self.losses: list[float] = []
        self.t0 = time.time()

    def batch_at(self, s: int) -> torch.Tensor:
        """The batch of step ``s``: a function of (seed, step), so runs resume exactly."""
        rng = np.random.default_rng([self.args.seed, s])
        if self.data is None:
            return self.world.sample(self.args.batch, rng)
        return self.data[torch.from_numpy(rng.integers(len(self.data), size=self.args.batch))]

    def state(self):
        return self.model, self.opt

    def state_extra(self) -> dict:
        return {"sched": self.sched.state_dict()}

    def load_state_extra(self, extra: dict) -> None:
        self.sched.load_state_dict(extra["sched"])

    def row_position(self, row: dict) -> int:
        return int(row["step"]) - 1

    def train_step(self, step: int) -> dict | None:
        g = torch.Generator().manual_seed(self.args.seed * 7919 + step)
        self.model.train()
        loss = diffusion_loss(self.model, self.batch_at(step), g)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        self.losses.append(loss.item())
        done = step + 1
        if done % self.args.eval_every and done != self.args.steps:
            return None
        self.model.eval()
        rec = {"step": done, "train_loss": float(np.mean(self.losses[-50:])), "val_elbo": validation_elbo(self.model, self.val),
               "elapsed_s": time.time() - self.t0}
        self.logger.info(json.dumps(rec))
        return rec

    def postfix(self, row: dict) -> dict:
        return {"loss": f"{np.mean(self.losses[-50:]):.4f}"}

    def save_model(self) -> dict:
        self.model.eval()
        info = {"steps": self.position, "val_elbo_nats_per_base": validation_elbo(self.model, self.val),
                "data": self.args.data or "DNAWorld(seed=0)", "alphabet": self.alphabet}
        save_model(self.model, self.args.out, info)
        return info


def main(argv: list[str] | None = None) -> dict:
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
    p.add_argument("--resume", action="store_true", help="continue from OUT/training")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--stop-after", type=int, default=None, help="stop (checkpointed, resumable) after this many steps")
    p.add_argument("--threads", type=int, default=None)
    with_examples(p, "mmalign dna pretrain --out outputs/dna-mdlm --steps 4000")
    args = p.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    trainer = PretrainTrainer(args)
    trainer.run()
    return trainer.save_model()  # the weights reached, also when stopped early (--resume continues)


if __name__ == "__main__":
    sys.exit(run_command(main))
