"""Trained reward heads on frozen CLIP embeddings: the LAION aesthetic predictor's and ImageReward's MLP.

A head reward folder holds ``reward_head.json`` (the backbone's spec string, the head's input and layer
sizes, the score normalisation) and ``head.safetensors``; it loads with ``load_reward("head:FOLDER")``.

Inputs (``x``: the head's input, from L2-normalised CLIP embeddings ``img``, ``txt`` ``[B,D]``):

* ``image``: ``x = img`` (aesthetic predictors: no prompt);
* ``image_text``: ``x = [img, img ⊙ txt]`` ``[B,2D]`` (a prompt-conditioned preference head; the product's
  sum is the CLIP cosine, so the head can start from CLIPScore and add what the prompt does not decide).

Score: ``(mlp(x) − mean) / std`` (ImageReward's normalisation; ``0`` and ``1`` for a plain head).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .assets import resolve_asset
from .base import VisionReward
from .errors import ModelLoadError, RewardError

HEAD_CONFIG = "reward_head.json"
HEAD_WEIGHTS = "head.safetensors"
INPUTS = ("image", "image_text")
#: hidden sizes and dropouts of the LAION aesthetic predictor / ImageReward MLP (768 -> 1024 -> 128 -> 64 -> 16 -> 1)
REFERENCE_HIDDEN = (1024, 128, 64, 16)
REFERENCE_DROPOUT = (0.2, 0.2, 0.1, 0.0)
ACTIVATIONS = {"none": None, "relu": nn.ReLU, "gelu": nn.GELU}


class MLPHead(nn.Module):
    """``nn.Sequential`` named ``layers``: Linear, [activation], Dropout per hidden layer, then Linear to 1.
    With no activation and the reference sizes, its state-dict keys are those of the LAION aesthetic
    predictor and ImageReward's ``mlp`` (``layers.0`` ... ``layers.7``), so their weights load as they are."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...] = REFERENCE_HIDDEN,
                 dropout: tuple[float, ...] = REFERENCE_DROPOUT, activation: str = "none") -> None:
        super().__init__()
        if len(dropout) != len(hidden):
            raise RewardError(f"dropout needs one value per hidden layer ({len(hidden)}), got {len(dropout)}")
        if activation not in ACTIVATIONS:
            raise RewardError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        layers: list[nn.Module] = []
        d = in_dim
        for h, p in zip(hidden, dropout, strict=True):
            layers.append(nn.Linear(d, h))
            if ACTIVATIONS[activation] is not None:
                layers.append(ACTIVATIONS[activation]())
            if p > 0:
                layers.append(nn.Dropout(p))
            d = h
        layers.append(nn.Linear(d, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_dim]`` -> ``[B]``."""
        return self.layers(x).squeeze(-1)


def head_features(img: torch.Tensor, txt: torch.Tensor | None, kind: str) -> torch.Tensor:
    """The head's input ``[B, D]`` or ``[B, 2D]`` from normalised embeddings (see module docstring)."""
    if kind == "image":
        return img
    if kind == "image_text":
        if txt is None:
            raise RewardError("an image_text head needs prompts")
        return torch.cat([img, img * txt], dim=-1)
    raise RewardError(f"unknown head input {kind!r}; choose one of {INPUTS}")


class HeadReward(VisionReward):
    """A frozen CLIP backbone plus an :class:`MLPHead`: ``reward(images, prompts) -> [B]`` (differentiable
    w.r.t. the images; preprocessing in torch)."""

    def __init__(self, backbone, head: MLPHead, inputs: str = "image_text", mean: float = 0.0, std: float = 1.0,
                 backbone_spec: str = "") -> None:
        super().__init__()
        if inputs not in INPUTS:
            raise RewardError(f"unknown head input {inputs!r}; choose one of {INPUTS}")
        if not std > 0:
            raise RewardError(f"score std must be > 0, got {std}")
        self.backbone, self.head, self.inputs = backbone, head, inputs
        self.mean, self.std, self.backbone_spec = float(mean), float(std), backbone_spec
        self.needs_prompts = inputs == "image_text"

    def features(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        img = self.backbone.embed_images(images)
        txt = self.backbone.encode_text(prompts).to(img.device) if self.needs_prompts else None
        return head_features(img, txt, self.inputs)

    def score_features(self, x: torch.Tensor) -> torch.Tensor:
        """Rewards ``[B]`` from precomputed head inputs ``[B, in_dim]`` (training on cached embeddings)."""
        return (self.head(x.to(next(self.head.parameters()).dtype)).float() - self.mean) / self.std

    def score_images(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        return self.score_features(self.features(images, prompts))

    def config(self) -> dict:
        lin = [m for m in self.head.layers if isinstance(m, nn.Linear)]
        drops = {i: m.p for i, m in enumerate(self.head.layers) if isinstance(m, nn.Dropout)}
        act = next((k for k, v in ACTIVATIONS.items() if v is not None and any(isinstance(m, v) for m in self.head.layers)), "none")
        # dropout of each hidden layer: the Dropout (if any) before the next Linear
        idx = [i for i, m in enumerate(self.head.layers) if isinstance(m, nn.Linear)]
        dropout = [next((drops[j] for j in range(a + 1, b) if j in drops), 0.0) for a, b in zip(idx[:-1], idx[1:], strict=True)]
        return {"backbone": self.backbone_spec, "inputs": self.inputs, "in_dim": lin[0].in_features,
                "hidden": [m.out_features for m in lin[:-1]], "dropout": dropout, "activation": act,
                "mean": self.mean, "std": self.std}


def save_head_reward(reward: HeadReward, folder: str | os.PathLike) -> Path:
    """Write ``folder/reward_head.json`` and ``folder/head.safetensors`` (the backbone is named, not copied)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().cpu() for k, v in reward.head.state_dict().items()}
    tmp = folder / (HEAD_WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, folder / HEAD_WEIGHTS)
    (folder / HEAD_CONFIG).write_text(json.dumps(reward.config(), indent=2))
    return folder


def _resolve_backbone(spec: str, folder: Path) -> str:
    """A backbone spec whose model path is relative: relative to the working directory when it exists
    there, else to the head's folder."""
    family, sep, arg = spec.partition(":")
    if sep and arg and not os.path.isabs(arg) and not os.path.exists(arg) and (folder / arg).exists():
        return f"{family}:{folder / arg}"
    return spec


def read_head(arg: str | os.PathLike) -> tuple[dict, MLPHead]:
    """``(config, head)`` of a head folder (weights loaded; no backbone)."""
    from safetensors.torch import load_file

    folder = Path(resolve_asset(arg))
    if not (folder / HEAD_CONFIG).is_file() or not (folder / HEAD_WEIGHTS).is_file():
        raise ModelLoadError(f"{str(arg)!r} is not a reward head folder (needs {HEAD_CONFIG} and {HEAD_WEIGHTS})")
    try:
        cfg = json.loads((folder / HEAD_CONFIG).read_text())
        head = MLPHead(cfg["in_dim"], tuple(cfg["hidden"]), tuple(cfg["dropout"]), cfg.get("activation", "none"))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{folder / HEAD_CONFIG}: not a valid reward head config ({type(e).__name__}: {e}); "
                             "re-export the head with `mmalign train-reward`") from e
    try:
        state = load_file(str(folder / HEAD_WEIGHTS))
    except Exception as e:  # safetensors raises SafetensorError (and OSError) on a damaged file
        raise ModelLoadError(f"{folder / HEAD_WEIGHTS}: not a readable safetensors file ({e})") from e
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise ModelLoadError(f"{folder / HEAD_WEIGHTS} does not match {HEAD_CONFIG}: {e}") from e
    cfg["backbone_resolved"] = _resolve_backbone(cfg.get("backbone") or "", folder)
    return cfg, head


def load_head_reward(arg: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                     backbone: str | None = None, backbones: dict | None = None) -> HeadReward:
    """Load a head reward folder (``backbone`` overrides the spec stored in it). ``backbones``: a cache
    ``{spec: loaded backbone}`` shared by the heads of an ensemble, so one CLIP serves them all."""
    from .registry import load_backbone

    cfg, head = read_head(arg)
    spec = backbone or cfg["backbone_resolved"]
    if not spec:
        raise ModelLoadError(f"{arg}: {HEAD_CONFIG} names no backbone; pass one")
    cache = backbones if backbones is not None else {}
    if spec not in cache:
        cache[spec] = load_backbone(spec, device=device, dtype=dtype)
    reward = HeadReward(cache[spec], head, cfg["inputs"], cfg.get("mean", 0.0), cfg.get("std", 1.0), backbone_spec=cfg["backbone"])
    return reward.eval().requires_grad_(False).to(device=device, dtype=dtype)
