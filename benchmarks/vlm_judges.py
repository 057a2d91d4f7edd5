"""The embedded VLM judge against the embedded CLIP, on what each is judged by.

    python benchmarks/vlm_judges.py [--judge assets/shapesworld-judge] [--clip assets/shapesworld-clip]

1. **Generated images** (the 900 hand-labelled images of ``benchmarks/audit``, five image sources): the
   judge's ``yes`` readout and the CLIP's score, each thresholded at the value that best agrees with the
   hand labels on the ``dev`` split, then agreement on the untouched ``test`` + ``test2`` splits with the hand
   labels (``unsure`` left out) and with the audited evaluator, per category. The judge at its own 0.5 too.
2. **Hard negatives on fresh ground-truth renders** (training and held-out compositions): the share of images
   whose true prompt scores above every hard negative (colour, shape, count, relation swapped), per category.
3. **Image pairs**: which of two images fits the prompt (D3PO's question), on generated (right, wrong) pairs of the
   audit set and on render pairs (the prompt's scene against a hard negative's): the judge's image-pair
   readout against the score differences of its ``yes`` readout and of the CLIP.
4. **The ShapesWorld QA set** (VL-RewardBench format, held-out compositions) through :mod:`mmreward.bench`:
   the judge pairwise (``answers-pairwise``, both orders), the judge pointwise (``answer-yes``) and the CLIP
   pointwise (scoring each answer sentence alone), per category.
5. **ReNO** on the evaluation suite's held-out prompts (``benchmarks/reno_shapes.py``) with the judge's ``yes``
   readout alone, the judge and the CLIP summed, and the CLIP alone: the evaluator's gain, the share of
   position rows showing the inverse relation, and the cost of one forward+backward pass of each reward
   (generator and decoder included) as a ratio to the CLIP's, timed in one process.

``--parts`` runs some of them; the results of the others already in the JSON are kept. Writes
``benchmarks/results/vlm_judges.{json,md}`` (ReNO's own tables and grids: ``vlm_judges_reno_<reward>.*``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from evaluator_audit import AUDIT, read_jsonl, wilson  # noqa: E402

from mmreward import load_reward  # noqa: E402
from mmreward.bench import compare_pairs, evaluate, load_benchmark, score_candidates  # noqa: E402
from mmreward.images import to_tensor  # noqa: E402
from mmreward.shapes.clip_eval import hard_negative_items  # noqa: E402
from mmreward.shapes.data import to_tensor as renders_to_tensor  # noqa: E402
from mmreward.shapes.evaluator import evaluate_image  # noqa: E402
from mmreward.shapes.prompts import CATEGORIES, hard_negative_scenes, sample_meta  # noqa: E402
from mmreward.shapes.qa import write_vlrb  # noqa: E402
from mmreward.shapes.world import render  # noqa: E402

RESULTS = Path(__file__).parent / "results"
WORK = Path("outputs/vlm_judges")
PARTS = ("audit", "hard_negatives", "image_pairs", "qa_set", "reno")


@torch.no_grad()
def scores(reward, images: torch.Tensor, prompts: list[str], batch: int = 32) -> np.ndarray:
    return np.concatenate([reward(images[i:i + batch], prompts[i:i + batch]).cpu().numpy()
                           for i in range(0, len(prompts), batch)])


def best_threshold(s: np.ndarray, truth: np.ndarray) -> float:
    """The threshold (a midpoint between sorted scores) whose ``s > t`` agrees most with ``truth``."""
    v = np.unique(s)
    cands = np.concatenate([[v[0] - 1], (v[1:] + v[:-1]) / 2, [v[-1] + 1]])
    return float(max(cands, key=lambda t: ((s > t) == truth).mean()))


def auc(s: np.ndarray, truth: np.ndarray) -> float:
    """P(a right image scores above a wrong one), ties half (nan when one class is empty)."""
    pos, neg = s[truth], s[~truth]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def audit_agreement(judge, clip) -> dict:
    items = read_jsonl(AUDIT / "items.jsonl")
    labels = {r["id"]: r for r in read_jsonl(AUDIT / "labels.jsonl")}
    images = torch.stack([to_tensor(str(AUDIT / it["file"])) for it in items])
    prompts = [it["prompt"] for it in items]
    evaluator = np.array([evaluate_image((images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8),
                                         it["meta"])["correct"] for i, it in enumerate(items)])
    label = np.array([labels[it["id"]]["label"] for it in items])
    split = np.array([it["split"] for it in items])
    tag = np.array([it["tag"] for it in items])
    raw = {"judge": scores(judge, images, prompts), "clip": scores(clip, images, prompts)}
    dev = (split == "dev") & (label != "unsure")
    test = (split != "dev")
    sure = test & (label != "unsure")  # test images with a yes/no hand label
    out = {"n_test": int(test.sum()), "unsure_test": int((test & (label == "unsure")).sum())}
    for name, s in raw.items():
        t = best_threshold(s[dev], label[dev] == "yes")
        for variant, thr in ((name, t), *((("judge@0.5", 0.5),) if name == "judge" else ())):
            verdict = s > thr
            res = {"threshold": thr}
            for against, ref, mask in (("labels", label == "yes", sure),
                                       ("evaluator", evaluator, test)):
                k, n = int((verdict[mask] == ref[mask]).sum()), int(mask.sum())
                res[against] = {"agreement": k / n, "wilson95": list(wilson(k, n)), "n": n,
                                "per_category": {c: float((verdict[mask & (tag == c)] == ref[mask & (tag == c)]).mean())
                                                 for c in CATEGORIES}}
            out[variant] = res
        out[name]["auc"] = {"overall": auc(s[sure], label[sure] == "yes"),
                            **{c: auc(s[sure & (tag == c)], label[sure & (tag == c)] == "yes") for c in CATEGORIES}}
    # the agreement of a judge that says No to every image: the base rate
    out["always_no"] = {"labels": {"agreement": float((label[sure] == "no").mean()),
                                   "per_category": {c: float((label[sure & (tag == c)] == "no").mean()) for c in CATEGORIES}},
                        "evaluator": {"agreement": float((~evaluator[test]).mean())}}
    out["evaluator_vs_labels"] = float((evaluator[sure] == (label[sure] == "yes")).mean())
    return out


def hard_negatives(judge, clip, per_category: int, seed: int) -> dict:
    out = {}
    for split in ("train", "held_out"):
        rng = np.random.default_rng(seed)
        tags = CATEGORIES if split == "train" else ("colors", "position", "color_attr")
        metas = [sample_meta(t, rng, split) for t in tags for _ in range(per_category)]
        items = hard_negative_items(metas, seed + 1)
        res = {}
        for name, reward in (("judge", judge), ("clip", clip)):
            hits = defaultdict(list)
            for img, meta, caps in items:
                s = scores(reward, renders_to_tensor(np.stack([img] * len(caps))), caps)
                hits[meta["tag"]].append(bool(s[0] > s[1:].max()))
            res[name] = {"overall": float(np.mean([h for v in hits.values() for h in v])),
                         "per_category": {c: float(np.mean(v)) for c, v in sorted(hits.items())}}
        out[split] = {**res, "images": len(items)}
    return out


@torch.no_grad()
def pick_rates(pair, judge, clip, a: torch.Tensor, b: torch.Tensor, prompts: list[str], tags: list[str]) -> dict:
    """How often each scorer prefers ``a[i]`` (the right image) over ``b[i]`` (a wrong one) for ``prompts[i]``:
    the judge's image-pair readout ``pair`` (both orders averaged: ``(p(a, b) + 1 − p(b, a)) / 2 > 0.5``), and the
    score differences of the judge's ``yes`` readout and of the CLIP (ties count half). Overall and per category."""
    p = torch.cat([pair.compare(a[i:i + 16], b[i:i + 16], prompts[i:i + 16], swap=True)
                   for i in range(0, len(prompts), 16)]).numpy()
    margins = {"judge_pairwise": p - 0.5,
               "judge_yes": scores(judge, a, prompts) - scores(judge, b, prompts),
               "clip": scores(clip, a, prompts) - scores(clip, b, prompts)}
    tags_ = np.array(tags)
    out = {"pairs": len(prompts)}
    for name, m in margins.items():
        right = (m > 0) + 0.5 * (m == 0)
        out[name] = {"overall": float(right.mean()),
                     "per_category": {c: float(right[tags_ == c].mean()) for c in sorted(set(tags))}}
    return out


