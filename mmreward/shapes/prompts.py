"""ShapesWorld prompt grammar in GenEval's six categories, with GenEval-style metadata.

Each prompt comes with metadata in GenEval's format::

    {"tag": "position", "prompt": "a photo of a circle left of a square",
     "include": [{"class": "square", "count": 1},
                 {"class": "circle", "count": 1, "position": ["left of", 0]}]}

``include`` clauses are ANDed (at least ``count`` objects of ``class``, of ``color`` if given, in
``position`` relative to the objects matched by an earlier clause); ``exclude`` clauses are ORed
(fewer than ``count`` objects of ``class``). Held-out colour–shape pairs and relations never occur
in the training distribution, so the evaluation suite measures compositional generalisation.
"""

from __future__ import annotations

import re

import numpy as np

from .world import COLORS, RELATIONS, SHAPES, Scene, place

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

#: colour–shape pairs never rendered or captioned in training (6 of 24)
HELD_OUT_PAIRS = frozenset(
    {("red", "star"), ("blue", "triangle"), ("green", "circle"), ("yellow", "square"), ("purple", "circle"), ("orange", "star")}
)
#: ordered relations (A, rel, B) never captioned in training (nor their inverses (B, inverse rel, A))
HELD_OUT_RELATIONS = frozenset(
    {("circle", "above", "triangle"), ("star", "left of", "square"), ("square", "below", "star"), ("triangle", "right of", "circle")}
)


def _held_out_relation(a: str, rel: str, b: str) -> bool:
    return (a, rel, b) in HELD_OUT_RELATIONS or (b, INVERSE[rel], a) in HELD_OUT_RELATIONS


def is_held_out(meta: dict) -> bool:
    """Whether a prompt mentions a held-out colour–shape pair or relation."""
    inc = meta["include"]
    if any((c.get("color"), c["class"]) in HELD_OUT_PAIRS for c in inc):
        return True
    for c in inc:
        if "position" in c:
            rel, idx = c["position"]
            if _held_out_relation(c["class"], rel, inc[idx]["class"]):
                return True
    return False


_S, _C, _R = "|".join(SHAPES), "|".join(COLORS), "|".join(RELATIONS)
_PAIR_TEXT = re.compile(rf"\b(?:(?P<c1>{_C}) (?P<s1>{_S})s?|the (?P<s2>{_S}) is (?P<c2>{_C}))\b")
_RELATION_TEXT = re.compile(rf"\b(?P<a>{_S})s? (?:is )?(?P<rel>{_R}) (?:the|an?|one|two|three|four)(?: (?:{_C}))? (?P<b>{_S})")


def mentions_held_out(text: str) -> bool:
    """Whether a sentence (a prompt, a question or an answer) names a held-out colour–shape pair ('a red
    star', 'the star is red') or relation ('the circle is above the triangle')."""
    text = text.lower()
    for m in _PAIR_TEXT.finditer(text):
        if (m["c1"] or m["c2"], m["s1"] or m["s2"]) in HELD_OUT_PAIRS:
            return True
    return any(_held_out_relation(m["a"], m["rel"], m["b"]) for m in _RELATION_TEXT.finditer(text))


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _np(c: dict) -> str:
    """Noun phrase of one include clause: 'a red circle', 'three squares'."""
    noun = c["class"] if c["count"] == 1 else c["class"] + "s"
    adj = f"{c['color']} " if "color" in c else ""
    if c["count"] == 1 and "number" not in c:
        return _a(adj + noun)
    return f"{NUMBERS[c['count']]} {adj}{noun}"


def prompt_text(meta: dict) -> str:
    """The sentence for GenEval-style metadata."""
    inc = meta["include"]
    tag = meta["tag"]
    if tag == "position":
        b, a = inc
        return f"a photo of {_np(a)} {a['position'][0]} {_np(b)}"
    if tag == "counting":
        return f"a photo of {_np({**inc[0], 'number': True})}"
    return "a photo of " + " and ".join(_np(c) for c in inc)


def make_meta(tag: str, clauses: list[dict]) -> dict:
    meta = {"tag": tag, "include": clauses}
    if tag == "counting":
        meta["exclude"] = [{"class": clauses[0]["class"], "count": clauses[0]["count"] + 1}]
    meta["prompt"] = prompt_text(meta)
    return meta


