"""The label folder of D3PO's human feedback: its image groups, each annotator's labels, and the pairs
they imply. Pure Python (no torch), shared by the terminal labeller, the web page and training.

A folder written by ``python -m diffusion_align.label sample`` holds

- ``groups.jsonl``: one line per group, the images sharing one prompt and one ``x_T``:
  ``{"group": g, "prompt": str, "index": [i, ...], "images": ["images/00012.png", ...]}`` (``index``: the
  rows of ``rollouts.safetensors``);
- ``pairs.jsonl``: ``{"pair": p, "a": i, "b": j, "prompt": str, "image": str}`` for every pair within a group;
- ``labels_<annotator>.jsonl``: the annotator's labels. The web page writes one line per labelled group, in
  the order they were labelled, ``{"group": g, "scores": [s_0, ..., s_{k-1}]}``: the higher score is
  preferred, equal scores are a tie and −1 marks a broken image (the D3PO reference's convention). The
  terminal labeller appends pair lines ``{"pair": p, "chosen": 0 | 1 | null}``. Both kinds may share a
  file; the last label an annotator gave a pair is the one that counts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from mmreward.config_file import ConfigError
from mmreward.files import numbered_jsonl, read_jsonl, write_text_atomic

BROKEN = -1
ANNOTATOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")


def check_annotator(name: str) -> str:
    """``name`` if it can name a labels file (letters, digits, ``_`` and ``-``, at most 40), else ConfigError."""
    if not isinstance(name, str) or not ANNOTATOR.fullmatch(name):
        raise ConfigError(f"annotator {name!r}: use 1 to 40 letters, digits, '_' or '-' (starting with a letter "
                          "or digit)")
    return name


def labels_path(folder: Path, annotator: str | None) -> Path:
    return Path(folder) / (f"labels_{check_annotator(annotator)}.jsonl" if annotator else "labels.jsonl")


def read_groups(folder: str | Path) -> list[dict]:
    """The groups of ``folder/groups.jsonl``, numbered 0, 1, ... in order."""
    path = Path(folder) / "groups.jsonl"
    if not path.is_file():
        raise ConfigError(f"{folder}: no groups.jsonl (sample the folder with `python -m diffusion_align.label "
                          "sample`, which writes it)")
    groups = read_jsonl(path, "groups file", keys=("group", "prompt", "index", "images"))
    for n, g in enumerate(groups):
        if g["group"] != n or len(g["index"]) != len(g["images"]) or len(g["images"]) < 2:
            raise ConfigError(f"{path}, line {n + 1}: expected group {n} with as many images as indices (at least 2)")
    return groups


def scores_for(k: int, best: int | None = None, broken: Sequence[int] = (), ranking: Sequence[int] | None = None
               ) -> list[int]:
    """Per-image scores of a group of ``k`` images from one label.

    ``ranking``: the images that are not broken, best first (score ``len(ranking) - position``); else ``best``:
    that image scores 1 and the others 0; neither: a tie (all 0). Images in ``broken`` score −1.
    """
    broken = sorted(set(broken))
    if any(not isinstance(i, int) or not 0 <= i < k for i in [*broken, *([best] if best is not None else []),
                                                               *(ranking or [])]):
        raise ConfigError(f"an image index is outside 0..{k - 1}")
    scores = [0] * k
    if ranking is not None:
        if sorted(ranking) != [i for i in range(k) if i not in broken]:
            raise ConfigError(f"ranking {list(ranking)}: rank every image that is not broken, once")
        for pos, i in enumerate(ranking):
            scores[i] = len(ranking) - pos
    elif best is not None:
        if best in broken:
            raise ConfigError(f"image {best} is marked broken; it cannot be the best")
        scores[best] = 1
    for i in broken:
        scores[i] = BROKEN
    return scores


def verdict(score_a: float, score_b: float) -> int | None:
    """The pair label of two scores: 0 (a preferred), 1 (b preferred) or None (tie)."""
    return 0 if score_a > score_b else 1 if score_b > score_a else None


def group_pairs_map(folder: Path, groups: list[dict]) -> dict[int, list[tuple[int, int, int]]]:
    """Group → its pairs ``(pair id, position of a, position of b)``, from ``pairs.jsonl``."""
    where = {i: (g["group"], pos) for g in groups for pos, i in enumerate(g["index"])}
    out: dict[int, list[tuple[int, int, int]]] = {g["group"]: [] for g in groups}
    for p in read_jsonl(Path(folder) / "pairs.jsonl", "pairs file", keys=("pair", "a", "b")):
        (ga, pa), (gb, pb) = where[p["a"]], where[p["b"]]
        if ga != gb:
            raise ConfigError(f"{folder}/pairs.jsonl: pair {p['pair']} spans groups {ga} and {gb}")
        out[ga].append((p["pair"], pa, pb))
    return out


class LabelFile:
    """One annotator's labels of a folder's groups, kept in memory and rewritten atomically on each change.

    Pair lines (from the terminal labeller) are kept as they are, before the group lines.
    """

    def __init__(self, folder: str | Path, annotator: str, sizes: Sequence[int], fresh: bool = False):
        """``sizes``: the number of images of each group; ``fresh``: start empty instead of reading the file."""
        self.path = labels_path(Path(folder), annotator)
        self.sizes = list(sizes)
        n_groups = len(self.sizes)
        self.pair_lines: list[dict] = []
        self.groups: dict[int, list[float]] = {}  # insertion order = the order of labelling
        if self.path.is_file() and not fresh:
            for n, row in numbered_jsonl(self.path, "labels file"):
                if "group" in row:
                    g = row["group"]
                    if not isinstance(g, int) or not 0 <= g < n_groups or not valid_scores(row.get("scores"), self.sizes[g]):
                        raise ConfigError(f"{self.path}, line {n}: expected a group of 0..{n_groups - 1} and one "
                                          "score per image")
                    self.groups.pop(g, None)
                    self.groups[g] = row["scores"]
                elif "pair" in row and "chosen" in row:
                    self.pair_lines.append(row)
                else:
                    raise ConfigError(f"{self.path}, line {n}: expected a 'group' and 'scores' or a 'pair' and 'chosen'")

    def set(self, group: int, scores: list[float]) -> None:
        """Label ``group`` (a changed mind replaces the earlier label and moves it to the end)."""
        self.groups.pop(group, None)
        self.groups[group] = scores
        self.save()

    def undo(self) -> int | None:
        """Take back the latest label; returns its group (None when there is none)."""
        if not self.groups:
            return None
        group = next(reversed(self.groups))
        del self.groups[group]
        self.save()
        return group

    def save(self) -> None:
        lines = [json.dumps(r) for r in self.pair_lines]
        lines += [json.dumps({"group": g, "scores": s}) for g, s in self.groups.items()]
        write_text_atomic(self.path, "".join(x + "\n" for x in lines))


def valid_scores(scores, k: int) -> bool:
    return (isinstance(scores, list) and len(scores) == k
            and all(isinstance(s, (int, float)) and not isinstance(s, bool) and s == s for s in scores))


def pair_votes(folder: str | Path) -> dict[str, dict[int, int | None]]:
    """Labels file name → pair id → that annotator's last label of the pair (0, 1 or None for a tie)."""
    return _read_labels(folder)[0]


