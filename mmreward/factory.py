"""Reward spec strings -> reward modules.

Grammar (whitespace around separators is ignored)::

    spec   := term ("," term)*
    term   := [WEIGHT "*"] FAMILY [":" ARG] ["?" KEY=VALUE ("&" KEY=VALUE)*]
            | FAMILY ":" WEIGHT                       # family default model, weighted

Examples::

    clip:ViT-H-14/laion2b_s32b_b79k            # open_clip architecture + pretrained tag
    clip:ViT-B-32//ckpts/my_clip.safetensors   # open_clip architecture + local weights file
    clip:assets/shapesworld-clip               # open_clip model folder (open_clip_config.json + weights)
    hfclip:openai/clip-vit-large-patch14?mode=logit
    hps:1.0,clip:0.01                          # weighted sum of family defaults (ReNO style)
    5*clip:ViT-H-14/laion2b_s32b_b79k,0.01*hfclip:/models/clip-h

A spec with several terms (or one weighted term) gives a :class:`WeightedSum`.
New families are added with :func:`register_family`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .assets import resolve_asset
from .backbones import ClipBackbone, load_hf_clip, load_open_clip
from .base import VisionReward
from .combine import WeightedSum
from .errors import RewardSpecError
from .registry import _FAMILIES, known_families, load_backbone, parse_spec, register_family
from .zero_shot import CLIPScore, ProjectionReward

__all__ = ["known_families", "load_backbone", "load_projection_reward", "load_reward", "parse_spec", "register_family"]


def load_reward(
    spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> VisionReward:
    """Build the reward named by ``spec`` (see module docstring) on ``device`` with ``dtype``."""
    terms = parse_spec(spec)
    rewards = [_FAMILIES[t.family].build(t.arg, device=device, dtype=dtype, **t.options) for t in terms]
    if len(terms) == 1 and terms[0].weight == 1.0:
        return rewards[0]
    names = [t.family if sum(u.family == t.family for u in terms) == 1 else f"{t.family}[{i}]" for i, t in enumerate(terms)]
    return WeightedSum([(n, r, t.weight) for n, r, t in zip(names, rewards, terms, strict=False)])


def load_projection_reward(
    spec: str,
    goal: str | Sequence[str],
    baseline: str | Sequence[str],
    alpha: float = 0.0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ProjectionReward:
    """VLM-RM goal–baseline projection reward on the CLIP backbone named by ``spec``."""
    return ProjectionReward(load_backbone(spec, device, dtype), goal, baseline, alpha)


def _clip_score_family(loader: Callable[..., ClipBackbone]) -> Callable[..., VisionReward]:
    def build(arg: str, device="cpu", dtype=torch.float32, mode: str = "cos", w: str = "2.5", **unknown):
        if unknown:
            raise RewardSpecError(f"unknown option(s) {sorted(unknown)}; CLIP families accept 'mode' and 'w'")
        return CLIPScore(loader(arg, device=device, dtype=dtype), mode=mode, w=float(w))

    return build


register_family(
    "clip",
    _clip_score_family(load_open_clip),
    "ViT-H-14/laion2b_s32b_b79k",
    "open_clip CLIPScore: MODEL/PRETRAINED, MODEL//weights_file, hf-hub:ORG/REPO or a model folder",
    backbone=load_open_clip,
)
register_family(
    "hfclip",
    _clip_score_family(load_hf_clip),
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    "transformers CLIPModel CLIPScore: hub id or local folder",
    backbone=load_hf_clip,
)


def _build_head(arg: str | None, device="cpu", dtype=torch.float32, backbone: str | None = None, **unknown) -> VisionReward:
    from .heads import load_head_reward

    if unknown:
        raise RewardSpecError(f"unknown option(s) {sorted(unknown)}; head rewards accept 'backbone'")
    if arg is None:
        raise RewardSpecError("'head' needs a folder: head:PATH (written by python -m mmreward.train_reward)")
    return load_head_reward(arg, device=device, dtype=dtype, backbone=backbone)


register_family(
    "head",
    _build_head,
    None,
    "trained reward head on a CLIP backbone: head:FOLDER (reward_head.json + head.safetensors)",
)


def _published(name: str) -> Callable[..., VisionReward]:
    def build(arg, device="cpu", dtype=torch.float32, **options) -> VisionReward:
        from . import published

        return getattr(published, f"load_{name}")(arg, device=device, dtype=dtype, **options)

    return build


register_family("pickscore", _published("pickscore"), "yuvalkirstain/PickScore_v1",
                "PickScore (transformers CLIP-H, exp(logit_scale)·cos): hub id or folder; ?processor=")
register_family("hps", _published("hps"), "v2.1", "HPSv2 / HPSv2.1 (open_clip ViT-H-14, cos): v2.0, v2.1 or a checkpoint file; ?arch=")
register_family("aesthetic", _published("aesthetic"), None,
                "LAION improved aesthetic predictor (MLP on CLIP ViT-L/14): a .pth/.safetensors file; ?backbone=")


def _build_image_reward(arg, device="cpu", dtype=torch.float32, **options) -> VisionReward:
    from .image_reward import load_image_reward

    return load_image_reward(arg, device=device, dtype=dtype, **options)


register_family("imagereward", _build_image_reward, "ImageReward-v1.0",
                "ImageReward (BLIP ViT-L + BERT + MLP): ImageReward-v1.0, a checkpoint or folder; ?med_config=&tokenizer=")


def _build_ensemble(arg: str | None, device="cpu", dtype=torch.float32, agg: str = "mean", lam: str = "0.5",
                    ddof: str = "0", **unknown) -> VisionReward:
    from pathlib import Path

    from .combine import Ensemble
    from .heads import HEAD_CONFIG, load_head_reward

    if unknown:
        raise RewardSpecError(f"unknown option(s) {sorted(unknown)}; ensemble accepts agg, lam, ddof")
    folder = Path(resolve_asset(arg or ""))
    members = sorted(d for d in folder.iterdir() if (d / HEAD_CONFIG).is_file()) if folder.is_dir() else []
    if not members:
        raise RewardSpecError(f"ensemble:{arg}: expected a folder whose subfolders are reward heads ({HEAD_CONFIG})")
    shared: dict = {}  # one backbone per spec for all members
    return Ensemble([load_head_reward(str(m), device=device, dtype=dtype, backbones=shared) for m in members],
                    agg, float(lam), int(ddof))


register_family("ensemble", _build_ensemble, None,
                "ensemble of reward heads: ensemble:FOLDER (one head per subfolder) ?agg=mean|wco|uwo&lam=0.5&ddof=0")


def _build_vlm(arg: str | None, device="cpu", dtype=torch.float32, **options) -> VisionReward:
    from .vlm import load_vlm_judge

    known = {"readout", "template", "aspect", "fallback", "min_pixels", "max_pixels"}
    if set(options) - known:
        raise RewardSpecError(f"unknown option(s) {sorted(set(options) - known)}; vlm accepts {', '.join(sorted(known))}")
    if arg is None:
        raise RewardSpecError("'vlm' needs a model: vlm:HUB_ID (e.g. Qwen/Qwen2-VL-2B-Instruct) or vlm:FOLDER")
    return load_vlm_judge(arg, device=device, dtype=dtype, **options)


register_family("vlm", _build_vlm, None,
                "generative VLM judge (transformers image-text-to-text): hub id or folder "
                "?readout=yes|rating|text|pairwise&template=NAME|FILE.json&aspect=&fallback=&max_pixels=")
