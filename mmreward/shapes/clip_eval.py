"""Hard-negative caption accuracy of a CLIP reward on ShapesWorld scenes."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from .data import to_tensor
from .prompts import hard_negatives, sample_scene
from .world import render


def hard_negative_items(metas: list[dict], seed: int, size: int = 64) -> list[tuple[np.ndarray, dict, list[str]]]:
    """For each prompt: a fresh ground-truth render, its metadata, and ``[true, *hard negatives]`` captions."""
    rng = np.random.default_rng(seed)
    items = []
    for meta in metas:
        scene = sample_scene(meta, rng)
        captions = [meta["prompt"]] + [n["prompt"] for n in hard_negatives(meta, rng)]
        items.append((render(scene, size), meta, captions))
    return items


@torch.no_grad()
def hard_negative_accuracy(backbone, items, batch_size: int = 128) -> dict:
    """Share of images whose true caption scores above every hard negative, overall and per category."""
    hits: dict[str, list[bool]] = defaultdict(list)
    held: list[bool] = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        imgs = to_tensor(np.stack([it[0] for it in chunk]))
        emb = backbone.embed_images(imgs)
        for e, (_, meta, caps) in zip(emb, chunk):
            scores = backbone.encode_text(caps) @ e
            ok = bool(scores[0] > scores[1:].max())
            hits[meta["tag"]].append(ok)
            if meta.get("held_out"):
                held.append(ok)
    per_cat = {k: float(np.mean(v)) for k, v in sorted(hits.items())}
    allv = [x for v in hits.values() for x in v]
    out = {"overall": float(np.mean(allv)), "per_category": per_cat, "n": len(allv)}
    if held:
        out["held_out"] = float(np.mean(held))
    return out
