"""ImageReward (Xu et al., 2023): BLIP's ViT-L image encoder, its BERT text encoder cross-attending to the
image tokens, and an MLP on the text [CLS] feature; reward ``(mlp − 0.16717) / 1.03334``.

    load_reward("imagereward")                      # THUDM/ImageReward: ImageReward.pt + med_config.json
    load_reward("imagereward:/path/ImageReward.pt?med_config=/path/med_config.json&tokenizer=/path/bert")

The checkpoint is read in its own layout (``blip.visual_encoder.*``: BLIP's timm-style ViT;
``blip.text_encoder.*``: BLIP's ``med`` BERT; ``mlp.layers.*``) and mapped onto transformers' BLIP vision
and text models, which compute the same functions. The vision tower's size comes from the checkpoint;
the text tower's from ``med_config.json``. The tokenizer is ``bert-base-uncased`` plus BLIP's ``[DEC]`` and
``[ENC]`` tokens; prompts are cut to 35 tokens, as the reference does. Preprocessing (bicubic resize of the
short side to 224, centre crop, CLIP mean/std) runs in torch, so the reward is differentiable (ReFL).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from .base import VisionReward
from .errors import ModelLoadError, RewardSpecError
from .heads import MLPHead
from .preprocess import ClipPreprocess
from .published import _hub_file, read_weights

REPO = "THUDM/ImageReward"
MEAN, STD = 0.16717362830052426, 1.0333394966054072
MAX_TOKENS = 35

_VISION_RENAMES = [  # BLIP's ViT -> transformers BlipVisionModel
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
]


def vision_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``blip.visual_encoder.*`` keys renamed to transformers' BLIP vision layout."""
    out = {}
    for k, v in state.items():
        if not k.startswith("blip.visual_encoder."):
            continue
        k = k.removeprefix("blip.visual_encoder.")
        for pat, rep in _VISION_RENAMES:
            if re.match(pat, k):
                out[re.sub(pat, rep, k)] = v
                break
        else:
            raise ModelLoadError(f"unexpected ImageReward vision key blip.visual_encoder.{k}")
    return out


class ImageRewardModel(VisionReward):
    """ImageReward as a reward module: images ``[B,3,H,W]`` in [0,1] and prompts -> rewards ``[B]``."""

    def __init__(self, vision, text, mlp: MLPHead, tokenizer, image_size: int = 224) -> None:
        super().__init__()
        self.vision, self.text, self.mlp, self.tokenizer = vision, text, mlp, tokenizer
        self.preprocess = ClipPreprocess(size=image_size)  # bicubic short side, centre crop, CLIP mean/std

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        pixels = self.preprocess(images.to(self.device)).to(next(self.vision.parameters()).dtype)
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state  # [B, 1+N, Dv]
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_TOKENS,
                             return_tensors="pt").to(self.device)
        out = self.text(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                        encoder_hidden_states=image_embeds,
                        encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device))
        cls = out.last_hidden_state[:, 0].float()
        return (self.mlp(cls) - MEAN) / STD


