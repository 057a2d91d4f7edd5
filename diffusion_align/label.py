"""D3PO's human-feedback path: sample image groups, label them (a web page, the terminal or a feedback
source), and read the labels for training.

    python -m diffusion_align.label sample --config configs/d3po_shapes.yaml --out labels/ --prompts 20 --per-prompt 4
    python -m diffusion_align.label serve --dir labels/                # the web page: http://127.0.0.1:8765/
    python -m diffusion_align.label annotate --dir labels/             # asks 1 / 2 / t (tie) / s (skip) / q (quit)
    python -m diffusion_align.label annotate --dir labels/ --auto evaluator   # or let a feedback source label
    python -m diffusion_align.label summary --dir labels/              # labels per annotator, agreement
    python -m diffusion_align.label export --dir labels/ --annotator alice --out alice.json   # the D3PO JSON
    python -m diffusion_align.label import --dir labels/ --annotator bob bob.json

``sample`` draws ``--per-prompt`` images of each prompt from one shared ``x_T`` (the reference uses 7) with
the config's sampler and saves the trajectories (``rollouts.safetensors``), the groups (``groups.jsonl``,
one PNG per image in ``images/``) and their pairs (``pairs.jsonl``, a side-by-side PNG per pair in
``pairs/``). The web page writes ``labels_<name>.jsonl`` (one line per labelled group); ``annotate``
appends pair lines to ``labels.jsonl`` (``labels_<name>.jsonl`` with ``--annotator NAME``) and resumes
where it stopped. The file formats: :mod:`diffusion_align.label_store`. Training reads every
``labels*.jsonl`` (each annotator's last label of a pair is one vote; the majority wins; ties skipped)::

    python diffusion_align/train.py --config configs/d3po_shapes.yaml --set feedback=labels --set labels_dir=labels/
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from diffusion_align import label_store
from diffusion_align.config import SAMPLER_KEYS, ConfigError, DiffusionRLConfig
from diffusion_align.label_store import labels_path, pair_votes
from mmreward.command import run_command, with_examples
from mmreward.errors import InputFileError
from mmreward.files import read_jsonl, read_text


def sample_pairs(cfg: DiffusionRLConfig, out: Path, n_prompts: int, per_prompt: int, lora: str | None = None) -> int:
    """Sample and write the groups and their pairs; returns the number of pairs."""
    import torch

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
    (out / "images").mkdir(exist_ok=True)
    with (out / "groups.jsonl").open("w") as f:
        for g in range(n_prompts):
            index = list(range(g * per_prompt, (g + 1) * per_prompt))
            for i in index:
                to_pil(rollout.images[i]).save(out / f"images/{i:05d}.png")
            f.write(json.dumps({"group": g, "prompt": rollout.prompts[index[0]], "index": index,
                                "images": [f"images/{i:05d}.png" for i in index]}) + "\n")
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
    path = labels_path(folder, annotator)
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
    """``(rollout, pairs [P,2], preferences [P,2])`` from a labelled folder: each ``labels*.jsonl`` (one
    annotator) gives a pair one vote, its last label of the pair; the majority wins, ties (and pairs nobody labelled) are left out. With ``cfg``, its sampler (model,
    steps, eta, guidance) must be the one the trajectories were drawn with."""
    import torch

    from .rollout import Rollout

    folder = Path(folder)
    pairs = {p["pair"]: p for p in read_pairs(folder)}
    if not any(folder.glob("labels*.jsonl")):
        raise ConfigError(f"labels_dir {folder}: no labels*.jsonl (label with `python -m diffusion_align.label serve` "
                          "or `annotate`)")
    votes: dict[int, Counter] = {}
    for by_pair in pair_votes(folder).values():  # each annotator's last label of a pair is one vote
        for pid, chosen in by_pair.items():
            if chosen is not None:
                votes.setdefault(pid, Counter())[chosen] += 1
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
    w = sub.add_parser("serve", help="label the groups on a web page")
    w.add_argument("--dir", required=True)
    w.add_argument("--host", default="127.0.0.1", help="address to listen on (elsewhere than loopback needs a token)")
    w.add_argument("--port", type=int, default=8765)
    w.add_argument("--token", default=None, help="the token every request must carry (default: made and printed "
                   "when --host is not a loopback address)")
    m = sub.add_parser("summary", help="labels per annotator and agreement between annotators, as JSON")
    m.add_argument("--dir", required=True)
    e = sub.add_parser("export", help="one annotator's labels as the D3PO reference's per-annotator JSON")
    e.add_argument("--dir", required=True)
    e.add_argument("--annotator", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--overwrite", action="store_true")
    i = sub.add_parser("import", help="the D3PO reference's per-annotator JSON as one annotator's labels")
    i.add_argument("--dir", required=True)
    i.add_argument("--annotator", required=True)
    i.add_argument("file")
    i.add_argument("--overwrite", action="store_true")
    with_examples(s, "mmalign label sample --config d3po_shapes --out labels/ --prompts 20 --per-prompt 4")
    with_examples(a, "mmalign label annotate --dir labels/ --annotator alice")
    with_examples(w, "mmalign label serve --dir labels/", "mmalign label serve --dir labels/ --host 0.0.0.0 --port 8765")
    with_examples(e, "mmalign label export --dir labels/ --annotator alice --out alice.json")
    with_examples(i, "mmalign label import --dir labels/ --annotator bob bob.json")
    with_examples(p, "mmalign label sample --config d3po_shapes --out labels/", "mmalign label serve --dir labels/")
    args = p.parse_args(argv)
    try:
        if args.cmd == "sample":
            n = sample_pairs(DiffusionRLConfig.from_yaml(args.config), Path(args.out), args.prompts, args.per_prompt, args.lora)
            print(f"wrote {n} pairs to {args.out}; label them on a web page: python -m diffusion_align.label serve "
                  f"--dir {args.out} (or on the terminal: annotate --dir {args.out})")
        elif args.cmd == "annotate":
            n = annotate(Path(args.dir), args.annotator, args.auto)
            print(f"labelled {n} pairs in {args.dir}")
        elif args.cmd == "serve":
            from diffusion_align.label_server import serve

            serve(args.dir, args.host, args.port, args.token)
            n = 0
        elif args.cmd == "summary":
            print(json.dumps(label_store.summary(args.dir), indent=1))
            n = 0
        elif args.cmd == "export":
            out = Path(args.out)
            if out.exists() and not args.overwrite:
                raise ConfigError(f"{out} exists; pass --overwrite to replace it")
            data = label_store.export_reference(args.dir, args.annotator)
            out.write_text(json.dumps(data))
            n = len(data)
            print(f"wrote {n} groups of {args.annotator}'s labels to {out} (up to the first unlabelled group)")
        else:
            try:
                data = json.loads(read_text(args.file, "labels JSON"))
            except json.JSONDecodeError as err:
                raise ConfigError(f"{args.file}, line {err.lineno}: not valid JSON ({err.msg})") from err
            n = label_store.import_reference(args.dir, args.annotator, data, args.overwrite)
            print(f"imported {n} groups as {args.annotator}'s labels in {args.dir}")
    except (ConfigError, InputFileError) as e:
        raise SystemExit(f"error: {e}") from e
    return n


if __name__ == "__main__":
    sys.exit(run_command(main))
