"""CLIP backbones: one small interface over open_clip and transformers CLIP models.

A backbone embeds images (already preprocessed) and prompts into a shared, L2-normalised space.
Loaders take exactly what a user would pass with internet access (open_clip model name and
pretrained tag, ``hf-hub:`` ids, transformers hub ids) or a local path, which is how the embedded
defaults under ``assets/`` are loaded too.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .assets import missing_asset_hint, resolve_asset
from .errors import ModelLoadError
from .hub import looks_like_path, model_source, require_hub
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipPreprocess

OFFLINE_HINT = (
    "The model hub cannot be reached (offline?). Download the checkpoint where you have internet and "
    "pass the local path instead"
)


class ClipBackbone(nn.Module):
    """Base class: ``encode_image([B,3,S,S] normalised) -> [B,D]`` and ``encode_text(prompts) -> [N,D]``.

    Both outputs are L2-normalised. Text embeddings are cached per prompt while the text tower
    is frozen (the default); call :meth:`clear_cache` after changing the weights.
    """

    preprocess: ClipPreprocess

    def __init__(self) -> None:
        super().__init__()
        self._text_cache: dict[tuple[str, str, torch.dtype], torch.Tensor] = {}

    # -- subclass hooks -------------------------------------------------------------------------
    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _text_features(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    @property
    def logit_scale(self) -> torch.Tensor:
        """``exp(logit_scale)``, the temperature-inverse the model was trained with (scalar)."""
        raise NotImplementedError

    # -- public API -----------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings ``[B,D]`` (float32) from preprocessed pixels ``[B,3,S,S]``."""
        return F.normalize(self._image_features(pixels.to(self.dtype)).float(), dim=-1)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings ``[B,D]`` of raw images ``[B,3,H,W]`` in ``[0,1]`` (differentiable)."""
        return self.encode_image(self.preprocess(images.to(self.device)))

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Normalised text embeddings ``[N,D]`` (float32); cached per prompt when the text tower is frozen."""
        prompts = list(prompts)
        cacheable = not torch.is_grad_enabled() or not any(p.requires_grad for p in self.parameters())
        if not cacheable:
            return F.normalize(self._text_features(prompts).float(), dim=-1)
        key = (str(self.device), self.dtype)
        missing = list(dict.fromkeys(p for p in prompts if (p, *key) not in self._text_cache))
        if missing:
            with torch.no_grad():
                feats = F.normalize(self._text_features(missing).float(), dim=-1)
            for p, f in zip(missing, feats, strict=False):
                self._text_cache[(p, *key)] = f
        return torch.stack([self._text_cache[(p, *key)] for p in prompts])

    def clear_cache(self) -> None:
        self._text_cache.clear()

    def _warn_if_truncated(self, prompts: list[str], lengths: list[int], limit: int) -> None:
        """Warn for each prompt of more tokens (start and end included) than the text tower reads."""
        for p, n in zip(prompts, lengths, strict=True):
            if n > limit:
                short = p if len(p) <= 60 else p[:57] + "..."
                warnings.warn(f"prompt of {n} tokens is cut to the text encoder's {limit}: {short!r}", stacklevel=4)

    def freeze(self) -> ClipBackbone:
        """Eval mode and no weight gradients (rewards are frozen by default)."""
        self.eval()
        self.requires_grad_(False)
        return self


# ----------------------------------------------------------------------------------------------
# open_clip
# ----------------------------------------------------------------------------------------------
class OpenClipBackbone(ClipBackbone):
    """Wraps an ``open_clip`` CLIP model and its tokenizer."""

    def __init__(self, model: nn.Module, tokenizer, preprocess: ClipPreprocess, name: str = "") -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.name = name

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _text_features(self, prompts: list[str]) -> torch.Tensor:
        encode, limit = getattr(self.tokenizer, "encode", None), getattr(self.tokenizer, "context_length", None)
        if callable(encode) and limit:  # open_clip's SimpleTokenizer: ids without the start and end tokens
            self._warn_if_truncated(prompts, [len(encode(p)) + 2 for p in prompts], int(limit))
        tokens = self.tokenizer(prompts).to(self.device)
        return self.model.encode_text(tokens)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().float()


