"""Judge templates as data: what a generative VLM judge is asked and how its answer becomes a number.

The shipped templates are in ``templates.json`` beside this file (``yes``, ``vqascore``, ``q-align``,
``rating``, ``unifiedreward``, ``unifiedreward-2.0``, ``pairwise``, ``unifiedreward-pairwise``,
``answers-pairwise``, ``r1-reward``); a user template is a JSON file holding one object with the same keys:

* ``readout``: ``yes`` (P(first token of ``answer``)), ``rating`` (softmax over the first tokens of
  ``levels``, then the ``weights``-weighted mean), ``text`` (generate, then ``score_pattern``'s first group,
  or the mean of ``aspect_pattern``'s ``(name, value)`` matches) or ``pairwise`` (``choices``: P(first)
  from the softmax over two tokens; else generate and look up ``verdicts`` by substring or by
  ``verdict_pattern``'s group, ``fallback_pattern`` when that finds nothing);
* ``text``: the user message with ``{prompt}`` (and ``{question}``, ``{answer1}``, ``{answer2}`` when
  ``answers`` is true: two text answers about one image); ``images``: how many images the message shows
  (1, or 2 for a pairwise comparison of images); ``prefix``: the start of the assistant's reply (Q-Align's
  "The quality of the image is"); ``max_new_tokens`` for the generating readouts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import RewardSpecError
from ..files import read_text

READOUTS = ("yes", "rating", "text", "pairwise")
SHIPPED = Path(__file__).with_name("templates.json")


@dataclass(frozen=True)
class Template:
    readout: str
    text: str
    name: str = "custom"
    about: str = ""
    images: int = 1
    answers: bool = False
    prefix: str = ""
    answer: str = "Yes"
    levels: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    score_pattern: str | None = None
    aspect_pattern: str | None = None
    choices: tuple[str, ...] = ()
    verdicts: dict[str, float] = field(default_factory=dict)
    verdict_pattern: str | None = None
    fallback_pattern: str | None = None
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        where = f"judge template {self.name!r}"
        if self.readout not in READOUTS:
            raise RewardSpecError(f"{where}: readout must be one of {READOUTS}, got {self.readout!r}")
        if self.images not in (1, 2) or (self.answers and self.images != 1):
            raise RewardSpecError(f"{where}: images must be 1, or 2 for comparing images (answers need 1)")
        if self.readout == "rating" and (not self.levels or len(self.levels) != len(self.weights)):
            raise RewardSpecError(f"{where}: a rating readout needs levels and as many weights")
        if self.readout == "text" and not (self.score_pattern or self.aspect_pattern):
            raise RewardSpecError(f"{where}: a text readout needs score_pattern or aspect_pattern")
        if self.readout == "pairwise":
            if self.images == 1 and not self.answers:
                raise RewardSpecError(f"{where}: a pairwise readout compares 2 images or 2 answers (answers: true)")
            if self.choices and len(self.choices) != 2:
                raise RewardSpecError(f"{where}: choices must name 2 tokens (first candidate, second)")
            if not self.choices and not self.verdicts:
                raise RewardSpecError(f"{where}: a pairwise readout needs choices (logits) or verdicts (text)")
        elif self.images != 1 or self.answers:
            raise RewardSpecError(f"{where}: only a pairwise readout shows 2 images or 2 answers")
        for key in ("score_pattern", "aspect_pattern", "verdict_pattern", "fallback_pattern"):
            pattern = getattr(self, key)
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise RewardSpecError(f"{where}: {key} is not a regular expression: {e}") from None
        needed = ("{question}", "{answer1}", "{answer2}") if self.answers else ("{prompt}",)
        if self.answers and not all(k in self.text for k in needed):
            raise RewardSpecError(f"{where}: a template with answers needs {', '.join(needed)} in its text")

    def message(self, prompt: str = "", question: str = "", answer1: str = "", answer2: str = "") -> str:
        """The user message's text for one item."""
        return (self.text.replace("{prompt}", prompt).replace("{question}", question)
                .replace("{answer1}", answer1).replace("{answer2}", answer2))


def _from_dict(data: dict, name: str, where: str) -> Template:
    known = {f.name for f in fields(Template)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RewardSpecError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    data = {k: tuple(v) if k in ("levels", "weights", "choices") else v for k, v in data.items()}
    try:
        return Template(**{"name": name, **data})
    except TypeError as e:
        raise RewardSpecError(f"{where}: {e}") from None


def shipped_templates() -> dict[str, Template]:
    data = json.loads(SHIPPED.read_text())
    return {k: _from_dict(v, k, f"{SHIPPED.name}:{k}") for k, v in data.items()}


DEFAULT_FOR = {"yes": "yes", "rating": "rating", "text": "unifiedreward", "pairwise": "pairwise"}


def load_template(name_or_file: str | None = None, readout: str | None = None) -> Template:
    """A shipped template by name, or one from a JSON file; None: the default template of ``readout``."""
    if name_or_file is None:
        if readout not in DEFAULT_FOR:
            raise RewardSpecError(f"readout must be one of {READOUTS}, got {readout!r}")
        name_or_file = DEFAULT_FOR[readout]
    shipped = shipped_templates()
    if name_or_file in shipped:
        template = shipped[name_or_file]
    else:
        path = Path(name_or_file).expanduser()
        if not path.is_file():
            raise RewardSpecError(f"judge template {name_or_file!r} is neither a shipped template "
                                  f"({', '.join(shipped)}) nor a JSON file")
        try:
            data = json.loads(read_text(path, "judge template"))
        except json.JSONDecodeError as e:
            raise RewardSpecError(f"{path}: line {e.lineno}: not JSON: {e.msg}") from None
        if not isinstance(data, dict):
            raise RewardSpecError(f"{path}: a judge template is a JSON object")
        template = _from_dict(data, path.stem, str(path))
    if readout is not None and template.readout != readout:
        raise RewardSpecError(f"judge template {template.name!r} has readout {template.readout!r}, not {readout!r}")
    return template
