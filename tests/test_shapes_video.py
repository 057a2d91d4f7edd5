"""ShapesWorld video: ground-truth videos score 1 on all three scores (per-frame, temporal consistency,
motion), and hard negatives (wrong direction, an object vanishing midway, a colour flip in one frame, a jump)
fail exactly the score they should."""

from dataclasses import replace

import numpy as np
import pytest

from mmreward.shapes.prompts import CATEGORIES, parse_prompt, sample_meta
from mmreward.shapes.suites import load_suite
from mmreward.shapes.video import (
    can_move,
    content_meta,
    evaluate_video,
    parse_video_prompt,
    render_video,
    sample_video,
    sample_video_scenes,
    with_motion,
)
from mmreward.shapes.world import Scene


def test_prompts_with_a_motion_phrase_parse_back():
    meta = with_motion(parse_prompt("a photo of a red circle"), "left")
    assert meta["prompt"] == "a photo of a red circle moving left"
    assert parse_video_prompt(meta["prompt"]) == meta
    assert content_meta(meta)["prompt"] == "a photo of a red circle" and "motion" not in content_meta(meta)
    assert parse_video_prompt("a photo of two squares") == parse_prompt("a photo of two squares")
    with pytest.raises(ValueError, match="one object"):
        parse_video_prompt("a photo of a circle and a star moving up")
    with pytest.raises(ValueError, match="not in the ShapesWorld grammar"):
        parse_video_prompt("a photo of a dog moving left")


@pytest.mark.parametrize("frames", [8, 16])
def test_ground_truth_videos_score_one_on_every_score(frames):
    rng = np.random.default_rng(0)
    metas = [sample_meta(tag, rng, "any") for tag in CATEGORIES for _ in range(2)]
    metas += [with_motion(sample_meta(tag, rng, "any"), d) for tag in ("single_object", "colors")
              for d in ("left", "right", "up", "down")]
    for meta in metas:
        video = sample_video(meta, rng, frames=frames)
        assert video.shape == (frames, 64, 64, 3) and video.dtype == np.uint8
        res = evaluate_video(video, meta["prompt"])
        assert res["per_frame"] == 1.0 and res["consistent"] and res["pair_consistency"] == 1.0, (meta["prompt"], res["reason"])
        assert res["motion"] is (True if "motion" in meta else None), (meta["prompt"], res["reason"])


def _moving(prompt: str, seed: int = 0) -> tuple[dict, list[Scene]]:
    meta = parse_video_prompt(prompt)
    return meta, sample_video_scenes(meta, np.random.default_rng(seed))


def test_a_wrong_direction_fails_only_the_motion_score():
    meta, scenes = _moving("a photo of a red circle moving left")
    res = evaluate_video(render_video(scenes[::-1]), meta)  # the same frames backwards: it moves right
    assert res["per_frame"] == 1.0 and res["consistent"] and res["motion"] is False and "moves -" in res["reason"]


def test_an_object_vanishing_midway_fails_consistency_and_those_frames():
    meta, scenes = _moving("a photo of a square moving down")
    gone = scenes[:4] + [Scene([]) for _ in scenes[4:]]
    res = evaluate_video(render_video(gone), meta)
    assert not res["consistent"] and res["per_frame"] == 0.5 and res["motion"] is False
    assert res["frames_correct"] == [True] * 4 + [False] * 4


def test_a_colour_flip_in_one_frame_fails_consistency_and_that_frame():
    meta, scenes = _moving("a photo of a blue star moving right")
    flipped = list(scenes)
    flipped[3] = Scene([replace(o, color="yellow") for o in scenes[3].objects])
    res = evaluate_video(render_video(flipped), meta)
    assert not res["consistent"] and res["per_frame"] == 7 / 8 and res["frames_correct"][3] is False
    assert res["pair_consistency"] == pytest.approx(5 / 7)  # the pairs 2-3 and 3-4 break
    assert res["motion"] is True  # first and last frames still show the blue star moving right


def test_a_jump_fails_only_consistency():
    meta, scenes = _moving("a photo of a circle left of a square", seed=3)
    jumped = list(scenes)
    # both objects jump together (the relation still holds), a third of the frame down and back
    dy = 0.3 if all(o.y + o.size / 2 + 0.3 < 0.98 for o in scenes[4].objects) else -0.3
    jumped[4] = Scene([replace(o, y=o.y + dy) for o in scenes[4].objects])
    res = evaluate_video(render_video(jumped), meta)
    assert res["per_frame"] == 1.0 and not res["consistent"] and res["pair_consistency"] == pytest.approx(5 / 7) and "jumps" in res["reason"] and res["motion"] is None


def test_the_video_evaluation_suite_is_balanced_and_parses():
    rows = load_suite("video_eval")
    assert len(rows) == 216 and {r["tag"] for r in rows} == set(CATEGORIES)
    moving = [r for r in rows if "motion" in r]
    assert len(moving) == sum(can_move(r) for r in rows) > 60
    assert {r["motion"] for r in moving} == {"left", "right", "up", "down"}
    assert sum(r["held_out"] for r in rows) > 40
    for r in rows[:40]:
        assert parse_video_prompt(r["prompt"])["include"] == r["include"]
