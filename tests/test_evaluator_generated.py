"""The ShapesWorld evaluator on what generated images show and ground-truth renders do not: each failure
mode found by the audit of generated images (benchmarks/audit) is drawn on purpose here."""

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from diffusion_align.feedback import evaluator_scores
from mmreward.config_file import ConfigError
from mmreward.errors import ModelLoadError
from mmreward.shapes.evaluator import detect, evaluate_image, inverse_relation
from mmreward.shapes.shape_net import (
    CLASSES,
    ShapeNet,
    class_probabilities,
    crop_square,
    load_shape_net,
    save_shape_net,
)
from mmreward.shapes.world import BACKGROUND, COLORS, Obj, Scene, render

SS = 8


def _star(cx, cy, r, inner=0.45):
    return [(cx + (r if k % 2 == 0 else inner * r) * math.cos(-math.pi / 2 + k * math.pi / 5),
             cy + (r if k % 2 == 0 else inner * r) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]


def _bowed_square(cx, cy, r, bow):
    """A square whose sides bend inwards (bow < 0) by ``bow`` x the side, as generated squares often do."""
    corners = [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    pts = []
    for i in range(4):
        (x0, y0), (x1, y1) = corners[i], corners[(i + 1) % 4]
        nx, ny = (y1 - y0) / (2 * r), -(x1 - x0) / (2 * r)
        for k in range(12):
            t = k / 12
            off = bow * 2 * r * math.sin(math.pi * t)
            pts.append((x0 + t * (x1 - x0) + off * nx, y0 + t * (y1 - y0) + off * ny))
    return pts


def draw(polygons: list[tuple[list, str]], blur: float = 0.0) -> np.ndarray:
    """A 64x64 image of filled polygons (points in 64-px units) in palette colours, optionally blurred."""
    im = Image.new("RGB", (64 * SS, 64 * SS), BACKGROUND)
    d = ImageDraw.Draw(im)
    for pts, color in polygons:
        d.polygon([(x * SS, y * SS) for x, y in pts], fill=COLORS[color])
    arr = np.asarray(im.resize((64, 64), Image.BOX)).astype(np.float32)
    if blur:
        arr = ndimage.gaussian_filter(arr, (blur, blur, 0))
    return arr.round().astype(np.uint8)


def _circle(cx, cy, r, n=48):
    return [(cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n)) for k in range(n)]


def test_touching_objects_are_counted_apart():
    # two circles that overlap by a pixel: one connected blob of pixels, two objects
    img = draw([(_circle(22, 32, 9), "red"), (_circle(39.5, 32, 9), "blue")])
    shapes = sorted((d.color, d.shape) for d in detect(img))
    assert shapes == [("blue", "circle"), ("red", "circle")]
    assert evaluate_image(img, "a photo of two circles")["correct"]
    assert evaluate_image(img, "a photo of a red circle left of a blue circle")["correct"]
    # a star touching a square
    img = draw([(_star(22, 32, 10), "yellow"), (_bowed_square(39, 32, 8, 0.0), "purple")])
    assert sorted(d.shape for d in detect(img)) == ["square", "star"]
    assert evaluate_image(img, "a photo of a yellow star and a purple square")["correct"]


@pytest.mark.parametrize("blur", [0.0, 1.0])
def test_blurred_star_stays_a_star_and_is_no_triangle(blur):
    img = draw([(_star(32, 32, 9, inner=0.55), "green")], blur=blur)
    assert [d.shape for d in detect(img)] == ["star"]
    assert evaluate_image(img, "a photo of a star")["correct"]
    for wrong in ("a photo of a triangle", "a photo of a circle"):  # the false passes seen in generated images
        assert not evaluate_image(img, wrong)["correct"]


def test_warped_square_is_a_square_not_a_circle():
    img = draw([(_bowed_square(32, 32, 10, -0.1), "orange")], blur=0.8)
    assert [d.shape for d in detect(img)] == ["square"]
    assert not evaluate_image(img, "a photo of a circle")["correct"]


@pytest.mark.parametrize("name, pts", [
    ("pentagon", [(32 + 11 * math.cos(-math.pi / 2 + 2 * math.pi * k / 5), 32 + 11 * math.sin(-math.pi / 2 + 2 * math.pi * k / 5)) for k in range(5)]),
    ("house", [(22, 44), (42, 44), (42, 28), (32, 20), (22, 28)]),
    ("crescent", _circle(32, 32, 11)[12:37] + [(32 + 6 * math.cos(a), 32 + 11 * math.sin(a)) for a in np.linspace(math.pi / 2 * 3, math.pi / 2, 20)]),
])
def test_blobs_are_unrecognised_and_satisfy_nothing(name, pts):
    img = draw([(pts, "blue")])
    (det,) = detect(img)
    assert det.shape is None, (name, det)
    for shape in ("circle", "square", "triangle", "star"):
        res = evaluate_image(img, f"a photo of a {shape}")
        assert not res["correct"]
    res = evaluate_image(img, "a photo of a star")
    assert res["reason"].startswith("star not found: object 1 unrecognised (best match ")


def test_unrecognised_object_counts_as_extra_under_strict_feedback():
    square = _bowed_square(20, 32, 8, 0.0)
    house = [(36, 44), (54, 44), (54, 30), (45, 22), (36, 30)]
    img = draw([(square, "red"), (house, "green")])
    assert evaluate_image(img, "a photo of a square")["correct"]  # GenEval ignores the extra object
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    assert evaluator_scores(x, ["a photo of a square"], "binary").item() == 1.0
    assert evaluator_scores(x, ["a photo of a square"], "strict").item() == 0.0


def test_reasons_name_the_failed_clause_and_what_was_seen():
    img = render(Scene([Obj("circle", "red", 0.3, 0.5, 0.25), Obj("square", "blue", 0.7, 0.5, 0.25)]))
    assert evaluate_image(img, "a photo of a star")["reason"] == "star not found: object 1 blue square; object 2 red circle"  # largest first
    assert evaluate_image(img, "a photo of a blue circle")["reason"] == "no blue circle: the circles are red"
    res = evaluate_image(img, "a photo of a circle right of a square")
    assert res["reason"] == "circle not right of the square: it is left of it"
    assert res["inverse"] is True
    assert evaluate_image(img, "a photo of two squares")["reason"].startswith("2 squares expected, 1 found")


def test_inverse_relation_needs_both_objects_in_the_opposite_relation():
    below = render(Scene([Obj("circle", "red", 0.5, 0.75, 0.22), Obj("triangle", "blue", 0.5, 0.25, 0.22)]))
    dets = detect(below)
    from mmreward.shapes.prompts import parse_prompt

    assert inverse_relation(parse_prompt("a photo of a circle above a triangle"), dets) is True
    assert inverse_relation(parse_prompt("a photo of a circle below a triangle"), dets) is False
    assert inverse_relation(parse_prompt("a photo of a circle left of a triangle"), dets) is False  # vertical: not inverse
    assert inverse_relation(parse_prompt("a photo of a star above a triangle"), dets) is False  # no star
    assert inverse_relation(parse_prompt("a photo of a circle"), dets) is None


def test_crop_square_keeps_the_aspect_ratio():
    cover = np.zeros((64, 64), np.float32)
    cover[20:30, 10:50] = 1  # 40 x 10
    m = crop_square(cover)
    assert m.shape == (32, 32)
    rows = np.nonzero(m.max(axis=1) > 0.5)[0]
    assert 6 <= len(rows) <= 10  # a flat bar stays flat
    assert crop_square(np.zeros((8, 8))) is None


def test_shape_net_round_trips_through_its_loader(tmp_path):
    torch.manual_seed(0)
    net = ShapeNet(width=4)
    save_shape_net(net, tmp_path / "net")
    loaded, cfg = load_shape_net(tmp_path / "net")
    x = torch.rand(3, 1, 32, 32)
    assert torch.equal(loaded(x), net.eval()(x))
    assert cfg["classes"] == list(CLASSES)
    p = class_probabilities([x[0, 0].numpy()], tmp_path / "net")
    assert p.shape == (1, 5) and abs(p.sum() - 1) < 1e-5
    with pytest.raises(ModelLoadError, match="no shape classifier"):
        load_shape_net(tmp_path / "missing")


@pytest.mark.slow
def test_shape_net_training_resumes_to_the_same_weights(tmp_path):
    from mmreward.shapes.train_shape_net import main

    common = ["--steps", "6", "--batch", "8", "--pool", "64", "--width", "4", "--ckpt-every", "2", "--threads", "1"]
    main([*common, "--out", str(tmp_path / "a"), "--work", str(tmp_path / "wa")])
    assert main([*common, "--out", str(tmp_path / "b"), "--work", str(tmp_path / "wb"), "--stop-after", "3"])["stopped"]
    with pytest.raises(ConfigError, match="pass --resume to continue it, --overwrite to replace it"):
        main([*common, "--out", str(tmp_path / "b"), "--work", str(tmp_path / "wb")])  # a rerun never restarts silently
    main([*common, "--out", str(tmp_path / "b"), "--work", str(tmp_path / "wb"), "--resume"])
    with pytest.raises(ConfigError, match="already holds a model: pass --overwrite"):
        main([*common, "--out", str(tmp_path / "b"), "--work", str(tmp_path / "wc")])
    a, _ = load_shape_net(tmp_path / "a")
    b, _ = load_shape_net(tmp_path / "b")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


@pytest.mark.parametrize("shape", ["circle", "square", "triangle", "star"])
def test_ground_truth_shapes_are_named_at_every_size(shape):
    # the world draws objects from 0.16 (counting scenes at the preference data's 0.8 scale) to 0.44 (its 1.3 scale)
    for size in np.linspace(0.16, 0.46, 11):
        for x in (0.5, 0.46):
            dets = detect(render(Scene([Obj(shape, "purple", x, 0.5, float(size))])))
            assert [(d.shape, d.color) for d in dets] == [(shape, "purple")], (shape, size, dets)


def _audit_folder(tmp_path, rows):
    """A miniature audit folder: ``rows`` of (split, scene, labeller's objects)."""
    import json

    (tmp_path / "images").mkdir()
    items, labels = [], []
    for i, (split, scene, seen) in enumerate(rows):
        file = f"images/{i:04d}.png"
        Image.fromarray(render(scene)).save(tmp_path / file)
        items.append({"id": i, "file": file, "split": split})
        labels.append({"id": i, "label": "yes", "seen": seen})
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(x) + "\n" for x in labels))
    return tmp_path


