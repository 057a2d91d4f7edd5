"""The benchmarks' metrics against values computed directly (pair counts, loops, closed forms)."""

import itertools
import math

import numpy as np
import pytest
import torch

from mmreward.metrics import (
    auroc,
    auroc_interval,
    class_counts,
    class_iou,
    edge_counts,
    edge_f1,
    edge_f1_difference,
    edge_prf_from_counts,
    frechet_distance,
    miou_difference,
    miou_from_counts,
    reliability,
    ssim,
)


def test_class_iou_ignores_pixels_and_marks_absent_classes():
    pred = np.array([[0, 1, 1], [2, 2, 255]])
    target = np.array([[0, 1, 2], [2, 2, 2]])
    iou = class_iou(pred, target, 4)
    assert iou[0] == 1 and iou[1] == 0.5 and iou[2] == pytest.approx(2 / 3) and math.isnan(iou[3])


def test_edge_f1_tolerates_a_one_pixel_shift_only():
    t = np.zeros((1, 16, 16))
    t[0, 8, 2:14] = 1
    assert edge_f1(t, t)["f1"] == 1
    assert edge_f1(np.roll(t, 1, axis=1), t)["f1"] == 1
    assert edge_f1(np.roll(t, 3, axis=1), t)["f1"] == 0
    half = t.copy()
    half[0, 8, 8:] = 0  # half the edge found, nothing wrong
    r = edge_f1(half, t)
    # 7 of 12 true pixels lie within a pixel of a found one (the one next to the found half counts)
    assert r["precision"] == 1 and r["recall"] == pytest.approx(7 / 12) and r["f1"] == pytest.approx(14 / 19)


def test_edge_counts_per_image_sum_to_the_pooled_f1_and_give_a_paired_interval():
    rng = np.random.default_rng(0)
    target = np.zeros((40, 16, 16))
    for i in range(40):  # a horizontal edge of random length in each image
        r, n = rng.integers(2, 14), rng.integers(4, 12)
        target[i, r, 2:2 + n] = 1
    good = target.copy()
    good[:, :, 10:] = 0  # edges cut at column 10: precision 1, recall lower
    bad = np.roll(target, 3, axis=1)  # 3 pixels off: nothing within tolerance
    counts = edge_counts(good, target)
    assert counts.shape == (40, 4)
    i = int(np.argmax(target.sum((1, 2))))  # one image's counts by hand
    found = good[i] >= 0.5
    assert counts[i, 2] == found.sum() and counts[i, 3] == target[i].sum() and counts[i, 0] == found.sum()
    halves = np.concatenate([edge_counts(good[:20], target[:20]), edge_counts(good[20:], target[20:])])
    assert edge_prf_from_counts(halves) == edge_f1(good, target)
    pooled = edge_f1(good, target)
    # nothing found is wrong; a true pixel counts as found when a found one lies within a pixel
    near = good.copy()
    near[:, :, 1:] = np.maximum(near[:, :, 1:], good[:, :, :-1])
    assert pooled["precision"] == 1 and pooled["recall"] == pytest.approx((near * target).sum() / target.sum())
    d = edge_f1_difference(counts, edge_counts(bad, target), n_boot=500)
    direct = edge_f1(good, target)["f1"] - edge_f1(bad, target)["f1"]
    assert edge_f1(bad, target)["f1"] == 0 and d["difference"] == pytest.approx(direct)
    assert d["low"] <= direct <= d["high"] and d["low"] > 0 and d["conditions"] == 40
    same = edge_f1_difference(counts, counts, n_boot=50)
    assert same["difference"] == same["low"] == same["high"] == 0


def _ssim_loops(a, b, window=7, sigma=1.5):
    x = np.arange(window) - (window - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for i in range(a.shape[0] - window + 1):
        for j in range(a.shape[1] - window + 1):
            pa, pb = a[i:i + window, j:j + window], b[i:i + window, j:j + window]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * pa**2).sum() - ma**2, (w * pb**2).sum() - mb**2
            cv = (w * pa * pb).sum() - ma * mb
            vals.append((2 * ma * mb + c1) * (2 * cv + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_the_windowed_formula():
    rng = np.random.default_rng(0)
    a = rng.random((12, 10))
    b = np.clip(a + 0.2 * rng.standard_normal((12, 10)), 0, 1)
    ours = ssim(torch.tensor(a[None]), torch.tensor(b[None]))
    assert ours.shape == (1,) and ours.item() == pytest.approx(_ssim_loops(a, b), rel=1e-5)
    assert ssim(torch.tensor(a[None]), torch.tensor(a[None])).item() == pytest.approx(1.0)


def test_frechet_distance_of_gaussians():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20000, 3))
    y = rng.standard_normal((20000, 3)) * np.array([1.0, 2.0, 1.0]) + np.array([1.0, 0.0, 0.0])
    # closed form for diagonal covariances: |mu1 - mu2|^2 + sum (s1 - s2)^2 = 1 + (1 - 2)^2
    assert frechet_distance(x, y) == pytest.approx(2.0, abs=0.1)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_auroc_is_the_pair_count_with_ties_halved():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, 60).astype(float)
    labels = rng.random(60) < 0.4
    pairs = [(1.0 if s > u else 0.5 if s == u else 0.0)
             for (s, ls), (u, lu) in itertools.product(zip(scores, labels), repeat=2) if ls and not lu]
    assert auroc(scores, labels) == pytest.approx(np.mean(pairs))
    assert auroc(np.array([0.1, 0.9]), np.array([0, 1])) == 1 and math.isnan(auroc(scores, np.zeros(60)))
    groups = [rng.random(50) for _ in range(20)]
    labels_g = [s + 0.3 * rng.standard_normal(50) > 0.6 for s in groups]
    r = auroc_interval(groups, labels_g, n_boot=200)
    assert r["low"] <= r["auroc"] <= r["high"] and r["auroc"] > 0.7 and r["groups"] == 20


def test_reliability_bins_are_equal_count_and_ordered():
    scores = np.arange(100.0)
    labels = scores >= 50
    bins = reliability(scores, labels, bins=4)
    assert [b["n"] for b in bins] == [25] * 4 and [b["rate"] for b in bins] == [0, 0, 1, 1]


def test_per_image_counts_sum_to_the_pooled_iou_and_the_paired_interval_covers_the_difference():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, (40, 8, 8))
    target[:5, :2] = 255  # ignored pixels
    good = np.where(rng.random(target.shape) < 0.9, target, rng.integers(0, 4, target.shape))
    bad = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, 4, target.shape))
    counts = class_counts(good, target, 5)
    assert counts.shape == (40, 5, 2) and counts[:, 4].sum() == 0  # class 4 absent from both
    # one image by hand: intersection and union of class 0 over its kept pixels
    keep = target[0] != 255
    assert counts[0, 0, 0] == ((good[0] == 0) & (target[0] == 0) & keep).sum()
    assert counts[0, 0, 1] == (((good[0] == 0) | (target[0] == 0)) & keep).sum()
    assert miou_from_counts(counts) == pytest.approx(np.nanmean(class_iou(good, target, 5)))
    d = miou_difference(counts, class_counts(bad, target, 5), n_boot=500)
    direct = np.nanmean(class_iou(good, target, 5)) - np.nanmean(class_iou(bad, target, 5))
    assert d["difference"] == pytest.approx(direct) and d["low"] < direct < d["high"] and d["low"] > 0
    same = miou_difference(counts, counts, n_boot=50)
    assert same["difference"] == same["low"] == same["high"] == 0
    with pytest.raises(ValueError, match="same conditions"):
        miou_difference(counts, counts[:10])