def sample_meta(tag: str, rng: np.random.Generator, split: str = "train") -> dict:
    """A random prompt of category ``tag``. ``split="train"`` avoids held-out pairs and relations;
    ``split="held_out"`` forces one; ``split="any"`` samples freely."""
    if tag not in CATEGORIES:
        raise ValueError(f"unknown category {tag!r}; known: {CATEGORIES}")
    colors = list(COLORS)
    for _ in range(1000):
        s = [str(x) for x in rng.choice(SHAPES, size=2, replace=False)]
        c = [str(x) for x in rng.choice(colors, size=2, replace=False)]
        if tag == "single_object":
            meta = make_meta(tag, [{"class": s[0], "count": 1}])
        elif tag == "two_object":
            meta = make_meta(tag, [{"class": s[0], "count": 1}, {"class": s[1], "count": 1}])
        elif tag == "counting":
            meta = make_meta(tag, [{"class": s[0], "count": int(rng.integers(1, 5))}])
        elif tag == "colors":
            meta = make_meta(tag, [{"class": s[0], "count": 1, "color": c[0]}])
        elif tag == "position":
            rel = str(rng.choice(RELATIONS))
            meta = make_meta(tag, [{"class": s[1], "count": 1}, {"class": s[0], "count": 1, "position": [rel, 0]}])
        else:
            meta = make_meta(tag, [{"class": s[0], "count": 1, "color": c[0]}, {"class": s[1], "count": 1, "color": c[1]}])
        held = is_held_out(meta)
        if split == "any" or (split == "train") != held:
            return meta
    raise RuntimeError(f"could not sample a {split} prompt for {tag}")


def all_metas(tag: str) -> list[dict]:
    """Every prompt of category ``tag`` (4 single objects ... 360 colour attributions)."""
    pairs = [(a, b) for a in SHAPES for b in SHAPES if a != b]
    cpairs = [(c, d) for c in COLORS for d in COLORS if c != d]
    if tag == "single_object":
        return [make_meta(tag, [{"class": s, "count": 1}]) for s in SHAPES]
    if tag == "two_object":
        return [make_meta(tag, [{"class": a, "count": 1}, {"class": b, "count": 1}]) for a, b in pairs]
    if tag == "counting":
        return [make_meta(tag, [{"class": s, "count": n}]) for s in SHAPES for n in NUMBERS]
    if tag == "colors":
        return [make_meta(tag, [{"class": s, "count": 1, "color": c}]) for s in SHAPES for c in COLORS]
    if tag == "position":
        return [
            make_meta(tag, [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [r, 0]}])
            for a, b in pairs
            for r in RELATIONS
        ]
    if tag == "color_attr":
        return [
            make_meta(tag, [{"class": a, "count": 1, "color": c}, {"class": b, "count": 1, "color": d}])
            for a, b in pairs
            for c, d in cpairs
        ]
    raise ValueError(f"unknown category {tag!r}; known: {CATEGORIES}")


# ----------------------------------------------------------------------------------------------
# Relations (GenEval's rule) and scene sampling
# ----------------------------------------------------------------------------------------------
POSITION_THRESHOLD = 0.1


