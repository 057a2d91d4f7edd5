"""What every entry point of ``diffusion_align`` reads the same way: prompt lists, diffusers pipelines
and seeded initial noise. Errors are ``ValueError`` naming the problem; callers turn them into their
own (a config error, a CLI exit)."""

from __future__ import annotations

from pathlib import Path

import torch

from mmreward.errors import InputFileError
from mmreward.files import read_jsonl, read_text

SUITES = ("train", "eval")


def read_prompts(spec: str) -> list[str]:
    """Prompts from ``shapes:train`` / ``shapes:eval`` (the committed ShapesWorld suites; ``train`` and
    ``eval`` alone work too), a ``.jsonl`` file with a ``prompt`` field per line, or a text file with one
    prompt per line. Raises ``ValueError`` for a missing file, no prompts or an empty prompt."""
    name = spec.split(":", 1)[1] if spec.startswith("shapes:") else spec
    if name in SUITES:
        from mmreward.shapes.suites import load_suite

        prompts = [m["prompt"] for m in load_suite(name)]
    else:
        if spec.startswith("shapes:"):
            raise InputFileError(f"prompts {spec!r}: unknown ShapesWorld suite (known: {', '.join('shapes:' + s for s in SUITES)})")
        path = Path(spec)
        if not path.is_file():
            raise InputFileError(f"prompts: no such file {spec!r} (or a suite: shapes:train, shapes:eval)")
        if path.suffix == ".jsonl":
            prompts = [row["prompt"] for row in read_jsonl(path, "prompts file", keys=("prompt",))]
        else:
            prompts = [line.strip() for line in read_text(path, "prompts file").splitlines() if line.strip()]
    if not prompts:
        raise InputFileError(f"prompts {spec!r} holds no prompts")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise InputFileError(f"prompts {spec!r}: prompt {i} is empty")
    return prompts


def load_pipeline(name: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """``DiffusionPipeline.from_pretrained(name)`` (hub id or folder) on ``device``, progress bars off."""
    from diffusers import DiffusionPipeline

    from mmreward.assets import missing_asset_hint, resolve_asset
    from mmreward.errors import ModelLoadError
    from mmreward.hub import require_hub

    name = resolve_asset(name)
    if not Path(name).exists():
        if name.startswith(("/", ".", "~")) or name.count("/") > 1 or missing_asset_hint(name):
            raise ModelLoadError(f"cannot load pipeline {name!r}: no such folder{missing_asset_hint(name)}")
        require_hub(name, f"the pipeline {name!r}", "pass its local folder")
    try:
        pipe = DiffusionPipeline.from_pretrained(name, **({"dtype": dtype} if dtype is not None else {}))
    except (OSError, ValueError) as e:
        hint = missing_asset_hint(name) or ("" if Path(name).exists() else
                                            " (not a local folder; a hub id needs internet access)")
        raise ValueError(f"cannot load pipeline {name!r}{hint}: {e}") from e
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def noise_for_seeds(shape: tuple[int, ...], seeds: list[int], device: str | torch.device = "cpu") -> torch.Tensor:
    """``[len(seeds), *shape[1:]]`` float32: one latent per seed, drawn as the pipelines draw it
    (``randn_tensor`` with a generator on ``device``), independent of the batch it is in; on the CPU the
    plain pipeline sample with that seed starts from the same latent."""
    from diffusers.utils.torch_utils import randn_tensor

    device = torch.device(device)
    return torch.cat([randn_tensor((1, *shape[1:]), generator=torch.Generator(device).manual_seed(int(s)), device=device)
                      for s in seeds]).float()