def _read_labels(folder: str | Path) -> tuple[dict[str, dict[int, int | None]], dict[str, int]]:
    """:func:`pair_votes`, and labels file name → the number of groups it labels, in one read of the files."""
    folder = Path(folder)
    files = sorted(folder.glob("labels*.jsonl"))
    pair_ids = {p["pair"] for p in read_jsonl(folder / "pairs.jsonl", "pairs file", keys=("pair",))}
    by_group = None
    out: dict[str, dict[int, int | None]] = {}
    n_groups: dict[str, int] = {}
    for f in files:
        votes: dict[int, int | None] = {}
        labelled: set = set()
        for n, r in numbered_jsonl(f, "labels file"):
            if "group" in r:
                labelled.add(r["group"])
                if by_group is None:
                    groups = read_groups(folder)
                    by_group = group_pairs_map(folder, groups)
                    sizes = [len(g["images"]) for g in groups]
                if r["group"] not in by_group or not valid_scores(r.get("scores"), sizes[r["group"]]):
                    raise ConfigError(f"{f}, line {n}: group {r['group']!r} is not in groups.jsonl or its scores do "
                                      "not match its images")
                for pid, a, b in by_group[r["group"]]:
                    votes[pid] = verdict(r["scores"][a], r["scores"][b])
            elif "pair" in r and "chosen" in r:
                if r["pair"] not in pair_ids:
                    raise ConfigError(f"{f}, line {n}: pair {r['pair']} is not in pairs.jsonl")
                votes[r["pair"]] = None if r["chosen"] is None else int(r["chosen"])
            else:
                raise ConfigError(f"{f}, line {n}: expected a 'pair' and 'chosen' or a 'group' and 'scores'")
        out[f.name] = votes
        n_groups[f.name] = len(labelled)
    return out, n_groups


