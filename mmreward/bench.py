"""How accurate is a reward model? Pairwise accuracy on preference benchmarks.

    python -m mmreward.bench --reward SPEC --data FILE [--format auto] [--images ROOT] [--out result.json]
    python -m mmreward.bench --reward "vlm:FOLDER?template=pairwise" --data FILE --mode pairwise [--swap]

Every benchmark becomes items of ``K >= 2`` candidates, each an ``(image, text)`` scored as
``reward(image, text)``, with a rank per candidate (lower is better; equal ranks are ties), and a category.
An item of K ranked candidates counts as all its pairs of different rank (ImageReward's and HPSv2's test
protocol); tied pairs are left out of the accuracy and counted apart, as those benchmarks do; a reward
that scores a pair exactly equal gets half credit. Reported: accuracy over all pairs, per category and
their macro average, and a calibration table (``P(first wins) = σ(r_a − r_b)``, the Bradley–Terry reading of
a reward: confidence bins against the observed accuracy, and the expected calibration error).

Formats (``--format``, detected from the fields when ``auto``):

* ``jsonl``: :mod:`mmreward.preference` (``prompt``, ``images``, ``choice``/``label``, ``category``);
  the noise-free ``truth`` is used when every item has one (``--labels truth``, the default ``auto``).
* ``imagereward``: ImageRewardDB's test file, a JSON list of ``{"prompt", "generations": [paths],
  "ranking": [ranks]}``; HPD v2's test file (``"image_path"``, ``"rank"``) is read the same way.
* ``vlrewardbench``: ``{"query", "response": [2 texts], "human_ranking": [ranks], "image",
  "query_source"}``; the candidates share the image and their text is ``query + "\\n" + response``;
  categories are VL-RewardBench's groups (general: vlfeedback, wildvision; hallucination: povid,
  rlaif-v, rlhf-v; reasoning: mathverse, mmmu-pro).
* ``mmrewardbench``: Multimodal RewardBench's ``{"Text", "Image", "Output1", "Output2", "Better",
  "Category"}``; texts as for VL-RewardBench.

Image paths are resolved against ``--images`` (default: the data file's folder).

Modes (``--mode``): ``pointwise`` scores each candidate alone; ``pairwise`` shows a judge that compares
(a ``vlm:`` reward with a pairwise template) each pair of different rank together and reads P(first
better): two images under one prompt (``judge.compare``), or one image, the query and two answers
(``judge.compare_answers``: VL-RewardBench, Multimodal RewardBench). ``--swap`` also asks with the
candidates swapped and averages ``p(a, b)`` and ``1 − p(b, a)``, cancelling a judge's position bias;
``auto`` (default) is pairwise exactly when the reward has a pairwise template.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .command import run_command, with_examples
from .errors import RewardError
from .files import read_jsonl, read_text

FORMATS = ("auto", "jsonl", "imagereward", "vlrewardbench", "mmrewardbench")
MODES = ("auto", "pointwise", "pairwise")
VLRB_GROUPS = {"vlfeedback": "general", "wildvision": "general", "povid": "hallucination", "rlaif-v": "hallucination",
               "rlhf-v": "hallucination", "mathverse": "reasoning", "mmmu-pro": "reasoning"}


@dataclass
class BenchItem:
    """``K`` candidates ``(image path, text)``, their ranks ``[K]`` (lower is better) and a category; items of
    text answers about one image also keep the ``query`` and each candidate's ``answers`` apart."""

    candidates: list[tuple[str, str]]
    ranks: list[float]
    category: str = "all"
    query: str | None = None
    answers: list[str] | None = None