def image_pairs(judge_spec: str, judge, clip, per_category: int, seed: int) -> dict:
    """The question D3PO puts to a feedback source: which of two images fits the prompt. (1) Generated images:
    every (right, wrong) pair of the audit set's test splits with the same prompt (hand labels). (2) Fresh
    renders of training compositions: the prompt's scene against the scene of one of its hard negatives."""
    items = [it for it in read_jsonl(AUDIT / "items.jsonl") if it["split"] != "dev"]
    labels = {r["id"]: r["label"] for r in read_jsonl(AUDIT / "labels.jsonl")}
    by_prompt = defaultdict(lambda: {"yes": [], "no": []})
    for it in items:
        if labels[it["id"]] in ("yes", "no"):
            by_prompt[it["prompt"]][labels[it["id"]]].append(it)
    pairs = [(r, w) for g in by_prompt.values() for r in g["yes"] for w in g["no"]]
    pair = load_reward(f"{judge_spec}?template=pairwise")
    load = {it["id"]: to_tensor(str(AUDIT / it["file"])) for pr in pairs for it in pr}
    generated = pick_rates(pair, judge, clip, torch.stack([load[r["id"]] for r, _ in pairs]),
                           torch.stack([load[w["id"]] for _, w in pairs]), [r["prompt"] for r, _ in pairs],
                           [r["tag"] for r, _ in pairs])
    rng = np.random.default_rng(seed)
    right, wrong, prompts, tags = [], [], [], []
    for tag in CATEGORIES:
        for _ in range(per_category):
            meta = sample_meta(tag, rng, "train")
            if (scenes := hard_negative_scenes(meta, rng)) is None:
                continue
            right.append(render(scenes[0]))
            wrong.append(render(scenes[1]))
            prompts.append(meta["prompt"])
            tags.append(tag)
    renders = pick_rates(pair, judge, clip, renders_to_tensor(np.stack(right)),
                         renders_to_tensor(np.stack(wrong)), prompts, tags)
    return {"generated": generated, "renders": renders}


