"""ShapesWorld's dense conditions: the rendered segmentation and edge maps, the palette image, and the
segmentation read back from pixels (exact on ground-truth renders up to their anti-aliased rims)."""

import numpy as np
import pytest

from mmreward.shapes import CATEGORIES, Obj, Scene, render, sample_meta, sample_scene
from mmreward.shapes.conditions import (
    IGNORE,
    PALETTE,
    SEG_CLASSES,
    boundaries,
    edge_map,
    from_palette,
    palette_image,
    read_segmentation,
    segmentation,
)


def test_segmentation_and_edges_of_a_known_scene():
    scene = Scene([Obj("square", "red", 0.3, 0.3, 0.3), Obj("circle", "blue", 0.72, 0.7, 0.3)])
    seg = segmentation(scene)
    assert seg.shape == (64, 64) and seg.dtype == np.uint8
    assert seg[19, 19] == SEG_CLASSES.index("square") and seg[45, 46] == SEG_CLASSES.index("circle")
    assert seg[0, 63] == seg[63, 0] == 0
    # the square covers (0.3 * 64)^2 pixels, the circle pi (0.15 * 64)^2
    assert abs((seg == SEG_CLASSES.index("square")).sum() - 0.3**2 * 64**2) < 0.04 * 0.3**2 * 64**2
    assert abs((seg == SEG_CLASSES.index("circle")).sum() - np.pi * (0.15 * 64) ** 2) < 0.05 * np.pi * (0.15 * 64) ** 2
    edges = edge_map(scene)
    assert edges.dtype == np.float32 and 0 <= edges.min() and edges.max() <= 1
    assert edges[19, 19] == 0 and edges[0, 0] == 0  # inside the square, far background
    assert edges[19, 10] > 0.5 or edges[19, 9] > 0.5  # the square's left side at x = 0.15 * 64 = 9.6
    assert edges[19, 5] == 0


def test_palette_image_round_trip():
    seg = np.random.default_rng(0).integers(0, len(SEG_CLASSES), (16, 16)).astype(np.uint8)
    img = palette_image(seg)
    assert img.shape == (16, 16, 3) and (img[seg == 0] == PALETTE[0]).all()
    assert np.array_equal(from_palette(img), seg)


@pytest.mark.parametrize("tag", CATEGORIES)
def test_the_segmentation_read_from_pixels_matches_the_render(tag):
    rng = np.random.default_rng(1)
    agree, interior = [], []
    for _ in range(8):
        scene = sample_scene(sample_meta(tag, rng), rng)
        truth, read = segmentation(scene), read_segmentation(render(scene))
        agree.append((truth == read).mean())
        # away from the rims (pixels whose 3x3 neighbourhood has one class) the read is exact
        from scipy import ndimage

        flat = ndimage.maximum_filter(truth, 3) == ndimage.minimum_filter(truth, 3)
        interior.append((truth[flat] == read[flat]).mean())
    assert np.mean(agree) > 0.97 and min(interior) > 0.995


def test_unrecognised_objects_are_ignored():
    img = render(Scene([Obj("circle", "green", 0.3, 0.5, 0.3)])).copy()
    img[10:13, 40:62] = (220, 40, 40)  # a thin red bar: no shape of the world
    seg = read_segmentation(img)
    assert (seg[11, 42:60] == IGNORE).all() and seg[32, 19] == SEG_CLASSES.index("circle") and seg[60, 60] == 0


def test_boundaries_of_a_label_map_and_of_renders():
    seg = np.zeros((8, 8), np.uint8)
    seg[2:5, 2:5] = 1
    seg[6, 6] = IGNORE
    b = boundaries(seg)
    assert b.dtype == np.float32 and b[3, 3] == 0 and b[0, 0] == 0  # inside the block, far background
    assert b[2, 2] == b[1, 2] == b[4, 4] == b[5, 4] == 1  # both sides of the block's rim
    assert b[6, 6] == b[5, 6] == b[6, 7] == 1  # an ignored pixel is a region of its own
    assert b.sum() == ((3 * 3 - 1) + 4 * 3) + (1 + 4)
    # the boundaries of the pixel truth of a render match the rendered outlines (edge F1 within 1 pixel)
    from mmreward.metrics import edge_f1

    rng = np.random.default_rng(2)
    scenes = [sample_scene(sample_meta(t, rng), rng) for t in CATEGORIES for _ in range(3)]
    f1 = edge_f1(np.stack([boundaries(read_segmentation(render(sc))) for sc in scenes]),
                 np.stack([edge_map(sc) for sc in scenes]))
    assert f1["f1"] > 0.85, f1
