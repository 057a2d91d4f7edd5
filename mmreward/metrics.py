"""Evaluation metrics of the benchmarks: IoU per class, edge F1 with a distance tolerance, SSIM, the Fréchet
distance of two feature sets, AUROC with a bootstrap interval, and a reliability curve.

All take numpy arrays (or tensors for :func:`ssim`) and return plain floats / dicts.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def class_iou(pred: np.ndarray, target: np.ndarray, n_classes: int, ignore: int | None = 255) -> np.ndarray:
    """``[n_classes]`` IoU of integer maps of any shape, summed over all their pixels; pixels where either map
    is ``ignore`` are left out; a class absent from both gets NaN."""
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    keep = np.ones_like(pred, dtype=bool) if ignore is None else (pred != ignore) & (target != ignore)
    pred, target = pred[keep], target[keep]
    out = np.full(n_classes, np.nan)
    for c in range(n_classes):
        union = ((pred == c) | (target == c)).sum()
        if union:
            out[c] = ((pred == c) & (target == c)).sum() / union
    return out


def class_counts(pred: np.ndarray, target: np.ndarray, n_classes: int, ignore: int | None = 255) -> np.ndarray:
    """``[N, n_classes, 2]`` per-image intersection and union pixel counts of integer maps ``[N, ...]``, pixels
    left out as in :func:`class_iou` (so summing over images and dividing gives its IoU)."""
    pred, target = np.asarray(pred), np.asarray(target)
    out = np.zeros((len(pred), n_classes, 2), np.int64)
    for i, (p, t) in enumerate(zip(pred, target, strict=True)):
        p, t = p.ravel(), t.ravel()
        if ignore is not None:
            keep = (p != ignore) & (t != ignore)
            p, t = p[keep], t[keep]
        for c in range(n_classes):
            out[i, c] = (((p == c) & (t == c)).sum(), ((p == c) | (t == c)).sum())
    return out


def miou_from_counts(counts: np.ndarray) -> float:
    """Mean IoU over the classes present of counts ``[N, C, 2]`` summed over the images."""
    total = counts.sum(0)
    present = total[:, 1] > 0
    return float((total[present, 0] / total[present, 1]).mean())


def paired_difference(a: np.ndarray, b: np.ndarray, stat, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> dict:
    """``stat(a) − stat(b)`` of two arms' per-condition counts (first axis: the same N conditions), with a
    paired percentile bootstrap interval resampling the conditions."""
    if a.shape != b.shape:
        raise ValueError(f"the arms' counts must cover the same conditions, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(a), len(a))
        boots.append(stat(a[pick]) - stat(b[pick]))
    lo, hi = np.percentile(boots, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return {"difference": stat(a) - stat(b), "low": float(lo), "high": float(hi), "level": level, "conditions": len(a)}


def miou_difference(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """mIoU(a) − mIoU(b) of two arms' counts ``[N, C, 2]`` on the same N conditions, with a paired percentile
    bootstrap interval resampling the conditions."""
    return paired_difference(a, b, miou_from_counts, n_boot, seed, level)


def edge_counts(pred: np.ndarray, target: np.ndarray, threshold: float = 0.5, tolerance: int = 1) -> np.ndarray:
    """``[N, 4]`` per-image edge counts of maps ``[N, H, W]`` in [0, 1] thresholded at ``threshold``: predicted
    edge pixels within ``tolerance`` pixels (Chebyshev) of a true one, true ones within ``tolerance`` of a
    predicted one, predicted and true edge pixels (BSDS-style matching without the one-to-one assignment)."""
    from scipy import ndimage

    p, t = np.asarray(pred) >= threshold, np.asarray(target) >= threshold
    size = (1, 2 * tolerance + 1, 2 * tolerance + 1)
    near_t, near_p = ndimage.maximum_filter(t, size=size), ndimage.maximum_filter(p, size=size)
    return np.stack([(p & near_t).sum((1, 2)), (t & near_p).sum((1, 2)), p.sum((1, 2)), t.sum((1, 2))], 1).astype(np.int64)


def edge_prf_from_counts(counts: np.ndarray) -> dict:
    """Precision, recall and F1 of :func:`edge_counts` ``[N, 4]`` summed over the images."""
    tp_p, tp_t, n_p, n_t = counts.sum(0)
    precision = tp_p / n_p if n_p else 0.0
    recall = tp_t / n_t if n_t else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": float(f1), "precision": float(precision), "recall": float(recall)}


def edge_f1(pred: np.ndarray, target: np.ndarray, threshold: float = 0.5, tolerance: int = 1) -> dict:
    """Edge F1 (with precision and recall) of maps ``[N, H, W]`` in [0, 1], counts summed over the images (see
    :func:`edge_counts`)."""
    return edge_prf_from_counts(edge_counts(pred, target, threshold, tolerance))


def edge_f1_difference(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Edge F1(a) − F1(b) of two arms' :func:`edge_counts` on the same N conditions, with a paired percentile
    bootstrap interval resampling the conditions."""
    return paired_difference(a, b, lambda c: edge_prf_from_counts(c)["f1"], n_boot, seed, level)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """``[N]`` structural similarity of single-channel maps ``[N, H, W]`` (Gaussian window, the usual constants
    ``K1 = 0.01, K2 = 0.03``, valid-region mean)."""
    a, b = a[:, None].double(), b[:, None].double()
    x = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = (g / g.sum())[:, None] * (g / g.sum())[None, :]
    k = g[None, None]
    mu_a, mu_b = F.conv2d(a, k), F.conv2d(b, k)
    var_a = F.conv2d(a * a, k) - mu_a**2
    var_b = F.conv2d(b * b, k) - mu_b**2
    cov = F.conv2d(a * b, k) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean((1, 2, 3)).float()


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted to features ``x [N, D]`` and ``y [M, D]`` (the FID formula)."""
    from scipy import linalg

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # nearly singular product: regularise as the FID reference does
        eps = 1e-6 * np.eye(len(s1))
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (the Mann–Whitney statistic, ties counted
    half); NaN when one class is empty."""
    from scipy.stats import rankdata

    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc_interval(scores: list[np.ndarray], labels: list[np.ndarray], n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> dict:
    """AUROC over all items pooled, with a percentile bootstrap interval resampling the *groups* (one array per
    image: pixels of an image are not independent)."""
    rng = np.random.default_rng(seed)
    point = auroc(np.concatenate(scores), np.concatenate(labels))
    boots = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(scores), len(scores))
        a = auroc(np.concatenate([scores[i] for i in pick]), np.concatenate([labels[i] for i in pick]))
        if np.isfinite(a):
            boots.append(a)
    lo, hi = np.percentile(boots, [(1 - level) / 2 * 100, (1 + level) / 2 * 100]) if boots else (np.nan, np.nan)
    return {"auroc": point, "low": float(lo), "high": float(hi), "level": level, "groups": len(scores)}


def reliability(scores: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict]:
    """The rate of positive labels in ``bins`` equal-count bins of ``scores`` (low to high)."""
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel().astype(float)
    order = np.argsort(scores, kind="stable")
    out = []
    for part in np.array_split(order, bins):
        if len(part):
            out.append({"score_low": float(scores[part[0]]), "score_high": float(scores[part[-1]]),
                        "rate": float(labels[part].mean()), "n": int(len(part))})
    return out