def qa_set(judge_spec: str, clip, items_n: int, seed: int) -> dict:
    path = WORK / f"shapes_vlrb_{items_n}_{seed}" / "shapes_vlrb.json"
    if not path.is_file():
        write_vlrb(path.parent, items_n, seed, "held_out")
    items = load_benchmark(path)
    pairwise = load_reward(f"{judge_spec}?template=answers-pairwise")
    pointwise = load_reward(f"{judge_spec}?template=answer-yes")
    res = {"judge_pairwise": evaluate(items, pair_probs=compare_pairs(pairwise, items, swap=True, progress=False)),
           "judge_pointwise": evaluate(items, score_candidates(pointwise, items, progress=False))}
    answers_only = [type(it)([(c[0], a) for c, a in zip(it.candidates, it.answers, strict=True)], it.ranks, it.category)
                    for it in items]  # the CLIP reads the answer sentence (its context is 20 tokens)
    res["clip_pointwise"] = evaluate(answers_only, score_candidates(clip, answers_only, progress=False))
    return {k: {"accuracy": v["accuracy"], "pairs": v["pairs"],
                "per_category": {c: d["accuracy"] for c, d in v["per_category"].items()}} for k, v in res.items()}


def reno_specs(judge: str, clip: str) -> dict[str, str]:
    """The rewards ReNO is compared on: name → reward spec."""
    return {"judge": f"{judge}?template=yes", "judge+clip": f"{judge}?template=yes, {clip}", "clip": clip}


def reno_comparison(judge: str, clip: str, per_category: int, seeds: int, iters: int, names: list[str],
                    done: dict | None = None) -> dict:
    """ReNO's evaluator gain per reward (one ``reno_shapes`` run each, images kept under ``outputs/``, so a
    rerun only judges them again) for the rewards ``names``, keeping the other rewards of ``done`` (an earlier
    result of the same settings), and the rewards' forward+backward cost, timed in this one process."""
    import reno_shapes
    from diffusers import DiffusionPipeline

    from diffusion_align.reno import make_generator
    from mmreward.shapes import load_suite

    out: dict = {"per_category": per_category, "seeds": seeds, "iters": iters, "rewards": {}}
    if done and all(done.get(k) == out[k] for k in ("per_category", "seeds", "iters")):
        out["rewards"] = {k: v for k, v in done["rewards"].items() if k not in names}
    for name, spec in reno_specs(judge, clip).items():
        if name not in names:
            continue
        slug = name.replace("+", "_")
        r = reno_shapes.main(["--rewards", spec, "--per-category", str(per_category), "--seeds", str(seeds),
                              "--iters", str(iters), "--out", str(RESULTS / f"vlm_judges_reno_{slug}.json")])
        ev = r["evaluator"]
        out["rewards"][name] = {
            "spec": spec, "images": r["images"], "initial": ev["initial"]["overall"], "reno": ev["reno"]["overall"],
            "gain": ev["reno"]["overall"] - ev["initial"]["overall"],
            "per_category": {c: ev["reno"]["per_category"][c] - ev["initial"]["per_category"][c]
                             for c in ev["reno"]["per_category"]},
            "inverse_relation": {"initial": ev["initial"]["inverse_relation"], "reno": ev["reno"]["inverse_relation"]},
            "fixed": r["reward_hacking"]["fixed"], "broken": r["reward_hacking"]["broken"],
            "iteration_s": r["speed"]["iteration_s"], "wall_time_s": r["wall_time_s"]["reno"]}
    gen = make_generator(DiffusionPipeline.from_pretrained(reno_shapes.EMBEDDED_MODEL))
    rows = [m for m in load_suite("eval") if m["tag"] == "position"][:16]
    prompts, seeds_ = [m["prompt"] for m in rows], list(range(len(rows)))
    cost = {name: reno_shapes.forward_backward_time(gen, load_reward(spec), prompts, seeds_)
            for name, spec in reno_specs(judge, clip).items()}
    out["forward_backward_s"] = cost
    out["cost_over_clip"] = {k: v / cost["clip"] for k, v in cost.items()}
    return out