def test_people_named_objects_come_from_the_named_splits_only(tmp_path):
    from mmreward.shapes.train_shape_net import labelled_objects

    audit = _audit_folder(tmp_path, [
        ("dev", Scene([Obj("star", "red", 0.3, 0.5, 0.3)]), ["red star"]),
        ("test", Scene([Obj("square", "blue", 0.3, 0.3, 0.25), Obj("circle", "green", 0.7, 0.7, 0.25)]),
         ["blue square", "green circle"]),
        ("test2", Scene([Obj("triangle", "yellow", 0.5, 0.5, 0.3)]), ["yellow triangle"]),
        # the labeller's list does not match the objects found one to one by colour: left out
        ("dev", Scene([Obj("circle", "red", 0.5, 0.5, 0.3)]), ["red circle", "blue blob"]),
    ])
    x, y = labelled_objects(audit, "dev")
    assert x.shape == (1, 1, 32, 32) and [CLASSES[k] for k in y] == ["star"]
    _, y = labelled_objects(audit, "dev,test")
    assert sorted(CLASSES[k] for k in y) == ["circle", "square", "star"]
    _, y = labelled_objects(audit, "dev,test", fold=(1, 2))  # id % 2 == 1 (the test image) left out
    assert [CLASSES[k] for k in y] == ["star"]


