"""Reward oracles for DNA: a CNN regressor from one-hot sequences to activity, its training on labelled
sequences (noisy labels, as an MPRA measurement), and a loader for user oracles.

Oracle contract (what DRAKES calls): ``oracle(x)`` with ``x`` float ``[B, L, V]`` (V = 4 for ACGT; one-hot, or the
straight-through relaxation, so gradients reach the sampler) → ``[B]``. :func:`load_oracle` accepts

- a folder written by :func:`save_oracle` (``oracle.json`` + ``model.safetensors``),
- an exported program (``.pt2``, ``torch.export.save``) or a TorchScript file (other suffixes), e.g. a
  published Enformer/gReLU oracle exported by the user, or
- an ``nn.Module`` instance,

with ``column`` picking one output of multi-task models (the paper's HepG2 is column 0) and
``channels_first`` for modules that take ``[B, 4, L]``.

    python -m diffusion_align.dna.oracle --out assets/dna-oracle-reward --split 0
    python -m diffusion_align.dna.oracle --out my_oracle --data seqs.csv --label-column hepg2
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from diffusion_align.dna.folders import load_folder, save_folder
from mmreward.assets import resolve_asset
from mmreward.command import run_command, with_examples
from mmreward.errors import ModelLoadError
from mmreward.trainer import Trainer, setup_logging


@dataclass
class OracleConfig:
    length: int = 200
    channels: int = 64
    kernel: int = 9
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    outputs: int = 1
    positional: bool = True  # a learned per-position bias after the stem (activity may depend on position)
    vocab: int = 4  # one-hot channels (ACGT)


class SeqCNN(nn.Module):
    """``[B, L, V]`` → ``[B, outputs]``: a convolution stem, dilated residual convolutions, then mean and
    max pooling over positions and a linear head."""

    def __init__(self, config: OracleConfig):
        super().__init__()
        self.config = config
        c, k = config.channels, config.kernel
        self.stem = nn.Conv1d(config.vocab, c, k, padding=k // 2)
        self.pos = nn.Parameter(torch.zeros(c, config.length)) if config.positional else None
        self.convs = nn.ModuleList(nn.Conv1d(c, c, 3, dilation=d, padding=d) for d in config.dilations)
        self.head = nn.Sequential(nn.Linear(2 * c, c), nn.GELU(), nn.Linear(c, config.outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.config.vocab:
            raise ValueError(f"expected one-hot sequences [B, L, {self.config.vocab}], got {tuple(x.shape)}")
        h = self.stem(x.transpose(1, 2))
        h = F.gelu(h if self.pos is None else h + self.pos)
        for conv in self.convs:
            h = h + F.gelu(conv(h))
        return self.head(torch.cat([h.mean(-1), h.amax(-1)], -1))


class OracleReward(nn.Module):
    """Any oracle module as the DRAKES reward: ``[B, L, V]`` → ``[B]``."""

    def __init__(self, model: nn.Module, column: int = 0, channels_first: bool = False):
        super().__init__()
        self.model, self.column, self.channels_first = model, column, channels_first
        for p in self.model.parameters():
            p.requires_grad_(False)
        try:
            self.model.eval()
        except NotImplementedError:  # exported programs have no train/eval modes
            pass

    def train(self, mode: bool = True) -> OracleReward:
        """The oracle stays in eval mode (dropout/batch-norm frozen) whatever its owner does."""
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x.transpose(1, 2) if self.channels_first else x)
        if y.ndim == 1:
            return y
        return y.reshape(len(x), -1)[:, self.column]


CONFIG_FILE = "oracle.json"


def save_oracle(model: SeqCNN, folder: str | Path, extra: dict | None = None) -> None:
    save_folder(model, folder, CONFIG_FILE, "dna-oracle-cnn", extra)


def load_oracle(spec: str | Path | nn.Module, column: int = 0, channels_first: bool = False, device="cpu") -> OracleReward:
    """The reward ``[B, L, V] → [B]`` of an oracle folder, exported file or module (see the module doc)."""
    if isinstance(spec, nn.Module):
        return OracleReward(spec, column, channels_first).to(device)
    path = Path(resolve_asset(spec))
    if path.is_dir():
        fields = OracleConfig.__dataclass_fields__
        model = load_folder(path, CONFIG_FILE, "dna-oracle-cnn", what="an oracle",
                            build=lambda meta: SeqCNN(OracleConfig(**{k: v for k, v in meta.items() if k in fields})))
        return OracleReward(model, column, channels_first).to(device)
    if path.is_file():  # exported programs: no pickled Python objects are executed
        try:
            if path.suffix == ".pt2":
                model = torch.export.load(str(path)).module()
            else:
                model = torch.jit.load(str(path), map_location=device)
        except Exception as e:  # noqa: BLE001 - any failure to read the file is the same user error
            raise ValueError(f"{path}: not an exported oracle ({e.__class__.__name__}); save it with torch.export.save "
                             "(.pt2) or torch.jit.save (TorchScript), or as an oracle folder with save_oracle") from e
        return OracleReward(model, column, channels_first).to(device)
    raise ModelLoadError(f"oracle not found: {spec} (an oracle folder, a .pt2 / TorchScript file or a module)")


# ------------------------------------------------------------------------------------- training
def world_library(world, n: int, seed: int, noise: float, enriched: float = 8.0,
                  skewed: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """A labelled library of the ground-truth world, as a designed MPRA library would be measured: natural
    sequences, sequences with the motif rates multiplied by ``enriched``, and a share ``skewed`` of synthetic
    sequences of random, often extreme composition (i.i.d. bases, composition ~ Dirichlet(0.4)), half of
    them with 1–6 motif copies planted at random places, so that the oracle has seen low-complexity,
    GC-rich and motif-stuffed sequences. Labels = hidden activity + Gaussian noise of std ``noise``. A
    different ``seed`` gives a disjoint split (the paper's chromosome halves)."""
    rng = np.random.default_rng(seed)
    n_skew = int(n * skewed)
    n_nat = (n - n_skew) // 2
    parts = [world.sample(n_nat, rng), world.sample(n - n_skew - n_nat, rng, rate_scale=enriched)]
    if n_skew:
        comp = rng.dirichlet(np.full(4, 0.4), size=n_skew)
        x = (comp.cumsum(1)[:, None, :] < rng.random((n_skew, world.length, 1))).sum(-1).clip(max=3)
        for i in range(n_skew // 2):
            for _ in range(rng.integers(1, 7)):
                m, at = rng.integers(len(world.motifs)), rng.integers(world.length - world.width + 1)
                pwm = world.pwm[m]
                x[i, at : at + world.width] = (pwm.cumsum(1) < rng.random((world.width, 1))).sum(1).clip(max=3)
        parts.append(torch.from_numpy(x.astype(np.int64)))
    x = torch.cat(parts)
    y = world.activity(x) + noise * torch.from_numpy(rng.standard_normal(n))
    return x, y.float()


class OracleTrainer(Trainer):
    """Oracle fitting on the trainer layer: one unit is one optimiser step; at each epoch's end the
    validation MSE and Pearson r (a metrics row) and, when best so far, the weights saved to ``out``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, out: str | Path, config: OracleConfig | None, epochs: int,
                 batch: int, lr: float, seed: int, val_frac: float, progress: bool, resume: bool,
                 checkpoint_every: int, stop_after: int | None, extra: dict | None, vocab: int,
                 overwrite: bool = False) -> None:
        if len(x) != len(y):
            raise ValueError(f"{len(x)} sequences but {len(y)} labels")
        if not torch.isfinite(y).all():
            raise ValueError("labels contain NaN/inf")
        run = {"epochs": epochs, "batch": batch, "lr": lr, "seed": seed, "val_frac": val_frac, "sequences": len(x),
               "model": asdict(config) if config else None, "extra": extra, "vocab": vocab}
        super().__init__(out, 0, run, resume=resume, checkpoint_every=checkpoint_every, stop_after=stop_after,
                         progress=progress, name="oracle", unit="step", where="--out", checkpoint_name="training",
                         overwrite=overwrite, config_name="training/run_config.json")
        self.x, self.y, self.batch, self.seed, self.extra = x, y, batch, seed, extra
        torch.manual_seed(seed)
        self.config = config or OracleConfig(length=x.shape[1], vocab=vocab)
        self.model = SeqCNN(self.config)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=1e-4)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        self.n_val = max(1, int(len(x) * val_frac))
        self.val, self.tr = perm[: self.n_val], perm[self.n_val :]
        self.per_epoch = (len(self.tr) + batch - 1) // batch
        self.total = epochs * self.per_epoch
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, lr, total_steps=self.total)
        self.history: list[dict] = []
        self.best = float("inf")
        self.order_ep, self.order = -1, self.tr

    def onehot(self, t: torch.Tensor) -> torch.Tensor:
        return F.one_hot(t, self.config.vocab).float()

    def state(self):
        return self.model, self.opt

    def state_extra(self) -> dict:
        return {"sched": self.sched.state_dict(), "history": self.history, "best": self.best}

    def load_state_extra(self, extra: dict) -> None:
        self.sched.load_state_dict(extra["sched"])
        self.history, self.best = extra["history"], extra["best"]

    def checkpoint_due(self, position: int) -> bool:
        return position % self.per_epoch == 0 or position % self.checkpoint_every == 0

    def row_position(self, row: dict) -> int:
        return int(row["step"]) - 1

    def train_step(self, step: int) -> dict | None:
        ep, k = divmod(step, self.per_epoch)
        if ep != self.order_ep:  # drawn once per epoch, a function of (seed, epoch): resumable mid-epoch
            gen = torch.Generator().manual_seed(self.seed * 7919 + ep)
            self.order_ep, self.order = ep, self.tr[torch.randperm(len(self.tr), generator=gen)]
        self.model.train()
        idx = self.order[k * self.batch : (k + 1) * self.batch]
        loss = F.mse_loss(self.model(self.onehot(self.x[idx]))[:, 0], self.y[idx])
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.sched.step()
        if (step + 1) % self.per_epoch:
            return None
        self.model.eval()  # the epoch's validation, and the best weights so far
        x, y, val = self.x, self.y, self.val
        with torch.no_grad():
            pred = torch.cat([self.model(self.onehot(x[val[i : i + 1024]]))[:, 0] for i in range(0, self.n_val, 1024)])
        mse = float(F.mse_loss(pred, y[val]))
        r = float(torch.corrcoef(torch.stack([pred, y[val]]))[0, 1])
        self.history.append({"epoch": ep, "val_mse": mse, "val_pearson": r, "step": step + 1})
        self.logger.info(json.dumps(self.history[-1]))
        if mse < self.best:
            self.best = mse
            save_oracle(self.model, self.out, {"trained_on": len(self.tr), "val_mse": mse, "val_pearson": r,
                                               **(self.extra or {})})
        return dict(self.history[-1])


def train_oracle(x: torch.Tensor, y: torch.Tensor, out: str | Path, config: OracleConfig | None = None,
                 epochs: int = 10, batch: int = 256, lr: float = 1e-3, seed: int = 0, val_frac: float = 0.05,
                 progress: bool = True, resume: bool = False, checkpoint_every: int = 50,
                 stop_after: int | None = None, extra: dict | None = None, vocab: int = 4, overwrite: bool = False) -> dict:
    """Fit :class:`SeqCNN` by MSE on tokens ``x`` ``[N, L]`` and labels ``y`` ``[N]``; the weights of the
    best validation epoch are saved to ``out`` (with ``extra`` in its JSON). Returns the metrics (val MSE and
    Pearson r per epoch, also in ``out/metrics.json`` and ``metrics.jsonl``) and the optimiser steps done.

    The training state (model, optimizer, schedule, step) goes to ``out/training`` every
    ``checkpoint_every`` steps, at each epoch's end and on Ctrl-C; ``resume`` continues from it (each
    epoch's batch order is a function of ``(seed, epoch)``, so a resumed run gives the weights of an
    uninterrupted one). ``stop_after``: stop, checkpointed, after that many optimiser steps."""
    trainer = OracleTrainer(x, y, out, config, epochs, batch, lr, seed, val_frac, progress, resume, checkpoint_every,
                            stop_after, extra, vocab, overwrite)
    res = trainer.run()
    (Path(out) / "metrics.json").write_text(json.dumps(trainer.history, indent=1))
    return {"history": trainer.history, "best_val_mse": trainer.best, "steps": res["step"]}


def main(argv: list[str] | None = None) -> dict:
    from diffusion_align.dna.world import ALPHABET, DNAWorld, data_alphabet, encode, read_sequences

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--split", type=int, default=0, help="the world's library split (0: reward oracle, 1: evaluation oracle)")
    p.add_argument("--n", type=int, default=60000, help="labelled sequences drawn from the world")
    p.add_argument("--noise", type=float, default=0.5, help="label noise (std) of the world's measurements")
    p.add_argument("--data", default=None, help="CSV of real sequences with labels instead of the world")
    p.add_argument("--label-column", default="label")
    p.add_argument("--alphabet", default=ALPHABET, help="the tokens of --data, in order, or 'auto' (its sorted characters)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from OUT/training")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--stop-after", type=int, default=None, help="stop (checkpointed, resumable) after this many steps")
    with_examples(p, "mmalign dna oracle --out outputs/dna-oracle")
    args = p.parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data:
        import csv

        seqs = read_sequences(args.data)
        with open(args.data, newline="") as f:
            reader = csv.DictReader(f)
            if args.label_column not in (reader.fieldnames or []):
                raise ValueError(f"{args.data}: no label column {args.label_column!r} (columns: {reader.fieldnames})")
            y = torch.tensor([float(r[args.label_column]) for r in reader])
        alphabet = data_alphabet(seqs) if args.alphabet == "auto" else args.alphabet
        x = encode(seqs, alphabet)
    else:
        alphabet = ALPHABET
        x, y = world_library(DNAWorld(), args.n, seed=1000 + args.split, noise=args.noise)
    data = {"data": args.data, "label_column": args.label_column} if args.data else {
        "data": "DNAWorld(seed=0)", "split": args.split, "noise": args.noise}
    return train_oracle(x, y, args.out, epochs=args.epochs, seed=args.seed, resume=args.resume, overwrite=args.overwrite,
                        stop_after=args.stop_after, extra={**data, "alphabet": alphabet}, vocab=len(alphabet))


if __name__ == "__main__":
    sys.exit(run_command(main))
