"""Committed ShapesWorld prompt suites: a training sample and the held-out evaluation suite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputFileError
from ..files import numbered_jsonl
from .prompts import CATEGORIES, all_metas, is_held_out, sample_meta

SUITE_DIR = Path(__file__).parent / "suites"
#: categories whose prompts can mention held-out colour–shape pairs or relations
COMPOSITIONAL = ("colors", "position", "color_attr")


def _take(rng: np.random.Generator, pool: list[dict], n: int) -> list[dict]:
    """``n`` prompts from ``pool``: without repetition while possible, then cycling evenly."""
    order = [pool[i] for i in rng.permutation(len(pool))]
    return [order[i % len(order)] for i in range(n)]


def build_eval_suite(per_category: int = 72, seed: int = 2024) -> list[dict]:
    """Balanced evaluation prompts. Small categories repeat prompts evenly (each row is scored with
    its own seeds); half of each compositional category uses held-out pairs or relations."""
    rng = np.random.default_rng(seed)
    out = []
    for tag in CATEGORIES:
        pool = all_metas(tag)
        if tag in COMPOSITIONAL:
            held = [m for m in pool if is_held_out(m)]
            seen = [m for m in pool if not is_held_out(m)]
            rows = _take(rng, held, per_category // 2) + _take(rng, seen, per_category - per_category // 2)
        else:
            rows = _take(rng, pool, per_category)
        out.extend({**m, "held_out": is_held_out(m)} for m in rows)
    return out


def build_train_suite(n: int = 3000, seed: int = 7) -> list[dict]:
    """A sample of the training distribution (no held-out pairs or relations), balanced over categories."""
    rng = np.random.default_rng(seed)
    return [sample_meta(CATEGORIES[i % len(CATEGORIES)], rng, "train") for i in range(n)]


def load_suite(name: str) -> list[dict]:
    """``"eval"``, ``"train"`` or ``"video_eval"``, or a path to a JSONL file of metadata (or of ``{"prompt": ...}`` lines)."""
    from .prompts import parse_prompt

    path = SUITE_DIR / f"{name}.jsonl" if name in ("eval", "train", "video_eval") else Path(name)
    if not path.is_file():
        raise InputFileError(f"prompt suite not found: {path} (a JSONL file, or a suite name: eval, train)")
    out = []
    for n, r in numbered_jsonl(path, "prompt suite", keys=("prompt",)):
        if "include" in r:
            out.append(r)
            continue
        try:
            out.append({**parse_prompt(r["prompt"]), **r})
        except ValueError as e:
            raise InputFileError(f"{path}, line {n}: {e}") from e
    return out


def build_video_eval_suite() -> list[dict]:
    """The video evaluation suite: every second row of the image evaluation suite (36 per category, the same
    share of held-out compositions), the rows of one object with a motion phrase, the four directions in turn."""
    from .video import DIRECTIONS, can_move, with_motion

    rows, turn = [], 0
    for m in build_eval_suite()[::2]:
        if can_move(m):
            m = {**with_motion(m, list(DIRECTIONS)[turn % len(DIRECTIONS)]), "held_out": m["held_out"]}
            turn += 1
        rows.append(m)
    return rows


def write_suites() -> None:
    SUITE_DIR.mkdir(exist_ok=True)
    for name, rows in (("eval", build_eval_suite()), ("train", build_train_suite()),
                       ("video_eval", build_video_eval_suite())):
        (SUITE_DIR / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    write_suites()
