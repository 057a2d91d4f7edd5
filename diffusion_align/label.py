"""D3PO's human-feedback path: sample image groups, show the pairs to a person, record the choices.

    python -m diffusion_align.label sample --config configs/d3po_shapes.yaml --out labels/ --prompts 20 --per-prompt 4
    python -m diffusion_align.label annotate --dir labels/             # asks 1 / 2 / t (tie) / s (skip) / q (quit)
    python -m diffusion_align.label annotate --dir labels/ --auto evaluator   # or let a feedback source label

``sample`` draws ``--per-prompt`` images of each prompt from one shared ``x_T`` (the reference uses 7) with
the config's sampler and saves the trajectories (``rollouts.safetensors``), one side-by-side PNG per pair
(``pairs/NNNNN.png``) and ``pairs.jsonl``. ``annotate`` appends ``{"pair": id, "chosen": 0 | 1 | null}``
lines to ``labels.jsonl`` (``labels_<name>.jsonl`` with ``--annotator NAME``); it resumes where it
stopped. Training reads every ``labels*.jsonl`` (majority vote; ties skipped)::

    python diffusion_align/train.py --config configs/d3po_shapes.yaml --set feedback=labels --set labels_dir=labels/
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch

from diffusion_align.config import SAMPLER_KEYS, ConfigError, DiffusionRLConfig
from mmreward.command import run_command, with_examples
from mmreward.files import numbered_jsonl, read_jsonl


def sample_pairs(cfg: DiffusionRLConfig, out: Path, n_prompts: int, per_prompt: int, lora: str | None = None) -> int:
    """Sample and write the groups and their pairs; returns the number of pairs."""
    from mmreward.images import image_grid, text_tile, to_pil

    from .lora import load_lora
    from .pipelines import make_adapter
    from .rollout import Rollout
    from .sampling import group_pairs, load_pipeline, read_prompts, sample_epoch

    if per_prompt < 2:
        raise ConfigError("--per-prompt must be at least 2 (pairs)")
    out.mkdir(parents=True, exist_ok=True)
    if (out / "rollouts.safetensors").exists():
        raise ConfigError(f"{out} already holds sampled pairs; choose another --out")
    pipe = make_adapter(load_pipeline(cfg.pretrained, "cuda" if torch.cuda.is_available() else "cpu"))
    if lora:
        try:
            load_lora(pipe, lora)
        except ValueError as e:
            raise ConfigError(f"--lora: {e}") from e
    prompts = read_prompts(cfg.prompts)
    run = DiffusionRLConfig.from_dict({**vars(cfg), "samples_per_prompt": per_prompt, "sample_batch_size": n_prompts,
                                 "num_batches_per_epoch": 1})
    rollout: Rollout = sample_epoch(run, pipe, pipe.denoiser, prompts, epoch=0, process=0)
    rollout.save(out / "rollouts.safetensors", sampler_info(cfg, lora))
    pairs = group_pairs(n_prompts, per_prompt)
    (out / "pairs").mkdir(exist_ok=True)
    with (out / "pairs.jsonl").open("w") as f:
        for pid, (a, b) in enumerate(pairs.tolist()):
            name = f"pairs/{pid:05d}.png"
            image_grid([to_pil(rollout.images[a]), to_pil(rollout.images[b]), text_tile(rollout.prompts[a])], cols=3).save(out / name)
            f.write(json.dumps({"pair": pid, "a": a, "b": b, "prompt": rollout.prompts[a], "image": name}) + "\n")
    return len(pairs)


def sampler_info(cfg: DiffusionRLConfig, lora: str | None = None) -> dict:
    """What training must share with the sampled trajectories to re-score them correctly."""
    return {**{k: getattr(cfg, k) for k in SAMPLER_KEYS}, "lora": lora}


def read_pairs(folder: Path) -> list[dict]:
    path = folder / "pairs.jsonl"
    if not path.is_file():
        raise ConfigError(f"{folder}: no pairs.jsonl (run `python -m diffusion_align.label sample` first)")
    return read_jsonl(path, "pairs file")


def annotate(folder: Path, annotator: str | None = None, auto: str | None = None, inp=None, out=None) -> int:
    """Label the folder's unlabelled pairs; returns how many were labelled now."""
    inp, out = inp or sys.stdin, out or sys.stdout
    pairs = read_pairs(folder)
    path = folder / (f"labels_{annotator}.jsonl" if annotator else "labels.jsonl")
    done = {r["pair"] for r in read_jsonl(path, "labels file", keys=("pair",))} if path.is_file() else set()
    todo = [p for p in pairs if p["pair"] not in done]
    scores = None
    if auto:
        from .feedback import make_scorer
        from .rollout import Rollout

        ro = Rollout.load(folder / "rollouts.safetensors")[0]
        scores = make_scorer(auto)(ro.images, ro.prompts)
    n = 0
    with path.open("a") as f:
        for p in todo:
            if scores is not None:
                d = (scores[p["a"]] - scores[p["b"]]).item()
                chosen = 0 if d > 0 else 1 if d < 0 else None
            else:
                out.write(f"[{p['pair'] + 1}/{len(pairs)}] {p['prompt']!r}: open {folder / p['image']}\n"
                          "which image is better? 1 (left) / 2 (right) / t (tie) / s (skip) / q (quit): ")
                out.flush()
                answer = inp.readline().strip().lower()
                if answer in ("q", ""):  # quit (or end of input): what is labelled so far is kept
                    break
                if answer == "s":
                    continue
                if answer not in ("1", "2", "t"):
                    out.write(f"unknown answer {answer!r}; pair skipped\n")
                    continue
                chosen = {"1": 0, "2": 1, "t": None}[answer]
            f.write(json.dumps({"pair": p["pair"], "chosen": chosen}) + "\n")
            f.flush()
            n += 1
    return n


