"""Sample a text-to-image pipeline for a list of prompts, GenEval style (seeds ``seed .. seed+n-1`` per prompt;
a prompt that occurs again in the list continues with the next seeds, so repeats are new samples)."""

from __future__ import annotations

from collections.abc import Iterator

from PIL import Image
from tqdm import tqdm


def repeat_counts(prompts: list[str]) -> list[int]:
    """For each prompt, how many times it occurred earlier in the list (its ``k``: seeds ``seed + k*n + s``)."""
    seen: dict[str, int] = {}
    out = []
    for p in prompts:
        out.append(seen.get(p, 0))
        seen[p] = out[-1] + 1
    return out


def sample_pipeline(
    pipe,
    prompts: list[str],
    seeds: int = 4,
    steps: int = 1,
    guidance: float = 0.0,
    batch: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> Iterator[tuple[int, int, Image.Image]]:
    """Yield ``(prompt_index, seed_index, image)`` for every prompt and seed.

    ``pipe``: a diffusers text-to-image pipeline; each image has its own ``torch.Generator`` on the
    pipeline's device, so results do not depend on ``batch``. It is seeded ``seed + seed_index`` for a
    prompt's first occurrence (GenEval's convention) and ``seed + k * seeds + seed_index`` for its
    ``k``-th repeat: the evaluation suite repeats its small categories' prompts, and identical
    images would only count the same sample several times.
    """
    import torch

    if not prompts:
        raise ValueError("no prompts to sample")
    if any(not p or not p.strip() for p in prompts):
        raise ValueError("empty prompt in the prompt list")
    repeat = repeat_counts(prompts)
    jobs = [(i, s) for i in range(len(prompts)) for s in range(seeds)]
    pipe.set_progress_bar_config(disable=True)
    for k in tqdm(range(0, len(jobs), batch), desc=f"sample ({steps} step{'s' * (steps > 1)})", disable=not progress):
        chunk = jobs[k : k + batch]
        gens = [torch.Generator(pipe.device).manual_seed(seed + repeat[i] * seeds + s) for i, s in chunk]
        images = pipe([prompts[i] for i, _ in chunk], num_inference_steps=steps, guidance_scale=guidance,
                      generator=gens).images
        for (i, s), im in zip(chunk, images):
            yield i, s, im