def annotator_of(file_name: str) -> str:
    stem = Path(file_name).stem
    return stem[len("labels_"):] if stem.startswith("labels_") else "(unnamed)"


def summary(folder: str | Path) -> dict:
    """Labels per annotator, and agreement between each two annotators on the pairs both labelled: the
    share with the same verdict (a, b or tie) and Cohen's kappa over those three outcomes."""
    by_file, n_groups = _read_labels(folder)
    votes = {annotator_of(f): v for f, v in by_file.items()}
    n_pairs = len(read_jsonl(Path(folder) / "pairs.jsonl", "pairs file"))
    per = {annotator_of(f): {"pairs": len(v), "preferences": sum(x is not None for x in v.values()),
                             "ties": sum(x is None for x in v.values()), "groups": n_groups[f]}
           for f, v in by_file.items()}
    pairs = []
    names = sorted(votes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(set(votes[a]) & set(votes[b]))
            if not shared:
                continue
            x, y = [votes[a][p] for p in shared], [votes[b][p] for p in shared]
            pairs.append({"annotators": [a, b], "shared_pairs": len(shared),
                          "agreement": sum(u == v for u, v in zip(x, y)) / len(shared), "kappa": kappa(x, y)})
    return {"pairs": n_pairs, "annotators": per, "agreement": pairs}


def kappa(x: list, y: list) -> float | None:
    """Cohen's kappa of two label lists (None when chance agreement is 1, i.e. both always say the same)."""
    n = len(x)
    cats = set(x) | set(y)
    po = sum(u == v for u, v in zip(x, y)) / n
    pe = sum((x.count(c) / n) * (y.count(c) / n) for c in cats)
    return None if pe == 1 else (po - pe) / (1 - pe)


def export_reference(folder: str | Path, annotator: str) -> list[list[float]]:
    """The annotator's labels as the D3PO reference's per-annotator JSON: one list of per-image scores per
    group, in the order of ``groups.jsonl`` (the reference's sample file order). The reference truncates
    every annotator's list to the shortest, so only the groups before the first unlabelled one go out."""
    groups = read_groups(folder)
    f = LabelFile(folder, annotator, [len(g["images"]) for g in groups])
    out = []
    for g in range(len(groups)):
        if g not in f.groups:
            break
        out.append(f.groups[g])
    return out


def import_reference(folder: str | Path, annotator: str, data, overwrite: bool = False) -> int:
    """Write the reference's per-annotator JSON ``data`` (group ``i`` = its ``i``-th list) as the annotator's
    labels; returns the number of groups. Refuses an existing labels file unless ``overwrite``."""
    groups = read_groups(folder)
    path = labels_path(Path(folder), annotator)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; pass --overwrite to replace it")
    if not isinstance(data, list) or len(data) > len(groups):
        raise ConfigError(f"expected a JSON list of at most {len(groups)} score lists (one per group)")
    for i, scores in enumerate(data):
        if not valid_scores(scores, len(groups[i]["images"])):
            raise ConfigError(f"item {i}: expected {len(groups[i]['images'])} numeric scores (group {i}'s images)")
    f = LabelFile(folder, annotator, [len(g["images"]) for g in groups], fresh=True)
    f.groups = {i: list(s) for i, s in enumerate(data)}
    f.save()
    return len(data)


def synthetic_folder(out: str | Path, n_groups: int, k: int = 4, size: int = 64, seed: int = 0) -> Path:
    """A label folder of ``n_groups`` groups of ``k`` random-colour PNG images (no model, no trajectories):
    for trying the page and for load tests. Labels on it cannot train (there is no ``rollouts.safetensors``)."""
    import random

    from PIL import Image

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    groups, pairs = [], []
    for g in range(n_groups):
        index = list(range(g * k, (g + 1) * k))
        for i in index:
            colour = tuple(rng.randrange(256) for _ in range(3))
            Image.new("RGB", (size, size), colour).save(out / f"images/{i:05d}.png")
        prompt = f"synthetic group {g}"
        groups.append({"group": g, "prompt": prompt, "index": index, "images": [f"images/{i:05d}.png" for i in index]})
        pairs += [{"pair": len(pairs) + n, "a": a, "b": b, "prompt": prompt, "image": None}
                  for n, (a, b) in enumerate((a, b) for a in index for b in index if a < b)]
    write_text_atomic(out / "groups.jsonl", "".join(json.dumps(g) + "\n" for g in groups))
    write_text_atomic(out / "pairs.jsonl", "".join(json.dumps(p) + "\n" for p in pairs))
    return out
