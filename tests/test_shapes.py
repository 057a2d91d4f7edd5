"""ShapesWorld: grammar, suites, and the evaluator on ground truth and on deliberately wrong images."""

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from mmreward.errors import UserError
from mmreward.shapes import (
    CATEGORIES,
    Scene,
    evaluate,
    evaluate_image,
    load_suite,
    parse_prompt,
    render,
    sample_scene,
)
from mmreward.shapes.__main__ import main as shapes_cli
from mmreward.shapes.prompts import (
    HELD_OUT_PAIRS,
    all_metas,
    hard_negatives,
    is_held_out,
    mentions_held_out,
    relations,
    sample_meta,
)
from mmreward.shapes.world import COLORS, SHAPES


def test_grammar_round_trips_every_prompt():
    for tag in CATEGORIES:
        for meta in all_metas(tag):
            assert parse_prompt(meta["prompt"]) == meta
    with pytest.raises(ValueError, match="not in the ShapesWorld grammar"):
        parse_prompt("a photo of a dog")


def test_suites_are_balanced_and_hold_out_compositions():
    ev = load_suite("eval")
    assert len(ev) >= 400
    counts = {t: sum(m["tag"] == t for m in ev) for t in CATEGORIES}
    assert len(set(counts.values())) == 1, counts
    held = [m for m in ev if m["held_out"]]
    assert {m["tag"] for m in held} == {"colors", "position", "color_attr"}
    train = load_suite("train")
    assert not any(is_held_out(m) for m in train)
    assert not {m["prompt"] for m in held} & {m["prompt"] for m in train}
    # the training sampler never renders a held-out colour-shape pair, even on unnamed colours
    rng = np.random.default_rng(0)
    for _ in range(300):
        m = sample_meta(CATEGORIES[int(rng.integers(6))], rng, "train")
        for o in sample_scene(m, rng, allow_held_out=False).objects:
            assert (o.color, o.shape) not in HELD_OUT_PAIRS


def test_sentences_naming_held_out_compositions_are_found():
    for tag in CATEGORIES:  # on every prompt of the grammar, the text check agrees with the metadata's
        for meta in all_metas(tag):
            assert mentions_held_out(meta["prompt"]) == is_held_out(meta), meta["prompt"]
    assert mentions_held_out("The star is red.") and mentions_held_out("Two red stars and a blue circle.")
    assert mentions_held_out("The circle is above the triangle.")  # an answer, not a prompt
    assert not mentions_held_out("The circle is below the triangle.") and not mentions_held_out("The star is blue.")


def test_renderer_is_antialiased_and_sized():
    img = render(Scene([]), 32)
    assert img.shape == (32, 32, 3) and (img == 240).all()
    rng = np.random.default_rng(0)
    img = render(sample_scene(parse_prompt("a photo of a red circle"), rng), 64)
    red = np.array(COLORS["red"])
    between = (np.abs(img.astype(int) - red).sum(-1) > 30) & (np.abs(img.astype(int) - 240).sum(-1) > 30)
    assert between.sum() > 10  # edge pixels blend object and background


def _gt(n_per_prompt=1, seed=0):
    suite = load_suite("eval")
    rng = np.random.default_rng(seed)
    metas = [m for m in suite for _ in range(n_per_prompt)]
    return [render(sample_scene(m, rng)) for m in metas], metas


@pytest.mark.slow
def test_evaluator_on_ground_truth_renders():
    images, metas = _gt()
    result = evaluate(images, metas)
    assert result["overall"] >= 0.99, result["per_category"]
    assert min(result["per_category"].values()) >= 0.97


def _wrong(meta, rng, kind):
    scene = sample_scene(meta, rng)
    objs = list(scene.objects)
    if kind == "colour":
        o = objs[0]
        objs[0] = replace(o, color=next(c for c in COLORS if c != o.color))
    elif kind == "shape":
        o = objs[0]
        objs[0] = replace(o, shape=next(s for s in SHAPES if s != o.shape))
    elif kind == "count_minus":
        objs = objs[:-1]
    elif kind == "mirror":  # flips left/right (and swaps x for above/below scenes: transpose)
        objs = [replace(o, x=1 - o.x) for o in objs]
    elif kind == "flip":
        objs = [replace(o, y=1 - o.y) for o in objs]
    return render(Scene(objs))


