"""Sample a text-to-image pipeline for a list of prompts, GenEval style (seeds ``seed .. seed+n-1`` per prompt)."""

from __future__ import annotations

from collections.abc import Iterator

from PIL import Image
from tqdm import tqdm


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

    ``pipe``: a diffusers text-to-image pipeline; each image has its own ``torch.Generator`` seeded
    ``seed + seed_index`` on the pipeline's device, so results do not depend on ``batch``.
    """
    import torch

    if not prompts:
        raise ValueError("no prompts to sample")
    if any(not p or not p.strip() for p in prompts):
        raise ValueError("empty prompt in the prompt list")
    jobs = [(i, s) for i in range(len(prompts)) for s in range(seeds)]
    pipe.set_progress_bar_config(disable=True)
    for k in tqdm(range(0, len(jobs), batch), desc=f"sample ({steps} step{'s' * (steps > 1)})", disable=not progress):
        chunk = jobs[k : k + batch]
        gens = [torch.Generator(pipe.device).manual_seed(seed + s) for _, s in chunk]
        images = pipe([prompts[i] for i, _ in chunk], num_inference_steps=steps, guidance_scale=guidance,
                      generator=gens).images
        for (i, s), im in zip(chunk, images):
            yield i, s, im