def markdown(r: dict) -> str:
    lines = ["# The embedded VLM judge against the embedded CLIP", "",
             f"Judge `{r['judge']}`, CLIP `{r['clip']}`.", ""]
    if "audit" in r:
        lines += audit_markdown(r["audit"])
    if "hard_negatives" in r:
        lines += hard_negatives_markdown(r["hard_negatives"])
    if "image_pairs" in r:
        lines += image_pairs_markdown(r["image_pairs"])
    if "qa_set" in r:
        lines += qa_markdown(r["qa_set"])
    if "reno" in r:
        lines += reno_markdown(r["reno"])
    return "\n".join(lines) + "\n"


def reno_markdown(x: dict) -> list[str]:
    rw = x["rewards"]
    lines = ["## ReNO with the judge as the reward", "",
             f"{x['per_category']} evaluation-suite prompts per category × {x['seeds']} seeds, {x['iters']} iterations; "
             "the evaluator's accuracy before and after. Cost: one forward+backward pass (generator, decoder, "
             "reward; batch 16) as a ratio to the CLIP's, in one process.", "",
             "| reward | initial | ReNO | gain | " + " | ".join(rw[next(iter(rw))]["per_category"]) +
             " | inverse relation (before → after) | fixed / broken | cost vs CLIP |",
             "|---|---|---|---|" + "---|" * len(rw[next(iter(rw))]["per_category"]) + "---|---|---|"]
    for name in [n for n in reno_specs("", "") if n in rw]:
        v = rw[name]
        inv = v["inverse_relation"]
        lines.append(f"| {name} | {v['initial']:.3f} | {v['reno']:.3f} | **{v['gain']:+.3f}** | "
                     + " | ".join(f"{d:+.3f}" for d in v["per_category"].values())
                     + f" | {inv['initial']:.3f} → {inv['reno']:.3f} | {v['fixed']} / {v['broken']} | "
                     f"{x['cost_over_clip'][name]:.2f}× |")
    return lines + [""]


def audit_markdown(a: dict) -> list[str]:
    lines = ["## Agreement on generated images (audit set, test + test2 splits)", "",
             f"{a['n_test']} images ({a['unsure_test']} labelled unsure, left out of the label agreement). Thresholds "
             "fitted on the dev split's hand labels. The evaluator itself agrees with the labels on "
             f"{a['evaluator_vs_labels']:.3f}.", "",
             "| judge | threshold | vs labels | vs evaluator | " + " | ".join(f"{c} (labels)" for c in CATEGORIES) + " |",
             "|---|---|---|---|" + "---|" * len(CATEGORIES)]
    for name in ("judge", "judge@0.5", "clip", "always_no"):
        if name not in a:
            continue
        x = a[name]
        thr = "–" if name == "always_no" else f"{x['threshold']:.3f}"
        lines.append(f"| {name} | {thr} | {x['labels']['agreement']:.3f} | {x['evaluator']['agreement']:.3f} | "
                     + " | ".join(f"{x['labels']['per_category'][c]:.3f}" for c in CATEGORIES) + " |")
    lines += ["", "`always_no` says No to every image: the base rate each agreement should be read against. Without a "
              "threshold, the share of (right, wrong) image pairs of the hand labels that each score orders right (AUC):", "",
              "| score | overall | " + " | ".join(CATEGORIES) + " |", "|---|---|" + "---|" * len(CATEGORIES)]
    lines += [f"| {name} | {a[name]['auc']['overall']:.3f} | " + " | ".join(f"{a[name]['auc'][c]:.3f}" for c in CATEGORIES)
              + " |" for name in ("judge", "clip") if "auc" in a[name]]
    return lines + [""]