def test_name_object_applies_the_confidence_threshold_and_the_blob_class():
    from mmreward.shapes.evaluator import name_object

    obj = {"color": "red", "box": (0.1, 0.1, 0.3, 0.3), "area": 40}
    d = name_object(obj, np.array([0.6, 0.1, 0.1, 0.1, 0.1]))
    assert (d.shape, d.best_shape, d.confidence) == ("circle", "circle", pytest.approx(0.6))
    d = name_object(obj, np.array([0.45, 0.1, 0.1, 0.05, 0.3]))  # circle most probable, but under 0.5
    assert d.shape is None and d.best_shape == "circle"
    assert name_object(obj, np.array([0.45, 0.1, 0.1, 0.05, 0.3]), min_confidence=0.4).shape == "circle"
    d = name_object(obj, np.array([0.2, 0.0, 0.0, 0.3, 0.5]), min_confidence=0.1)  # blob wins
    assert d.shape is None and d.best_shape == "star"


def test_category_table_keeps_only_the_categories_scored():
    from mmreward.shapes.evaluator import category_table

    col = {"per_category": {"position": 0.25}, "overall": 0.25, "held_out_compositions": 0.5}
    rows = category_table({"a": col, "b": {**col, "overall": 0.5}})
    assert rows[2] == "| position | 0.250 | 0.250 |"
    assert rows[3] == "| **overall** | **0.250** | **0.500** |" and len(rows) == 5