def relations(box_a, box_b, threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of A to B from boxes ``(x0, y0, x1, y1)``, as GenEval: centre offset shrunk by
    ``threshold * (dim_a + dim_b)``; a direction counts when its share of the offset exceeds 0.5."""
    a, b = np.asarray(box_a, float), np.asarray(box_b, float)
    ca, cb = (a[:2] + a[2:]) / 2, (b[:2] + b[2:]) / 2
    dims = (a[2:] - a[:2]) + (b[2:] - b[:2])
    off = ca - cb
    revised = np.maximum(np.abs(off) - threshold * dims, 0) * np.sign(off)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(off)
    out = set()
    if dx < -0.5:
        out.add("left of")
    if dx > 0.5:
        out.add("right of")
    if dy < -0.5:
        out.add("above")
    if dy > 0.5:
        out.add("below")
    return out


def _color_for(shape: str, rng: np.random.Generator, allow_held_out: bool) -> str:
    options = [c for c in COLORS if allow_held_out or (c, shape) not in HELD_OUT_PAIRS]
    return str(rng.choice(options))


def sample_scene(meta: dict, rng: np.random.Generator, allow_held_out: bool = True, size_scale: float = 1.0) -> Scene:
    """A scene that satisfies ``meta`` exactly (the mentioned objects and nothing else); ``size_scale``
    multiplies the range object sizes are drawn from."""
    inc = meta["include"]
    n_total = sum(c["count"] for c in inc)
    size_range = tuple(size_scale * s for s in ((0.22, 0.34) if n_total <= 2 else (0.2, 0.26)))
    for _ in range(500):
        items = [
            (c["class"], c.get("color") or _color_for(c["class"], rng, allow_held_out)) for c in inc for _ in range(c["count"])
        ]
        objs = place(rng, items, size_range)
        if objs is None:
            continue
        ok = True
        for i, c in enumerate(inc):
            if "position" in c:
                rel, j = c["position"]
                start_i, start_j = sum(x["count"] for x in inc[:i]), sum(x["count"] for x in inc[:j])
                # hold with a doubled threshold, so ground truth is never a borderline case
                ok &= rel in relations(objs[start_i].box, objs[start_j].box, threshold=2 * POSITION_THRESHOLD)
        if ok:
            return Scene(objs)
    raise RuntimeError(f"could not place a scene for {meta['prompt']!r}")


def counterfactual(meta: dict) -> dict | None:
    """The same objects with the relation inverted (position) or the colours swapped (colour
    attribution); ``None`` for other categories. False for every scene that satisfies ``meta``."""
    tag, inc = meta["tag"], meta["include"]
    if tag == "position":
        return make_meta(tag, [inc[0], {**inc[1], "position": [INVERSE[inc[1]["position"][0]], 0]}])
    if tag == "color_attr":
        a, b = inc
        return make_meta(tag, [{**a, "color": b["color"]}, {**b, "color": a["color"]}])
    return None


def hard_negatives(meta: dict, rng: np.random.Generator) -> list[dict]:
    """Prompts false for every scene satisfying ``meta``: colour, shape, count or relation swapped."""
    tag, inc = meta["tag"], meta["include"]
    out = []
    if tag == "counting":
        n = inc[0]["count"]
        for m in (n - 1, n + 1):
            if 1 <= m <= 4:
                out.append(make_meta(tag, [{**inc[0], "count": m}]))
    if (cf := counterfactual(meta)) is not None:
        out.append(cf)
    if tag in ("colors", "color_attr"):
        i = int(rng.integers(len(inc)))
        used = {c.get("color") for c in inc}
        new = str(rng.choice([c for c in COLORS if c not in used]))
        out.append(make_meta(tag, [{**c, "color": new} if k == i else c for k, c in enumerate(inc)]))
    # shape swap: replace one mentioned shape by an unmentioned one
    used = {c["class"] for c in inc}
    i = int(rng.integers(len(inc)))
    new = str(rng.choice([s for s in SHAPES if s not in used]))
    out.append(make_meta(tag, [{**c, "class": new} if k == i else c for k, c in enumerate(inc)]))
    return out


# ----------------------------------------------------------------------------------------------
# Parsing prompts back to metadata (the evaluator reads plain prompts)
# ----------------------------------------------------------------------------------------------
_WORD = {v: k for k, v in NUMBERS.items()}
_SHAPE = "|".join(SHAPES)
_COLOR = "|".join(COLORS)
_REL = "|".join(RELATIONS)
_NP = rf"(?:an? |(?P<{{n}}num>one|two|three|four) )(?:(?P<{{n}}col>{_COLOR}) )?(?P<{{n}}shape>{_SHAPE})s?"


def hard_negative_scenes(meta: dict, rng: np.random.Generator) -> tuple[Scene, Scene] | None:
    """A scene of ``meta`` and a scene of one of its hard negatives, training compositions only (None when
    every hard negative is held out): the right and the wrong image of an image pair."""
    negs = [n for n in hard_negatives(meta, rng) if not is_held_out(n)]
    if not negs:
        return None
    scene = sample_scene(meta, rng, allow_held_out=False)
    return scene, sample_scene(negs[int(rng.integers(len(negs)))], rng, allow_held_out=False)


def _clause(m: re.Match, p: str) -> dict:
    c = {"class": m[p + "shape"], "count": _WORD[m[p + "num"]] if m[p + "num"] else 1}
    if m[p + "col"]:
        c["color"] = m[p + "col"]
    return c


def parse_prompt(prompt: str) -> dict:
    """Inverse of :func:`prompt_text` for every prompt of the grammar; raises ``ValueError`` otherwise."""
    text = " ".join(prompt.strip().lower().rstrip(".").split())
    a, b = _NP.format(n="a"), _NP.format(n="b")
    if m := re.fullmatch(rf"a photo of {a} (?P<rel>{_REL}) {b}", text):
        meta = make_meta("position", [_clause(m, "b"), {**_clause(m, "a"), "position": [m["rel"], 0]}])
    elif m := re.fullmatch(rf"a photo of {a} and {b}", text):
        ca, cb = _clause(m, "a"), _clause(m, "b")
        meta = make_meta("color_attr" if "color" in ca or "color" in cb else "two_object", [ca, cb])
    elif m := re.fullmatch(rf"a photo of {a}", text):
        c = _clause(m, "a")
        tag = "counting" if m["anum"] else "colors" if "color" in c else "single_object"
        meta = make_meta(tag, [c])
    else:
        raise ValueError(f"prompt is not in the ShapesWorld grammar: {prompt!r}")
    return meta
