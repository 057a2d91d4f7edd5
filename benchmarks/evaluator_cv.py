"""Cross-validation of the evaluator's shape classifier on the audit set's development images: how a
setting of the classifier would agree with the visual labels on images it was not trained on, so that
settings are chosen without looking at an untouched test split.

    python benchmarks/evaluator_cv.py --splits dev,test --folds 2 [--name base] [-- --real-batch 32]

For each fold ``k`` a classifier is trained (``mmreward.shapes.train_shape_net``, arguments after ``--``
passed on) on the drawn shapes and the people-named objects of the development images (of
``--train-splits``) with ``id % folds != k``, and judges the images with ``id % folds == k``; every ``--confidences`` value is
tried as the evaluator's ``min_confidence``, with each ``--blob-weights`` scaling of the blob class. Fold classifiers are kept in ``--work/<name>/fold<k>`` and
reused. Prints agreement (``unsure`` labels left out) overall and per category, and adds the setting to
``benchmarks/results/evaluator_cv.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmreward.shapes import train_shape_net
from mmreward.shapes.evaluator import find_objects, judge, name_object
from mmreward.shapes.prompts import CATEGORIES
from mmreward.shapes.shape_net import class_probabilities

sys.path.insert(0, str(Path(__file__).parent))
from evaluator_audit import AUDIT, agreement, read_jsonl  # noqa: E402


def main() -> None:
    argv = sys.argv[1:]
    passed = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--splits", default="dev", help="development splits, comma-separated (never an untouched test split)")
    p.add_argument("--train-splits", default=None, help="the splits whose people-named objects train the fold "
                   "classifiers (default: --splits), e.g. fewer, to measure what more data gives")
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--confidences", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6])
    p.add_argument("--blob-weights", type=float, nargs="+", default=[1.0],
                   help="the blob probability is scaled by each (then renormalised) before naming: below 1 "
                        "favours the named shapes")
    p.add_argument("--name", default="base", help="name of this setting (its folder under --work)")
    p.add_argument("--work", default="outputs/evaluator_cv")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "evaluator_cv.json"),
                   help="results of every setting (this one added or replaced) and their Markdown table")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    splits = args.splits.split(",")
    items = [it for it in read_jsonl(AUDIT / "items.jsonl") if it["split"] in splits]
    labels = {lb["id"]: lb for lb in read_jsonl(AUDIT / "labels.jsonl")}
    work = Path(args.work) / args.name
    settings = [(c, w) for w in args.blob_weights for c in args.confidences]
    rows = {cw: [] for cw in settings}
    for k in range(args.folds):
        folder = work / f"fold{k}"
        if not (folder / "model.safetensors").is_file():
            train_shape_net.main(["--out", str(folder), "--work", str(folder / "work"), "--real", str(AUDIT),
                                  "--real-split", args.train_splits or args.splits, "--real-fold", f"{k}/{args.folds}",
                                  "--threads", str(args.threads), *passed])
        for it in (it for it in items if it["id"] % args.folds == k):
            objects = find_objects(Image.open(AUDIT / it["file"]))
            probs = class_probabilities([o["mask"] for o in objects], folder)
            for c, w in settings:
                scaled = probs * np.array([1, 1, 1, 1, w], np.float32)
                scaled /= scaled.sum(axis=1, keepdims=True)
                correct, _ = judge(it["meta"], [name_object(o, pr, c) for o, pr in zip(objects, scaled)])
                rows[(c, w)].append({"id": it["id"], "tag": it["tag"], "source": it["source"],
                                "label": labels[it["id"]]["label"], "correct": correct})
    result = {"name": args.name, "splits": splits, "train_splits": (args.train_splits or args.splits).split(","),
              "folds": args.folds, "train_args": passed, "settings": {}}
    for (c, w), rs in rows.items():
        key = f"min_confidence={c},blob_weight={w}"
        result["settings"][key] = {"overall": agreement(rs),
                                   "per_category": {t: agreement([r for r in rs if r["tag"] == t]) for t in CATEGORIES}}
        a = result["settings"][key]
        print(f"{args.name} {key}: overall {a['overall']['decided']['agreement']:.3f} | "
              + " ".join(f"{t} {a['per_category'][t]['decided']['agreement']:.2f}" for t in CATEGORIES))
    work.mkdir(parents=True, exist_ok=True)
    (work / "cv.json").write_text(json.dumps(result, indent=1))
    # every setting measured so far, side by side
    out = Path(args.out)
    combined = json.loads(out.read_text()) if out.is_file() else {}
    combined[args.name] = result
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(combined, indent=1))
    out.with_suffix(".md").write_text(markdown(combined))


def markdown(combined: dict) -> str:
    lines = ["## Shape classifier settings, cross-validated on the audit set's development images", "",
             "Each setting: fold classifiers trained on the people-named objects of the images with `id % folds != k` "
             "(of the training splits) and scored on the images with `id % folds == k` of the evaluated splits; "
             "agreement with the visual labels, `unsure` left out. `python benchmarks/evaluator_cv.py`.", "",
             "| setting | trained on | evaluated on | min_confidence, blob weight | overall | "
             + " | ".join(CATEGORIES) + " |", "|---|---|---|---|---|" + "---|" * len(CATEGORIES)]
    for name, r in combined.items():
        for key, a in r["settings"].items():
            c, w = (v.split("=")[1] for v in key.split(","))
            lo, hi = a["overall"]["decided"]["wilson95"]
            lines.append(f"| {name} | {'+'.join(r['train_splits'])} | {'+'.join(r['splits'])} ({a['overall']['n']} images, "
                         f"{r['folds']} folds) | {c}, {w} | {a['overall']['decided']['agreement']:.3f} [{lo:.3f}, {hi:.3f}] | "
                         + " | ".join(f"{a['per_category'][t]['decided']['agreement']:.2f}" for t in CATEGORIES) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
