"""Batches of ShapesWorld renders and captions for training the embedded models."""

from __future__ import annotations

import numpy as np
import torch

from .prompts import CATEGORIES, sample_meta, sample_scene
from .world import render


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 renders ``[N,H,W,3]`` -> float ``[N,3,H,W]`` in ``[0,1]``."""
    return torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255


def sample_batch(
    rng: np.random.Generator,
    batch: int,
    split: str = "train",
    size: int = 64,
    category_weights: dict[str, float] | None = None,
    return_scenes: bool = False,
):
    """``batch`` scenes: images ``[B,3,size,size]`` in ``[0,1]`` and their metadata.

    Categories are drawn uniformly unless ``category_weights`` says otherwise.
    ``split="train"`` never renders or captions a held-out colour–shape pair or relation.
    ``return_scenes`` also returns the :class:`Scene` behind each image (exact ground truth).
    """
    w = np.array([(category_weights or {}).get(c, 1.0) for c in CATEGORIES], dtype=float)
    tags = rng.choice(len(CATEGORIES), size=batch, p=w / w.sum())
    metas = [sample_meta(CATEGORIES[int(t)], rng, split) for t in tags]
    scenes = [sample_scene(m, rng, allow_held_out=split != "train") for m in metas]
    images = to_tensor(np.stack([render(sc, size) for sc in scenes]))
    return (images, metas, scenes) if return_scenes else (images, metas)
