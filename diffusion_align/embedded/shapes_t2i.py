"""Architecture of the embedded ShapesWorld text-to-image model, saved as a standard
``StableDiffusionPipeline`` folder (tokenizer, CLIP text encoder, UNet, AutoencoderKL, LCM scheduler)
so ``DiffusionPipeline.from_pretrained(folder)`` loads it exactly as it loads SD-Turbo.

64x64 RGB images <-> 16x16x4 latents; the UNet predicts v (``prediction_type="v_prediction"``), whose
clean-latent estimate ``x0 = sqrt(a_t) x_t - sqrt(1 - a_t) v`` the one-step student is distilled to make
exact: one step from pure noise is a full sample (SD-Turbo style) and 2-4 steps refine it (LCM sampling).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

IMAGE_SIZE = 64
LATENT_SIZE = 16
TEXT_MAX_LENGTH = 20

TEXT_CONFIG = dict(
    vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
    max_position_embeddings=TEXT_MAX_LENGTH, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=IMAGE_SIZE,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
)
UNET_CONFIG = dict(
    sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=TEXT_CONFIG["hidden_size"], attention_head_dim=8, norm_num_groups=16,
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="v_prediction", timestep_spacing="trailing", original_inference_steps=20, clip_sample=False,
    set_alpha_to_one=True, steps_offset=1,
)
TINY = {  # for tests: same layout, a few thousand parameters per block
    "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
    "vae": dict(block_out_channels=(8, 16, 16), norm_num_groups=8),
    "unet": dict(block_out_channels=(16, 32, 32), cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8),
}


def build_components(seed: int = 0, tiny: bool = False, tokenizer_dir: str | os.PathLike | None = None) -> dict:
    """Fresh (randomly initialised) pipeline components; ``tiny`` shrinks every width for tests."""
    from diffusers import AutoencoderKL, LCMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from mmreward.tokenizer_files import write_clip_tokenizer

    torch.manual_seed(seed)
    text_cfg, vae_cfg, unet_cfg = dict(TEXT_CONFIG), dict(VAE_CONFIG), dict(UNET_CONFIG)
    if tiny:
        text_cfg.update(TINY["text"])
        vae_cfg.update(TINY["vae"])
        unet_cfg.update(TINY["unet"])
    if tokenizer_dir is None:
        import tempfile

        tokenizer_dir = tempfile.mkdtemp(prefix="clip_tokenizer_")
    return {
        "tokenizer": write_clip_tokenizer(tokenizer_dir, model_max_length=TEXT_MAX_LENGTH),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**text_cfg)),
        "vae": AutoencoderKL(**vae_cfg),
        "unet": UNet2DConditionModel(**unet_cfg),
        "scheduler": LCMScheduler(**SCHEDULER_CONFIG),
    }


def make_pipeline(components: dict):
    """A ``StableDiffusionPipeline`` from components (no safety checker: synthetic shapes only)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def save_pipeline(components: dict, folder: str | os.PathLike, fp16: bool = False) -> Path:
    """Write the pipeline folder (safetensors weights); ``fp16`` halves the size on disk."""
    pipe = make_pipeline(components)
    if fp16:
        pipe = pipe.to(torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True)
    if fp16:
        load_as_float32(Path(folder) / "text_encoder" / "config.json")
    return Path(folder)


def load_as_float32(config_file: Path) -> None:
    """transformers loads a model in the dtype its config names, diffusers models in float32: with fp16
    weights on disk the text encoder would come back fp16 beside a float32 UNet and sampling would fail
    on a dtype mismatch. Naming float32 makes the whole pipeline load in float32 by default (pass
    ``torch_dtype=torch.float16`` to load it in half precision)."""
    import json

    cfg = json.loads(config_file.read_text())
    for key in ("dtype", "torch_dtype"):
        if key in cfg:
            cfg[key] = "float32"
    config_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def load_teacher(name: str, option: str = "--teacher"):
    """The diffusers pipeline folder ``name`` (resolved as an asset), progress bars off; a clear error naming
    ``option`` when there is none."""
    from diffusers import DiffusionPipeline

    from mmreward.assets import resolve_asset
    from mmreward.errors import ModelLoadError

    folder = resolve_asset(name)
    if not (Path(folder) / "model_index.json").is_file():
        raise ModelLoadError(f"{option} {name}: no diffusers pipeline folder there")
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe
