"""Preference data and the pairwise (Bradley–Terry) loss that trained reward models learn from.

One example per JSONL line::

    {"prompt": "a red circle", "images": ["a.png", "b.png"], "choice": 0}      # image 0 preferred
    {"prompt": "a red circle", "images": ["a.png", "b.png"], "choice": null}   # a tie
    {"prompt": "...", "images": ["a.png", "b.png", "c.png"], "label": [0.5, 0.5, 0]}  # soft label

Image paths are relative to the JSONL file (or absolute). ``choice`` picks the preferred image (``null``
or ``"tie"``: all images equally good); ``label`` gives a probability per image instead. Optional fields:
``category`` (per-category accuracy) and ``truth`` (the noise-free choice of a synthetic example).

The loss is PickScore's / ImageReward's: the cross-entropy between the label and the softmax of the
rewards of one example's images, i.e. ``−log σ(r_w − r_l)`` for a pair, and ``log 2`` at best for a tie
scored ``0.5/0.5``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import RewardError
from .files import numbered_jsonl

TIE = None


@dataclass
class PreferenceExample:
    """A prompt, ``K >= 2`` images and a label ``[K]`` (probabilities that each image is the preferred one)."""

    prompt: str
    images: list[str]
    label: list[float]
    category: str | None = None
    truth: list[float] | None = None  # noise-free label (synthetic data)

    @property
    def is_tie(self) -> bool:
        return max(self.label) - min(self.label) < 1e-9

    @property
    def choice(self) -> int | None:
        """Index of the preferred image, ``None`` for a tie or a soft label with no single winner."""
        top = max(self.label)
        winners = [i for i, v in enumerate(self.label) if v == top]
        return winners[0] if len(winners) == 1 else None


def label_from_choice(choice, k: int, where: str = "") -> list[float]:
    """``[k]`` one-hot label for ``choice`` (an int), uniform for a tie (``None`` / ``"tie"``)."""
    if choice is None or choice == "tie":
        return [1.0 / k] * k
    if isinstance(choice, bool) or not isinstance(choice, int) or not 0 <= choice < k:
        raise RewardError(f"{where}choice must be an image index in [0, {k}) or null for a tie, got {choice!r}")
    return [1.0 if i == choice else 0.0 for i in range(k)]


def _label(rec: dict, k: int, where: str) -> list[float]:
    if "label" in rec:
        lab = rec["label"]
        if not isinstance(lab, list) or len(lab) != k or not all(isinstance(v, (int, float)) for v in lab):
            raise RewardError(f"{where}label must be a list of {k} numbers (one per image), got {lab!r}")
        if any(v < 0 or not math.isfinite(v) for v in lab) or abs(sum(lab) - 1) > 1e-6:
            raise RewardError(f"{where}label must be probabilities summing to 1, got {lab!r}")
        return [float(v) for v in lab]
    if "choice" not in rec:
        raise RewardError(f"{where}needs 'choice' (index of the preferred image, null for a tie) or 'label'")
    return label_from_choice(rec["choice"], k, where)


def read_preferences(path: str | os.PathLike, check_images: bool = True) -> list[PreferenceExample]:
    """Examples of a preference JSONL file; image paths resolved against the file's folder.
    Raises :class:`RewardError` naming the line of a malformed record or a missing image."""
    path = Path(path)
    if not path.is_file():
        raise RewardError(f"preference file {path} does not exist")
    out = []
    for n, rec in numbered_jsonl(path, "preference file"):
        where = f"{path}, line {n}: "
        prompt, images = rec.get("prompt"), rec.get("images")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RewardError(f"{where}'prompt' must be a non-empty string")
        if not isinstance(images, list) or len(images) < 2 or not all(isinstance(p, str) for p in images):
            raise RewardError(f"{where}'images' must list at least two image paths")
        resolved = [str(p if os.path.isabs(p) else path.parent / p) for p in images]
        if check_images:
            for p in resolved:
                if not os.path.isfile(p):
                    raise RewardError(f"{where}image {p} does not exist")
        truth = rec.get("truth", "absent")
        out.append(PreferenceExample(
            prompt=prompt, images=resolved, label=_label(rec, len(images), where), category=rec.get("category"),
            truth=None if truth == "absent" else label_from_choice(truth, len(images), where + "truth: ")))
    if not out:
        raise RewardError(f"preference file {path} holds no examples")
    return out


def write_preferences(path: str | os.PathLike, examples: Iterable[PreferenceExample]) -> Path:
    """Write examples as JSONL (image paths relative to the file's folder when inside it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for ex in examples:
        rel = [os.path.relpath(p, path.parent) if Path(p).resolve().is_relative_to(path.parent.resolve()) else p
               for p in ex.images]
        rec = {"prompt": ex.prompt, "images": rel}
        if ex.is_tie or ex.choice is not None and ex.label[ex.choice] == 1.0:
            rec["choice"] = ex.choice
        else:
            rec["label"] = ex.label
        if ex.category is not None:
            rec["category"] = ex.category
        if ex.truth is not None:
            truth = PreferenceExample(ex.prompt, ex.images, ex.truth)
            rec["truth"] = truth.choice
        lines.append(json.dumps(rec))
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def preference_loss(rewards: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy between ``label`` ``[B,K]`` and ``softmax(rewards [B,K])``, averaged over examples
    (weighted by ``weight`` ``[B]`` when given). For a pair: ``−log σ(r_w − r_l)``; a 0.5/0.5 tie pulls
    the two rewards together."""
    if rewards.shape != label.shape or rewards.ndim != 2:
        raise RewardError(f"rewards {tuple(rewards.shape)} and label {tuple(label.shape)} must both be [B, K]")
    per = -(label * F.log_softmax(rewards.float(), dim=-1)).sum(-1)
    if weight is None:
        return per.mean()
    return (per * weight).sum() / weight.sum()


def pairwise_accuracy(rewards: torch.Tensor, label: torch.Tensor, tie_margin: float = 0.0) -> dict[str, float]:
    """Accuracy of rewards ``[B,2]`` against labels ``[B,2]``. Non-tied examples: correct when the
    preferred image has the higher reward (an exact reward tie counts half). Tied examples are reported
    apart (``tie_accuracy``: the share predicted as ties, ``|r_0 − r_1| <= tie_margin``) and do not enter
    ``accuracy``, as in ImageReward's and HPSv2's evaluation. Returns ``{accuracy, n, ties, tie_accuracy}``."""
    if rewards.shape != label.shape or rewards.ndim != 2 or rewards.shape[1] != 2:
        raise RewardError(f"pairwise accuracy needs rewards and labels of shape [B, 2], got {tuple(rewards.shape)}")
    tie = (label[:, 0] - label[:, 1]).abs() < 1e-9
    diff = rewards[:, 0] - rewards[:, 1]
    want = torch.sign(label[:, 0] - label[:, 1])
    got = torch.where(diff == 0, torch.full_like(diff, 0.5), (torch.sign(diff) == want).float())
    n = int((~tie).sum())
    return {"accuracy": float(got[~tie].mean()) if n else float("nan"), "n": n, "ties": int(tie.sum()),
            "tie_accuracy": float((diff[tie].abs() <= tie_margin).float().mean()) if tie.any() else float("nan")}