def hard_negatives_markdown(hn: dict) -> list[str]:
    lines = ["## Hard-negative accuracy on fresh ground-truth renders", ""]
    for split, h in hn.items():
        cats = list(h["judge"]["per_category"])
        lines += [f"{split} compositions, {h['images']} images:", "",
                  "| model | overall | " + " | ".join(cats) + " |", "|---|---|" + "---|" * len(cats)]
        lines += [f"| {m} | {h[m]['overall']:.3f} | " + " | ".join(f"{h[m]['per_category'][c]:.3f}" for c in cats) + " |"
                  for m in ("judge", "clip")]
        lines.append("")
    return lines


def image_pairs_markdown(x: dict) -> list[str]:
    lines = ["## Which of two images fits the prompt (the question of D3PO's feedback)", "",
             "The share of (right, wrong) image pairs with the same prompt where each scorer prefers the right "
             "image: the judge's image-pair readout (`pairwise`, both orders averaged), and the score differences of "
             "the judge's `yes` readout and of the CLIP (ties count half).", ""]
    for part, title in (("generated", "Generated images (audit set, test splits, hand labels)"),
                        ("renders", "Fresh renders of training compositions: the prompt's scene against a hard negative's")):
        v = x[part]
        cats = list(v["clip"]["per_category"])
        lines += [f"{title}, {v['pairs']} pairs:", "", "| scorer | overall | " + " | ".join(cats) + " |",
                  "|---|---|" + "---|" * len(cats)]
        lines += [f"| {m} | {v[m]['overall']:.3f} | " + " | ".join(f"{v[m]['per_category'][c]:.3f}" for c in cats) + " |"
                  for m in ("judge_pairwise", "judge_yes", "clip")]
        lines.append("")
    return lines


def qa_markdown(q: dict) -> list[str]:
    cats = list(q["judge_pairwise"]["per_category"])
    lines = ["## ShapesWorld QA set (VL-RewardBench format, held-out compositions)", "",
              "| model | accuracy | " + " | ".join(cats) + " |", "|---|---|" + "---|" * len(cats)]
    lines += [f"| {m} | {v['accuracy']:.3f} | " + " | ".join(f"{v['per_category'][c]:.3f}" for c in cats) + " |"
              for m, v in q.items()]
    return lines + [""]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--judge", default="vlm:assets/shapesworld-judge")
    p.add_argument("--clip", default="clip:assets/shapesworld-clip")
    p.add_argument("--per-category", type=int, default=100, help="hard-negative images per category and split")
    p.add_argument("--qa-items", type=int, default=400)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--reno-per-category", type=int, default=17, help="ReNO prompts per category (6 categories)")
    p.add_argument("--reno-seeds", type=int, default=2)
    p.add_argument("--reno-iters", type=int, default=50)
    p.add_argument("--reno-rewards", nargs="+", default=list(reno_specs("", "")), choices=list(reno_specs("", "")),
                   help="the ReNO rewards to run now (the others' results already in the JSON are kept)")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    p.add_argument("--out", default=str(RESULTS / "vlm_judges.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.is_file() else {}
    if res.get("judge", args.judge) != args.judge or res.get("clip", args.clip) != args.clip:
        res = {}  # results of other models are not mixed in
    res.update(judge=args.judge, clip=args.clip)
    judge, clip = load_reward(f"{args.judge}?template=yes"), load_reward(args.clip)
    if "audit" in args.parts:
        res["audit"] = audit_agreement(judge, clip)
    if "hard_negatives" in args.parts:
        res["hard_negatives"] = hard_negatives(judge, clip, args.per_category, args.seed)
    if "image_pairs" in args.parts:
        res["image_pairs"] = image_pairs(args.judge, judge, clip, args.per_category, args.seed)
    if "qa_set" in args.parts:
        res["qa_set"] = qa_set(args.judge, clip, args.qa_items, args.seed)
    if "reno" in args.parts:
        res["reno"] = reno_comparison(args.judge, args.clip, args.reno_per_category, args.reno_seeds, args.reno_iters,
                                      args.reno_rewards, res.get("reno"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