def _records(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return read_jsonl(path, "benchmark file")
    try:
        data = json.loads(read_text(path, "benchmark file"))
    except json.JSONDecodeError as e:
        raise RewardError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from e
    if isinstance(data, dict):  # {"data": [...]} or {id: record}
        data = data.get("data", list(data.values()))
    return list(data)


def detect_format(rec: dict) -> str:
    if "images" in rec and "prompt" in rec:
        return "jsonl"
    if "generations" in rec or "image_path" in rec:
        return "imagereward"
    if "human_ranking" in rec:
        return "vlrewardbench"
    if "Output1" in rec and "Better" in rec:
        return "mmrewardbench"
    raise RewardError(f"unknown benchmark record with fields {sorted(rec)}; pass --format")


def load_benchmark(path: str | os.PathLike, fmt: str = "auto", images: str | None = None,
                   labels: str = "auto") -> list[BenchItem]:
    """Items of a benchmark file (see the module docstring for the formats)."""
    path = Path(path)
    if not path.is_file():
        raise RewardError(f"benchmark file {path} does not exist")
    if fmt not in FORMATS:
        raise RewardError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    root = Path(images) if images else path.parent

    def img(p: str) -> str:
        return p if os.path.isabs(p) else str(root / p)

    if fmt == "jsonl" or (fmt == "auto" and path.suffix == ".jsonl" and '"images"' in path.read_text()[:2000]):
        from .preference import read_preferences

        ex = read_preferences(path, check_images=False)
        use_truth = labels == "truth" or (labels == "auto" and all(e.truth is not None for e in ex))
        out = []
        for e in ex:
            lab = e.truth if use_truth else e.label
            out.append(BenchItem([(p, e.prompt) for p in e.images], [-v for v in lab], e.category or "all"))
        return out
    recs = _records(path)
    if not recs:
        raise RewardError(f"benchmark file {path} holds no records")
    fmt = detect_format(recs[0]) if fmt == "auto" else fmt
    out = []
    for n, r in enumerate(recs):
        try:
            if fmt == "imagereward":
                gens = r.get("generations", r.get("image_path"))
                ranks = r.get("ranking", r.get("rank"))
                out.append(BenchItem([(img(g), r["prompt"]) for g in gens], [float(x) for x in ranks],
                                     r.get("category", "all")))
            elif fmt == "vlrewardbench":
                texts = [f"{r['query']}\n{resp}" for resp in r["response"]]
                group = VLRB_GROUPS.get(str(r.get("query_source", "")).lower(), str(r.get("query_source", "all")))
                out.append(BenchItem([(img(r["image"]), t) for t in texts], [float(x) for x in r["human_ranking"]], group,
                                     r["query"], list(r["response"])))
            else:
                better = str(r["Better"]).strip()
                if better not in ("Output1", "Output2"):
                    raise RewardError(f"Better must be Output1 or Output2, got {better!r}")
                texts = [f"{r['Text']}\n{r['Output1']}", f"{r['Text']}\n{r['Output2']}"]
                out.append(BenchItem([(img(r["Image"]), t) for t in texts], [0.0, 1.0] if better == "Output1" else [1.0, 0.0],
                                     str(r.get("Category", "all")), r["Text"], [r["Output1"], r["Output2"]]))
        except (KeyError, TypeError) as e:
            raise RewardError(f"{path}: record {n} is not a {fmt} record (missing or bad field {e})") from e
        if len(out[-1].candidates) != len(out[-1].ranks) or len(out[-1].candidates) < 2:
            raise RewardError(f"{path}: record {n} needs >= 2 candidates and one rank per candidate")
    return out


@torch.no_grad()
def score_candidates(reward, items: list[BenchItem], batch: int = 32, progress: bool = True) -> list[list[float]]:
    """``reward(image, text)`` of every candidate (each distinct pair scored once)."""
    from tqdm import tqdm

    from .images import to_tensor

    uniq = list(dict.fromkeys(c for it in items for c in it.candidates))
    scores: dict[tuple[str, str], float] = {}
    for i in tqdm(range(0, len(uniq), batch), desc="scoring", disable=not progress):
        chunk = uniq[i : i + batch]
        ims = [to_tensor(p) for p, _ in chunk]
        texts = [t for _, t in chunk] if reward.needs_prompts else None
        if len({tuple(t.shape) for t in ims}) == 1:
            r = reward(torch.stack(ims).to(reward.device), texts).tolist()
        else:
            r = [reward(t[None].to(reward.device), None if texts is None else [texts[j]]).item() for j, t in enumerate(ims)]
        scores.update(zip(chunk, r, strict=True))
    return [[scores[c] for c in it.candidates] for it in items]


def ranked_pairs(items: list[BenchItem]) -> list[tuple[int, int, int]]:
    """``(item, a, b)`` for every pair ``a < b`` of different rank."""
    return [(n, a, b) for n, it in enumerate(items) for a in range(len(it.ranks)) for b in range(a + 1, len(it.ranks))
            if it.ranks[a] != it.ranks[b]]


def _ask(judge, items: list[BenchItem], asks: list[tuple[int, int, int]]) -> list[float]:
    """One judge call on ``asks`` (``(item, a, b)``) whose images share their shapes (``compare`` refuses a
    pair of two differently sized images)."""
    from .images import to_tensor

    dev = judge.device
    if judge.template.answers:
        for n, _, _ in asks:
            if items[n].answers is None:
                raise RewardError(f"item {n} has no separate query and answers; template {judge.template.name!r} "
                                  "compares text answers (VL-RewardBench or Multimodal RewardBench files)")
        images = torch.stack([to_tensor(items[n].candidates[a][0]) for n, a, _ in asks]).to(dev)
        return judge.compare_answers(images, [items[n].query for n, _, _ in asks],
                                     [items[n].answers[a] for n, a, _ in asks],
                                     [items[n].answers[b] for n, _, b in asks]).tolist()
    first = torch.stack([to_tensor(items[n].candidates[a][0]) for n, a, _ in asks]).to(dev)
    second = torch.stack([to_tensor(items[n].candidates[b][0]) for n, _, b in asks]).to(dev)
    return judge.compare(first, second, [items[n].candidates[a][1] for n, a, _ in asks]).tolist()


@torch.no_grad()
def compare_pairs(judge, items: list[BenchItem], batch: int = 8, swap: bool = False,
                  progress: bool = True) -> dict[tuple[int, int, int], float]:
    """P(candidate ``a`` better than ``b``) from a judge that compares, for every ranked pair; with ``swap``
    the mean of ``p(a, b)`` and ``1 − p(b, a)``."""
    from PIL import Image
    from tqdm import tqdm

    t = getattr(judge, "template", None)
    if t is None or t.readout != "pairwise":
        raise RewardError("pairwise mode needs a judge that compares: a vlm: reward with a pairwise template "
                          "(?template=pairwise, answers-pairwise, unifiedreward-pairwise or r1-reward)")
    pairs = ranked_pairs(items)
    asks = pairs + ([(n, b, a) for n, a, b in pairs] if swap else [])
    size: dict[str, tuple[int, int]] = {}

    def shape(n: int, a: int, b: int) -> tuple:
        paths = [items[n].candidates[i][0] for i in ((a,) if t.answers else (a, b))]
        for path in paths:
            if path not in size:
                with Image.open(path) as im:
                    size[path] = im.size
        return tuple(size[path] for path in paths)

    by_shape: dict[tuple, list[tuple[int, int, int]]] = defaultdict(list)
    for ask in asks:
        by_shape[shape(*ask)].append(ask)
    got: dict[tuple[int, int, int], float] = {}
    with tqdm(total=len(asks), desc="comparing", disable=not progress) as bar:
        for group in by_shape.values():
            for i in range(0, len(group), batch):
                chunk = group[i : i + batch]
                got.update(zip(chunk, _ask(judge, items, chunk), strict=True))
                bar.update(len(chunk))
    if not swap:
        return got
    return {(n, a, b): 0.5 * (got[(n, a, b)] + 1 - got[(n, b, a)]) for n, a, b in pairs}


def calibration(p_first: np.ndarray, first_wins: np.ndarray, bins: int = 5) -> dict:
    """Reliability of ``p_first`` = P(first candidate preferred): by confidence ``max(p, 1 − p)`` in
    ``bins`` bins over [0.5, 1], the mean confidence against the observed accuracy; ``ece`` weights the gaps
    by bin size."""
    conf = np.maximum(p_first, 1 - p_first)
    correct = np.where(p_first >= 0.5, first_wins, 1 - first_wins)
    edges = np.linspace(0.5, 1.0, bins + 1)
    rows, ece = [], 0.0
    for k in range(bins):
        m = (conf >= edges[k]) & ((conf < edges[k + 1]) if k < bins - 1 else (conf <= edges[k + 1]))
        if m.any():
            rows.append({"bin": [float(edges[k]), float(edges[k + 1])], "n": int(m.sum()),
                         "confidence": float(conf[m].mean()), "accuracy": float(correct[m].mean())})
            ece += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return {"bins": rows, "ece": float(ece)}


def evaluate(items: list[BenchItem], scores: list[list[float]] | None = None, bins: int = 5,
             pair_probs: dict[tuple[int, int, int], float] | None = None) -> dict:
    """Pairwise accuracy (all pairs of different rank; exact score ties half), per category, macro, ties,
    calibration. From ``scores`` (pointwise: P(first) = σ(r_a − r_b)) or from a judge's ``pair_probs``
    (:func:`compare_pairs`; P = 0.5 counts half)."""
    if (scores is None) == (pair_probs is None):
        raise ValueError("pass scores or pair_probs")
    per_cat: dict[str, list[float]] = defaultdict(list)
    p_first, first_wins, ties = [], [], 0
    for n, it in enumerate(items):
        k = len(it.ranks)
        for a in range(k):
            for b in range(a + 1, k):
                if it.ranks[a] == it.ranks[b]:
                    ties += 1
                    continue
                a_wins = it.ranks[a] < it.ranks[b]
                if pair_probs is None:
                    d = scores[n][a] - scores[n][b]
                    p = 1 / (1 + math.exp(-max(min(d, 50.0), -50.0)))
                else:
                    p = float(pair_probs[(n, a, b)])
                    d = p - 0.5
                per_cat[it.category].append(0.5 if d == 0 else float((d > 0) == a_wins))
                p_first.append(p)
                first_wins.append(float(a_wins))
    if not p_first:
        raise RewardError("no untied pairs to evaluate")
    allv = [v for vs in per_cat.values() for v in vs]
    cats = {c: {"accuracy": float(np.mean(v)), "pairs": len(v)} for c, v in sorted(per_cat.items())}
    return {"accuracy": float(np.mean(allv)), "pairs": len(allv), "tied_pairs": ties, "items": len(items),
            "per_category": cats, "macro_accuracy": float(np.mean([c["accuracy"] for c in cats.values()])),
            "calibration": calibration(np.array(p_first), np.array(first_wins), bins)}


def markdown(res: dict, title: str) -> str:
    lines = [f"# {title}", "", f"Pairwise accuracy **{res['accuracy']:.3f}** over {res['pairs']} pairs "
             f"({res['tied_pairs']} tied pairs left out); macro over categories {res['macro_accuracy']:.3f}.", "",
             "| category | accuracy | pairs |", "|---|---|---|"]
    lines += [f"| {c} | {v['accuracy']:.3f} | {v['pairs']} |" for c, v in res["per_category"].items()]
    lines += ["", f"Calibration (σ(r_a − r_b)), ECE {res['calibration']['ece']:.3f}:", "",
              "| confidence bin | pairs | mean confidence | accuracy |", "|---|---|---|---|"]
    lines += [f"| {b['bin'][0]:.2f}–{b['bin'][1]:.2f} | {b['n']} | {b['confidence']:.3f} | {b['accuracy']:.3f} |"
              for b in res["calibration"]["bins"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    from . import load_reward

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reward", required=True, help="reward spec (e.g. head:outputs/reward_head/model)")
    p.add_argument("--data", required=True, help="benchmark file")
    p.add_argument("--format", default="auto", choices=FORMATS)
    p.add_argument("--images", default=None, help="folder image paths are relative to (default: the data file's)")
    p.add_argument("--labels", default="auto", choices=["auto", "label", "truth"], help="jsonl: which label to score against")
    p.add_argument("--mode", default="auto", choices=MODES, help="score candidates alone, or compare pairs with a judge")
    p.add_argument("--swap", action="store_true", help="pairwise: also ask with the candidates swapped and average")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--bins", type=int, default=5)
    p.add_argument("--out", default=None, help="write the result JSON here (and a .md beside it)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    with_examples(p, "mmalign bench --reward clip:assets/shapesworld-clip --data prefs/preferences.jsonl --out out/bench.json")
    args = p.parse_args(argv)
    items = load_benchmark(args.data, args.format, args.images, args.labels)
    reward = load_reward(args.reward, device=args.device)
    template = getattr(reward, "template", None)
    pairwise = args.mode == "pairwise" or (args.mode == "auto" and template is not None and template.readout == "pairwise")
    if pairwise:
        probs = compare_pairs(reward, items, min(args.batch, 8), args.swap, not args.no_progress)
        res = evaluate(items, bins=args.bins, pair_probs=probs)
    else:
        res = evaluate(items, score_candidates(reward, items, args.batch, not args.no_progress), args.bins)
    res.update({"reward": args.reward, "data": args.data, "mode": "pairwise" if pairwise else "pointwise",
                "swap": bool(args.swap and pairwise)})
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2))
        out.with_suffix(".md").write_text(markdown(res, f"{args.reward} on {Path(args.data).name}"))
    print(markdown(res, f"{args.reward} on {args.data}"))
    return res


if __name__ == "__main__":
    sys.exit(run_command(main))