@pytest.mark.parametrize(
    "prompt, kind",
    [
        ("a photo of a red circle", "colour"),
        ("a photo of a blue star and a yellow triangle", "colour"),
        ("a photo of a circle", "shape"),
        ("a photo of a square and a star", "shape"),
        ("a photo of three triangles", "count_minus"),
        ("a photo of two stars", "count_minus"),
        ("a photo of a circle left of a square", "mirror"),
        ("a photo of a star right of a triangle", "mirror"),
        ("a photo of a square above a circle", "flip"),
        ("a photo of a triangle below a star", "flip"),
    ],
)
def test_evaluator_rejects_wrong_images(prompt, kind):
    meta = parse_prompt(prompt)
    rng = np.random.default_rng(1)
    for _ in range(5):
        assert evaluate_image(render(sample_scene(meta, rng)), meta)["correct"]
        assert not evaluate_image(_wrong(meta, rng, kind), meta)["correct"]


def test_counting_rejects_extra_objects_and_colour_swaps():
    rng = np.random.default_rng(2)
    two = sample_scene(parse_prompt("a photo of three circles"), rng)
    assert not evaluate_image(render(two), "a photo of two circles")["correct"]  # exclude clause
    swapped = sample_scene(parse_prompt("a photo of a red circle and a blue square"), rng)
    assert evaluate_image(render(swapped), "a photo of a red circle and a blue square")["correct"]
    assert not evaluate_image(render(swapped), "a photo of a blue circle and a red square")["correct"]


def test_relations_follow_genevals_rule():
    a, b = (0.1, 0.4, 0.3, 0.6), (0.6, 0.4, 0.8, 0.6)
    assert relations(a, b) == {"left of"} and relations(b, a) == {"right of"}
    assert relations((0.4, 0.1, 0.6, 0.3), (0.4, 0.6, 0.6, 0.8)) == {"above"}
    assert relations((0.4, 0.4, 0.6, 0.6), (0.42, 0.42, 0.62, 0.62)) == set()  # within threshold
    # a clear diagonal counts as both directions (each share 0.65 > 0.5), as in GenEval
    assert relations((0.1, 0.1, 0.3, 0.3), (0.6, 0.6, 0.8, 0.8)) == {"left of", "above"}


def test_hard_negatives_are_false_for_the_scene():
    rng = np.random.default_rng(3)
    for tag in CATEGORIES:
        for _ in range(10):
            meta = sample_meta(tag, rng, "any")
            img = render(sample_scene(meta, rng))
            assert evaluate_image(img, meta)["correct"]
            for neg in hard_negatives(meta, rng):
                assert not evaluate_image(img, neg)["correct"], (meta["prompt"], neg["prompt"])


def test_cli_render_then_evaluate(tmp_path):
    suite = tmp_path / "suite.jsonl"
    suite.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["a photo of two squares", "a photo of a red star"]))
    shapes_cli(["render", "--prompts", str(suite), "--out", str(tmp_path / "imgs"), "--seeds", "2", "--quiet"])
    # corrupt one image: paint it blank
    Image.new("RGB", (64, 64), (240, 240, 240)).save(tmp_path / "imgs" / "00001_1.png")
    shapes_cli(["evaluate", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "r.json"), "--quiet"])
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["per_category"] == {"counting": 1.0, "colors": 0.5}
    assert res["overall"] == 0.75 and len(res["per_image"]) == 4
    assert [r["correct"] for r in res["per_image"]] == [True, True, True, False]
    with pytest.raises(UserError, match="no prompts.jsonl"):
        shapes_cli(["evaluate", "--images", str(tmp_path), "--out", str(tmp_path / "x.json")])