def _preprocess_from_open_clip(model: nn.Module) -> ClipPreprocess:
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    size = size[0] if isinstance(size, (tuple, list)) else size
    resize_mode = cfg.get("resize_mode", "shortest")
    if resize_mode not in ("shortest", "squash"):
        resize_mode = "shortest"
    return ClipPreprocess(
        size=size,
        mean=cfg.get("mean", getattr(model.visual, "image_mean", None) or OPENAI_CLIP_MEAN),
        std=cfg.get("std", getattr(model.visual, "image_std", None) or OPENAI_CLIP_STD),
        interpolation="bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic",
        resize_mode=resize_mode,
    )


def load_open_clip(arg: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> OpenClipBackbone:
    """Load an open_clip model.

    ``arg`` is one of:

    * ``MODEL/PRETRAINED`` – an open_clip architecture and a pretrained tag
      (``ViT-H-14/laion2b_s32b_b79k``) or a local checkpoint file (``ViT-B-32//path/to/weights.safetensors``);
    * ``hf-hub:ORG/REPO`` – an open_clip repo on the Hugging Face hub;
    * a local folder (optionally prefixed ``local-dir:``) holding ``open_clip_config.json`` and weights,
      the format the embedded defaults use.
    """
    import open_clip

    model_name, pretrained = arg, None
    path = resolve_asset(arg.removeprefix("local-dir:"))
    if arg.startswith("local-dir:") or os.path.isdir(path):
        if not os.path.isdir(path):
            raise ModelLoadError(f"open_clip folder not found: {path!r}{missing_asset_hint(path)}")
        if not os.path.isfile(os.path.join(path, "open_clip_config.json")):
            raise ModelLoadError(f"{path!r} is a folder but has no open_clip_config.json (not an open_clip model folder)")
        model_name = "local-dir:" + path
    elif arg.startswith("hf-hub:"):
        pass
    elif missing_asset_hint(arg):
        raise ModelLoadError(f"open_clip model folder not found: {arg!r}{missing_asset_hint(arg)}")
    else:
        model_name, _, pretrained = arg.partition("/")
        if model_name not in open_clip.list_models():
            if looks_like_path(arg):
                raise ModelLoadError(f"open_clip model folder not found: {arg!r}{missing_asset_hint(arg)}")
            raise ModelLoadError(f"unknown open_clip architecture {model_name!r} (see open_clip.list_models())")
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if not pretrained:
            raise ModelLoadError(
                f"open_clip spec {arg!r} names no weights; use MODEL/PRETRAINED, e.g. 'ViT-B-32/openai', "
                f"or MODEL//path/to/checkpoint (known tags for {model_name}: {tags})"
            )
        if os.path.isfile(os.path.expanduser(pretrained)):
            pretrained = os.path.expanduser(pretrained)
        elif pretrained not in tags:
            if looks_like_path(pretrained):
                raise ModelLoadError(f"checkpoint file not found: {pretrained!r}")
            raise ModelLoadError(f"unknown pretrained tag {pretrained!r} for {model_name}; known tags: {tags}")
    if not model_name.startswith("local-dir:") and not (pretrained and os.path.isfile(pretrained)):
        if model_name.startswith("hf-hub:"):
            repo = model_name.removeprefix("hf-hub:")
        else:  # a pretrained tag: the hub repo open_clip downloads it from (its cache counts as local)
            hub = open_clip.get_pretrained_cfg(model_name, pretrained).get("hf_hub", "")
            repo = "/".join(hub.strip("/").split("/")[:2]) or None
        require_hub(repo, f"open_clip weights for {arg!r}",
                    "pass a local path: 'clip:MODEL//path/to/weights' or 'clip:/path/to/open_clip_folder'")
    try:
        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as e:  # open_clip raises RuntimeError, OSError, AssertionError, KeyError...
        if model_name.startswith("local-dir:") or (pretrained and os.path.isfile(pretrained)):
            raise ModelLoadError(f"could not load open_clip model from {arg!r}: {e}") from e
        raise ModelLoadError(
            f"could not fetch open_clip weights for {arg!r}. {OFFLINE_HINT}: 'clip:MODEL//path/to/weights' "
            f"or 'clip:/path/to/open_clip_folder'. Cause: {str(e)[:300]}"
        ) from e
    backbone = OpenClipBackbone(model, tokenizer, _preprocess_from_open_clip(model), name=arg)
    return backbone.freeze().to(device=device, dtype=dtype)


def save_open_clip(model: nn.Module, model_cfg: dict, folder: str | os.PathLike, preprocess_cfg: dict | None = None) -> Path:
    """Save an open_clip ``CLIP`` model in the hub folder layout (``open_clip_config.json`` + safetensors)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pp = {"mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD)}
    pp.update(preprocess_cfg or {})
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": pp}, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


# ----------------------------------------------------------------------------------------------
# transformers
# ----------------------------------------------------------------------------------------------
class HFClipBackbone(ClipBackbone):
    """Wraps a transformers ``CLIPModel`` and its tokenizer."""

    def __init__(self, model: nn.Module, tokenizer, preprocess: ClipPreprocess, name: str = "") -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.name = name
        self.max_length = int(model.config.text_config.max_position_embeddings)

    @staticmethod
    def _features(out) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._features(self.model.get_image_features(pixel_values=pixels))

    def _text_features(self, prompts: list[str]) -> torch.Tensor:
        self._warn_if_truncated(prompts, [len(ids) for ids in self.tokenizer(prompts, truncation=False)["input_ids"]],
                                self.max_length)
        tok = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        return self._features(self.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]))

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().float()


def _hf_preprocess(folder_or_id: str, model) -> ClipPreprocess:
    """Read size/mean/std from ``preprocessor_config.json`` when present (hub repos and saved folders)."""
    size = int(model.config.vision_config.image_size)
    crop, mean, std = size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    cfg_path = Path(folder_or_id) / "preprocessor_config.json"
    if not os.path.isdir(folder_or_id):
        try:
            from huggingface_hub import hf_hub_download

            cfg_path = Path(hf_hub_download(folder_or_id, "preprocessor_config.json"))
        except Exception:
            cfg_path = None
    if cfg_path is not None and cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
        crop = cfg.get("crop_size", crop)
        crop = crop.get("height", size) if isinstance(crop, dict) else crop
        edge = cfg.get("size", crop)
        edge = edge.get("shortest_edge", crop) if isinstance(edge, dict) else edge
        resize = max(int(edge), int(crop))  # a processor may resize the shortest side beyond its crop
    else:
        resize = crop
    return ClipPreprocess(size=int(crop), mean=mean, std=std, crop="floor", resize=resize)  # crop: margin // 2


def load_hf_clip(arg: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 processor: str | None = None, family: str = "hfclip") -> HFClipBackbone:
    """Load a transformers ``CLIPModel`` from a hub id (``openai/clip-vit-large-patch14``) or a local folder;
    ``processor`` (hub id or folder) supplies the tokenizer and preprocessing when the model's repo has none
    (PickScore uses the LAION CLIP-H processor); ``family`` is the spec family named in error hints."""
    from transformers import AutoTokenizer, CLIPModel

    arg = model_source(arg, "transformers CLIP", family)
    hint = f"pass '{family}:/path/to/folder' (e.g. after `hf download {arg} --local-dir FOLDER`)"
    if processor and not os.path.isdir(processor):
        require_hub(processor, f"the processor {processor!r}", "pass '?processor=FOLDER'")
    try:
        model = CLIPModel.from_pretrained(arg)
        tokenizer = AutoTokenizer.from_pretrained(processor or arg)
    except OSError as e:
        if os.path.isdir(arg):
            raise ModelLoadError(f"could not load transformers CLIP from {arg!r}: {e}") from e
        raise ModelLoadError(
            f"could not fetch {arg!r} from the Hugging Face hub. {OFFLINE_HINT}: {hint.removeprefix('pass ')}. "
            f"Cause: {str(e)[:300]}"
        ) from e
    backbone = HFClipBackbone(model, tokenizer, _hf_preprocess(processor or arg, model), name=arg)
    return backbone.freeze().to(device=device, dtype=dtype)