def load_labelled(folder: str | Path, device="cpu", cfg: DiffusionRLConfig | None = None):
    """``(rollout, pairs [P,2], preferences [P,2])`` from a labelled folder: every ``labels*.jsonl`` votes,
    the majority wins, ties (and pairs nobody labelled) are left out. With ``cfg``, its sampler (model,
    steps, eta, guidance) must be the one the trajectories were drawn with."""
    from .rollout import Rollout

    folder = Path(folder)
    pairs = {p["pair"]: p for p in read_pairs(folder)}
    files = sorted(folder.glob("labels*.jsonl"))
    if not files:
        raise ConfigError(f"labels_dir {folder}: no labels*.jsonl (run `python -m diffusion_align.label annotate`)")
    votes: dict[int, Counter] = {}
    for f in files:
        for n, r in numbered_jsonl(f, "labels file", keys=("pair", "chosen")):
            if r["pair"] not in pairs:
                raise ConfigError(f"{f}, line {n}: pair {r['pair']} is not in pairs.jsonl")
            if r["chosen"] is not None:
                votes.setdefault(r["pair"], Counter())[int(r["chosen"])] += 1
    idx, pref = [], []
    for pid, c in sorted(votes.items()):
        if c[0] != c[1]:
            idx.append((pairs[pid]["a"], pairs[pid]["b"]))
            pref.append((1.0, -1.0) if c[0] > c[1] else (-1.0, 1.0))
    if not idx:
        raise ConfigError(f"labels_dir {folder}: no labelled pair with a preference (all ties or unlabelled)")
    rollout, info = Rollout.load(folder / "rollouts.safetensors", device)
    if cfg is not None:
        diff = {k: (info.get(k), getattr(cfg, k)) for k in SAMPLER_KEYS if info.get(k) != getattr(cfg, k)}
        if diff:
            raise ConfigError(f"labels_dir {folder} was sampled with other settings than this config "
                              f"(key: (sampled, config)): {diff}; re-sample or use the same settings")
    return rollout, torch.tensor(idx), torch.tensor(pref)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="sample groups of images and write their pairs")
    s.add_argument("--config", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--prompts", type=int, default=20, help="number of prompts drawn from the config's prompts")
    s.add_argument("--per-prompt", type=int, default=4, help="images per prompt (pairs: all C(k,2) of them)")
    s.add_argument("--lora", default=None, help="adapters to sample with (a folder written by train.py)")
    a = sub.add_parser("annotate", help="label the pairs (a person on the terminal, or --auto)")
    a.add_argument("--dir", required=True)
    a.add_argument("--annotator", default=None)
    a.add_argument("--auto", default=None, help="label with a feedback source instead (evaluator, a reward spec)")
    with_examples(s, "mmalign label sample --config d3po_shapes --out labels/ --prompts 20 --per-prompt 4")
    with_examples(a, "mmalign label annotate --dir labels/ --annotator alice")
    with_examples(p, "mmalign label sample --config d3po_shapes --out labels/", "mmalign label annotate --dir labels/")
    args = p.parse_args(argv)
    try:
        if args.cmd == "sample":
            n = sample_pairs(DiffusionRLConfig.from_yaml(args.config), Path(args.out), args.prompts, args.per_prompt, args.lora)
            print(f"wrote {n} pairs to {args.out}; next: python -m diffusion_align.label annotate --dir {args.out}")
        else:
            n = annotate(Path(args.dir), args.annotator, args.auto)
            print(f"labelled {n} pairs in {args.dir}")
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from e
    return n


if __name__ == "__main__":
    sys.exit(run_command(main))
