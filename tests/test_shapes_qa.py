"""ShapesWorld questions and hallucinated answers, and the VL-RewardBench-format set."""

import json

import numpy as np
import pytest

from mmreward.bench import load_benchmark
from mmreward.shapes.prompts import INVERSE, POSITION_THRESHOLD, relations
from mmreward.shapes.qa import QA_CATEGORIES, describe_objects, main, question, sample_item
from mmreward.shapes.world import Obj, Scene

SCENE = Scene([Obj("circle", "red", 0.2, 0.5, 0.2), Obj("circle", "blue", 0.5, 0.2, 0.2),
               Obj("square", "green", 0.8, 0.5, 0.2)])


def test_answers_are_read_from_the_scene_and_the_wrong_one_changes_one_fact():
    rng = np.random.default_rng(0)
    count = question(Scene(SCENE.objects[:2]), "count", rng)
    assert count["question"] == "How many circles are there?"
    assert count["answer"] == "There are two circles." and count["wrong"] in ("There is one circle.",
                                                                             "There are three circles.")
    colour = question(SCENE, "colour", rng)  # the square is the only shape shown once
    assert colour["question"] == "What colour is the square?" and colour["answer"] == "The square is green."
    assert colour["wrong"].startswith("The square is ") and colour["wrong"] != colour["answer"]
    assert question(Scene(SCENE.objects[:2]), "colour", rng) is None  # no shape shown once
    two = Scene([SCENE.objects[0], SCENE.objects[2]])
    rel = question(two, "relation", rng)
    a, b = (two.objects[0], two.objects[1]) if rel["question"].startswith("Where is the circle") else two.objects[::-1]
    (truth,) = relations(a.box, b.box, threshold=2 * POSITION_THRESHOLD)
    assert rel["answer"].endswith(f"{truth} the {b.shape}.") and rel["wrong"].endswith(f"{INVERSE[truth]} the {b.shape}.")
    absent = question(SCENE, "absent", rng)
    assert absent["answer"] == "A red circle, a blue circle and a green square."
    extra = set(absent["wrong"].lower().replace(",", "").replace(".", "").split()) - set(absent["answer"].lower().split())
    assert extra & {"triangle", "star", "triangles", "stars"}  # the hallucinated object is not in the scene
    assert describe_objects([("star", "red"), ("star", "red")]) == "Two red stars."


@pytest.mark.parametrize("category", QA_CATEGORIES)
def test_every_category_is_posed_for_train_and_held_out_scenes(category):
    rng = np.random.default_rng(1)
    for split in ("train", "held_out"):
        scene, qa = sample_item(rng, category, split)
        assert qa["category"] == category and qa["answer"] != qa["wrong"] and qa["prompt"].startswith("a photo of")


def test_the_set_is_in_vl_rewardbench_format_and_loads_in_the_harness(tmp_path):
    path = main(["--out", str(tmp_path / "set"), "--items", "8", "--seed", "3"])
    recs = json.loads(path.read_text())
    assert len(recs) == 8 and {r["query_source"] for r in recs} == set(QA_CATEGORIES)
    for r in recs:
        assert set(r) >= {"id", "query", "response", "human_ranking", "image", "query_source"}
        assert sorted(r["human_ranking"]) == [0, 1] and (tmp_path / "set" / r["image"]).is_file()
    assert len({tuple(r["human_ranking"]) for r in recs}) == 2  # the right answer is not always first
    items = load_benchmark(path)
    assert [it.category for it in items] == [r["query_source"] for r in recs]
    assert items[0].answers == recs[0]["response"] and items[0].query == recs[0]["query"]
    from mmreward.errors import UserError

    with pytest.raises(UserError, match="exists"):
        main(["--out", str(tmp_path / "set"), "--items", "8"])
