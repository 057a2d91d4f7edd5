"""Agreement of the ShapesWorld evaluator with careful visual labels of generated images (the audit set
in ``benchmarks/audit/``: how it was drawn and labelled is in its README).

    python benchmarks/evaluator_audit.py [--before benchmarks/results/evaluator_audit_before.json]

Reports, for each split (``test2``: a second round drawn and labelled after the evaluator was final and
scored once; ``test`` and ``dev``: the first round's halves, ``dev`` used to develop it) and all together:
agreement overall, per category and per image source with Wilson 95% intervals, ``unsure`` labels left
out (and counted) and again counted as disagreements; the label noise measured on the double-labelled
images; every disagreement with its failure mode, read from the labeller's object list against the
evaluator's detections. Writes ``benchmarks/results/evaluator_audit.{json,md}`` and
``evaluator_audit_disagreements.png`` (the newest untouched split: image at 4x, prompt, label, evaluator
verdict).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

from PIL import Image

from mmreward.images import image_grid, text_tile
from mmreward.shapes.evaluator import evaluate_image
from mmreward.shapes.prompts import CATEGORIES

AUDIT = Path(__file__).parent / "audit"
RESULTS = Path(__file__).parent / "results"
SOURCES = ("one_step", "four_step", "teacher", "reno", "d3po")
SPLIT_ORDER = ("test2", "test", "dev")  #: newest untouched split first


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k/n`` (95% for ``z = 1.96``); ``(0, 1)`` when ``n = 0``."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def agreement(rows: list[dict]) -> dict:
    """``rows``: ``{"label": yes|no|unsure, "correct": bool}``. Agreement with ``unsure`` left out
    (``decided``) and with ``unsure`` counted as disagreement (``strict``)."""
    decided = [r for r in rows if r["label"] != "unsure"]
    k = sum((r["label"] == "yes") == r["correct"] for r in decided)
    n, n_all = len(decided), len(rows)
    lo, hi = wilson(k, n)
    slo, shi = wilson(k, n_all)
    return {"n": n_all, "unsure": n_all - n, "agree": k,
            "decided": {"n": n, "agreement": k / n if n else float("nan"), "wilson95": [lo, hi]},
            "strict": {"n": n_all, "agreement": k / n_all if n_all else float("nan"), "wilson95": [slo, shi]}}


def label_noise(labels: dict[int, dict], second: list[dict]) -> dict:
    """Agreement of a second, independent labelling (``second``) with the first (``labels`` by id)."""
    pairs = [(labels[s["id"]]["label"], s["label"]) for s in second]
    both = [(a, b) for a, b in pairs if "unsure" not in (a, b)]
    k = sum(a == b for a, b in both)
    return {"n": len(pairs), "same_label": sum(a == b for a, b in pairs) / len(pairs),
            "decided_by_both": len(both), "agreement_when_decided": k / len(both) if both else float("nan"),
            "wilson95": list(wilson(k, len(both))), "pairs": dict(Counter(f"{a}/{b}" for a, b in pairs))}


def _objects(seen: list[str]) -> Counter:
    out = Counter()
    for s in seen:
        words = s.lower().split()
        out[(words[0] if len(words) > 1 else "?", words[-1])] += 1
    return out


def failure_mode(label: dict, res: dict) -> str:
    """Why the evaluator and the label disagree, from the labeller's objects against the detections."""
    seen = _objects(label.get("seen", []))
    dets = [d for d in res["detections"] if d["shape"] is not None]
    unrec = len(res["detections"]) - len(dets)
    direction = "false pass" if res["correct"] else "false fail"
    n_seen = sum(seen.values())
    if n_seen > len(res["detections"]):
        return f"{direction}: objects merged (labeller {n_seen}, evaluator {len(res['detections'])})"
    if n_seen < len(res["detections"]):
        return f"{direction}: spurious or split object (labeller {n_seen}, evaluator {len(res['detections'])})"
    shapes_seen = Counter(s for (_, s) in seen.elements())
    shapes_det = Counter(d["shape"] for d in dets) + Counter({"blob": unrec} if unrec else {})
    if shapes_seen != shapes_det:
        if shapes_seen["blob"] > shapes_det["blob"]:
            return f"{direction}: unrecognisable blob read as a shape"
        if shapes_seen["blob"] < shapes_det["blob"]:
            return f"{direction}: a shape left unrecognised"
        wrong = sorted((shapes_det - shapes_seen).elements())
        right = sorted((shapes_seen - shapes_det).elements())
        return f"{direction}: {'/'.join(right)} read as {'/'.join(wrong)}"
    if seen != Counter((d["color"], d["shape"]) for d in dets) + Counter({("?", "blob"): unrec} if unrec else {}):
        return f"{direction}: colour"
    if label.get("tag") == "position":
        return f"{direction}: relation judged differently"
    return f"{direction}: same objects, different verdict"


