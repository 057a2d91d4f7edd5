"""Helpers shared by the tests: tiny random models saved in the real layouts (open_clip, transformers CLIP,
SDXL, PixArt), smooth test images, a subprocess interrupter and D3PO margins. Import with
``from helpers import ...`` (pytest puts ``tests/`` on the path)."""

from __future__ import annotations

import numpy as np
import torch

TINY_OPEN_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 48, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def make_tiny_open_clip(folder, seed: int = 0) -> str:
    import open_clip

    from mmreward import save_open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_OPEN_CLIP_CFG)
    save_open_clip(model, TINY_OPEN_CLIP_CFG, folder)
    return str(folder)


def make_tiny_hf_clip(folder, seed: int = 0) -> str:
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from mmreward.tokenizer_files import write_clip_tokenizer

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16
        ),
        projection_dim=32,
    )
    CLIPModel(config).save_pretrained(folder)
    write_clip_tokenizer(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(folder)
    return str(folder)


def smooth_images(n: int, h: int = 48, w: int = 40, seed: int = 0) -> torch.Tensor:
    """``[n,3,h,w]`` images in [0,1] with structure (gradients + blobs), not white noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    out = []
    for _ in range(n):
        a = torch.rand(3, 4, generator=g)
        img = a[:, 0, None, None] * xx + a[:, 1, None, None] * yy
        cy, cx, r = torch.rand(3, generator=g)
        blob = (((yy - cy) ** 2 + (xx - cx) ** 2) < (0.1 + 0.3 * r) ** 2).float()
        img = img + a[:, 2, None, None] * blob
        out.append((img - img.amin()) / (img.amax() - img.amin() + 1e-6))
    return torch.stack(out)


def to_uint8_hwc(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def interrupt_when(cmd: list[str], ready, cwd=None, wait: float = 180) -> tuple[int, str]:
    """Run ``cmd``, send it SIGINT (Ctrl-C) once ``ready()`` is true, and return ``(returncode, output)``.
    Fails if the command ends before it is ready."""
    import signal
    import subprocess
    import time

    def default_sigint() -> None:
        # a shell starts background jobs with SIGINT ignored; the child would inherit that, and Python
        # leaves an ignored SIGINT ignored (no KeyboardInterrupt): give the command the default disposition
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                            preexec_fn=default_sigint)
    try:
        deadline = time.time() + wait
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read()
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, output


# ------------------------------------------------------------------ tiny pipelines of other layouts
#: the word-level vocabulary of the tiny PixArt tokenizer (other words map to <unk>)
PIXART_WORDS = ("a photo of red blue green yellow purple orange circle circles square squares star stars triangle "
                "triangles two three four left right above below the one and")


def make_tiny_sdxl(folder, scheduler=None) -> str:
    """A tiny SDXL-Turbo-layout pipeline (two CLIP text encoders, pooled embedding, time ids, Euler
    ancestral with trailing spacing, or ``scheduler``) saved as a pipeline folder."""
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from mmreward.tokenizer_files import write_clip_tokenizer

    torch.manual_seed(0)
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                projection_dim=32, hidden_act="gelu")
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        sample_size=64, norm_num_groups=8)
    pipe = StableDiffusionXLPipeline(
        vae=vae, unet=unet, text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text)),
        tokenizer=write_clip_tokenizer(folder / "tok1"), tokenizer_2=write_clip_tokenizer(folder / "tok2"),
        scheduler=scheduler or EulerAncestralDiscreteScheduler(timestep_spacing="trailing"))
    pipe.save_pretrained(folder / "pipe")
    return str(folder / "pipe")


def make_tiny_pixart(folder, scheduler=None) -> str:
    """A tiny PixArt-α-layout pipeline (DiT transformer with learned variance, T5 encoder, DDPM scheduler as
    the PixArt-DMD one-step model uses) saved as a pipeline folder; the tokenizer is a word-level fast
    tokenizer (a T5 sentencepiece model cannot be built offline)."""
    from diffusers import AutoencoderKL, DDPMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    torch.manual_seed(0)
    words = sorted(set(PIXART_WORDS.split()))
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                           pad_token_id=0, eos_token_id=1))
    transformer = PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        sample_size=16, norm_num_groups=8)
    pipe = PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                               scheduler=scheduler or DDPMScheduler())
    pipe.save_pretrained(folder / "pipe")
    return str(folder / "pipe")


def d3po_margins(pipe, unet, params, cfg, prompts: list[str], updates: int = 5, reference: bool = False):
    """Sample two groups of two trajectories (prompts[0] and prompts[1], each sharing an x_T), prefer the
    first of group 0 and the second of group 1, take ``updates`` D3PO steps and return ``(margin before,
    margin after, rollout)``: the preferred-minus-rejected log-probability summed over the steps."""
    from accelerate import Accelerator

    from diffusion_align.d3po import d3po_update
    from diffusion_align.rl_trainer import PolicyUpdate
    from diffusion_align.rollout import ddim_scheduler, initial_noise, sample_rollouts, transition_log_prob

    T, g = cfg.sample_steps, cfg.guidance_scale
    ro = sample_rollouts(pipe, unet, [prompts[0]] * 2 + [prompts[1]] * 2, initial_noise(pipe, [1, 1, 2, 2]), [5, 6, 7, 8],
                         steps=T, guidance=g, reference=reference)
    pairs, pref = torch.tensor([[0, 1], [2, 3]]), torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    sched = ddim_scheduler(pipe, T)
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate)

    def margin() -> float:
        with torch.no_grad():
            lp = torch.stack([transition_log_prob(sched, unet, ro, torch.full((4,), j), g, cfg.sample_eta)
                              for j in range(T)], 1).sum(1)
        return (lp[0] - lp[1] + lp[3] - lp[2]).item()

    before = margin()
    for _ in range(updates):
        d3po_update(PolicyUpdate(cfg, Accelerator(cpu=True), sched, unet, opt, params), ro, pairs, pref,
                    torch.Generator().manual_seed(0))
    return before, margin(), ro