def blip_tokenizer(source: str):
    """BERT's uncased tokenizer with BLIP's ``[DEC]`` (bos) and ``[ENC]`` tokens added."""
    from transformers import BertTokenizer

    try:
        tok = BertTokenizer.from_pretrained(source)
    except OSError as e:
        raise ModelLoadError(f"imagereward: could not load the BERT tokenizer {source!r}; pass ?tokenizer=FOLDER "
                             f"(bert-base-uncased downloaded elsewhere). Cause: {str(e)[:200]}") from e
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def load_image_reward(arg: str | None = "ImageReward-v1.0", device="cpu", dtype=torch.float32,
                      med_config: str | None = None, tokenizer: str = "bert-base-uncased",
                      vision_heads: str | None = None, **unknown) -> ImageRewardModel:
    """Load ImageReward from the hub name ``ImageReward-v1.0``, a checkpoint file, or a folder holding
    ``ImageReward.pt`` (and ``med_config.json``)."""
    from transformers import BlipTextConfig, BlipVisionConfig, BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    if unknown:
        raise RewardSpecError(f"unknown option(s) {sorted(unknown)}; imagereward accepts med_config, tokenizer, vision_heads")
    arg = arg or "ImageReward-v1.0"
    if arg == "ImageReward-v1.0":
        ckpt, med_config = _hub_file(REPO, "ImageReward.pt", "imagereward"), med_config or _hub_file(REPO, "med_config.json", "imagereward")
    else:
        path = Path(os.path.expanduser(arg))
        ckpt = path / "ImageReward.pt" if path.is_dir() else path
        if med_config is None and (ckpt.parent / "med_config.json").is_file():
            med_config = str(ckpt.parent / "med_config.json")
        if not ckpt.is_file():
            raise ModelLoadError(f"imagereward: checkpoint not found: {ckpt}")
    if med_config is None or not os.path.isfile(med_config):
        raise ModelLoadError(f"imagereward: med_config.json not found ({med_config}); pass ?med_config=PATH")
    state = read_weights(ckpt)
    med = json.loads(Path(med_config).read_text())

    vstate = vision_state(state)
    if "embeddings.position_embedding" not in vstate:
        raise ModelLoadError(f"{ckpt} is not an ImageReward checkpoint (no blip.visual_encoder.pos_embed)")
    width = vstate["embeddings.position_embedding"].shape[-1]
    patch = vstate["embeddings.patch_embedding.weight"].shape[-1]
    n_patches = vstate["embeddings.position_embedding"].shape[1] - 1
    depth = 1 + max(int(k.split(".")[2]) for k in vstate if k.startswith("encoder.layers."))
    heads = int(vision_heads) if vision_heads else max(1, width // 64)  # ViT-L: 1024 / 64 = 16 heads
    vcfg = BlipVisionConfig(hidden_size=width, intermediate_size=vstate["encoder.layers.0.mlp.fc1.weight"].shape[0],
                            num_hidden_layers=depth, num_attention_heads=heads, patch_size=patch,
                            image_size=patch * int(round(n_patches**0.5)), layer_norm_eps=1e-6, hidden_act="gelu")
    vision = BlipVisionModel(vcfg)
    tcfg = BlipTextConfig(vocab_size=med["vocab_size"], hidden_size=med["hidden_size"],
                          encoder_hidden_size=width,  # BLIP_Pretrain overrides med's encoder_width with the ViT's
                          intermediate_size=med["intermediate_size"], num_hidden_layers=med["num_hidden_layers"],
                          num_attention_heads=med["num_attention_heads"],
                          max_position_embeddings=med["max_position_embeddings"],
                          layer_norm_eps=med.get("layer_norm_eps", 1e-12), hidden_act=med.get("hidden_act", "gelu"))
    text = BlipTextModel(tcfg, add_pooling_layer=False)
    tstate = {k.removeprefix("blip.text_encoder."): v for k, v in state.items()
              if k.startswith("blip.text_encoder.") and not k.endswith("position_ids")}
    mstate = {k.removeprefix("mlp."): v for k, v in state.items() if k.startswith("mlp.")}
    mlp = MLPHead(med["hidden_size"])
    for name, module, part in (("vision", vision, vstate), ("text", text, tstate), ("mlp", mlp, mstate)):
        try:
            module.load_state_dict(part, strict=True)
        except RuntimeError as e:
            raise ModelLoadError(f"imagereward: the {name} weights of {ckpt} do not fit: {str(e)[:400]}") from e
    tok = blip_tokenizer(tokenizer)
    if len(tok) > med["vocab_size"]:
        raise ModelLoadError(f"imagereward: tokenizer has {len(tok)} tokens but the text encoder {med['vocab_size']}")
    model = ImageRewardModel(vision, text, mlp, tok, image_size=vcfg.image_size)
    return model.eval().requires_grad_(False).to(device=device, dtype=dtype)