def disagreement_grid(rows: list[dict]) -> Image.Image:
    tiles = []
    for r in rows:
        im = Image.open(AUDIT / r["file"]).convert("RGB").resize((128, 128), Image.NEAREST)
        tile = Image.new("RGB", (192, 128), (255, 255, 255))
        tile.paste(im, (32, 0))
        tiles += [text_tile(f"#{r['id']:04d} {r['prompt'].removeprefix('a photo of ')}"), tile,
                  text_tile(f"label {r['label']}: {r.get('label_reason') or ', '.join(r['seen'])}"),
                  text_tile(f"evaluator {'yes' if r['correct'] else 'no'}: {r['reason'] or 'all clauses met'}")]
    return image_grid(tiles, cols=8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", default=str(AUDIT / "labels.jsonl"))
    p.add_argument("--second", default=str(AUDIT / "labels_second.jsonl"))
    p.add_argument("--out", default=str(RESULTS / "evaluator_audit.json"))
    p.add_argument("--before", default=None, help="an earlier result of this script (e.g. the old evaluator) to compare with")
    args = p.parse_args()

    items = {it["id"]: it for it in read_jsonl(AUDIT / "items.jsonl")}
    labels = {lb["id"]: lb for lb in read_jsonl(Path(args.labels))}
    missing = sorted(set(items) - set(labels))
    if missing:
        raise SystemExit(f"{args.labels}: no label for {len(missing)} items (first: {missing[:5]})")
    rows = []
    for i, it in items.items():
        res = evaluate_image(Image.open(AUDIT / it["file"]), it["meta"])
        lb = labels[i]
        row = {**{k: it[k] for k in ("id", "file", "prompt", "tag", "source", "split")}, "label": lb["label"],
               "label_reason": lb.get("reason", ""), "seen": lb.get("seen", []), "correct": res["correct"],
               "reason": res["reason"]}
        if lb["label"] != "unsure" and (lb["label"] == "yes") != res["correct"]:
            row["failure_mode"] = failure_mode({**lb, "tag": it["tag"]}, res)
        rows.append(row)

    present = {r["split"] for r in rows}
    splits = [s for s in SPLIT_ORDER if s in present] + sorted(present - set(SPLIT_ORDER)) + ["all"]
    result = {"items": len(rows), "labels": Counter(r["label"] for r in rows), "splits": {}}
    for split in splits:
        sel = [r for r in rows if split == "all" or r["split"] == split]
        result["splits"][split] = {
            "overall": agreement(sel),
            "per_category": {t: agreement([r for r in sel if r["tag"] == t]) for t in CATEGORIES},
            "per_source": {s: agreement([r for r in sel if r["source"] == s]) for s in SOURCES},
            "failure_modes": dict(Counter(r["failure_mode"] for r in sel if "failure_mode" in r).most_common()),
        }
    second_path = Path(args.second)
    if second_path.is_file():
        second = read_jsonl(second_path)
        result["label_noise"] = label_noise(labels, second)
        result["label_noise"]["per_split"] = {
            sp: label_noise(labels, [s for s in second if items[s["id"]]["split"] == sp])
            for sp in splits[:-1] if any(items[s["id"]]["split"] == sp for s in second)}
    result["disagreements"] = [r for r in rows if "failure_mode" in r]
    if args.before:
        before = json.loads(Path(args.before).read_text())
        result["before"] = {s: {"overall": before["splits"][s]["overall"],
                                "per_category": before["splits"][s]["per_category"],
                                "per_source": before["splits"][s]["per_source"]} for s in splits if s in before["splits"]}

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    test_dis = [r for r in result["disagreements"] if r["split"] == splits[0]]
    if test_dis:
        disagreement_grid(test_dis[:48]).save(out.with_name(out.stem + "_disagreements.png"))
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def _cell(a: dict, strict: bool = False) -> str:
    v = a["strict" if strict else "decided"]
    lo, hi = v["wilson95"]
    return f"{v['agreement']:.3f} [{lo:.3f}, {hi:.3f}]"


def markdown(r: dict) -> str:
    lines = ["## ShapesWorld evaluator against visual labels of generated images", "",
             f"{r['items']} generated images (labels: " + ", ".join(f"{k} {v}" for k, v in r["labels"].items()) + "). "
             "Agreement with Wilson 95% intervals; *decided* leaves `unsure` labels out, *strict* counts them as "
             "disagreements. The evaluator was developed on `dev`; `test` was held out then, and `test2` was drawn "
             "and labelled after it was final and scored once.", ""]
    for split in r["splits"]:
        s = r["splits"][split]
        b = r.get("before", {}).get(split)
        head = "| group | n | unsure | agreement (decided) | agreement (strict) |" + (" before (decided) |" if b else "")
        lines += [f"### {split}", "", head, "|---|---|---|---|---|" + ("---|" if b else "")]
        groups = [("**overall**", s["overall"], b and b["overall"])]
        groups += [(t, s["per_category"][t], b and b["per_category"][t]) for t in CATEGORIES]
        groups += [(f"source: {k}", s["per_source"][k], b and b["per_source"][k]) for k in SOURCES]
        for name, a, old in groups:
            lines.append(f"| {name} | {a['n']} | {a['unsure']} | {_cell(a)} | {_cell(a, True)} |" + (f" {_cell(old)} |" if b else ""))
        lines += ["", "| failure mode | images |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in s["failure_modes"].items()] or ["| (none) | 0 |"]
        lines.append("")
    if "label_noise" in r:
        n = r["label_noise"]
        lo, hi = n["wilson95"]
        lines += [f"Label noise: {n['n']} images labelled twice, independently: the same label on {n['same_label']:.3f}; "
                  f"where both decided ({n['decided_by_both']}), agreement {n['agreement_when_decided']:.3f} "
                  f"[{lo:.3f}, {hi:.3f}]. Pairs (first/second): "
                  + ", ".join(f"{k} {v}" for k, v in sorted(n["pairs"].items())) + "."]
        lines += [f"- {sp}: {v['n']} images, the same label on {v['same_label']:.3f}; where both decided ({v['decided_by_both']}), "
                  f"{v['agreement_when_decided']:.3f}." for sp, v in n.get("per_split", {}).items()]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
