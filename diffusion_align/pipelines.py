"""A diffusers text-to-image pipeline as the parts every method needs: prompts -> conditioning, the latent
shape, one denoiser call with classifier-free guidance, latents -> images in ``[0, 1]``.

    adapter = make_adapter(pipe)                      # SD 1.x/2.x, SDXL or PixArt-α layout
    cond, uncond = adapter.encode(prompts, guidance=True)
    out = adapter.denoise(x, t, cond, uncond, guidance=3.0)   # [B,C,h,w], the mean part of the output
    images = adapter.decode(x0)                       # [B,3,H,W] float32 in [0, 1]

Conditioning is a flat dict of batch-first tensors (``encoder_hidden_states``, SDXL's ``text_embeds`` and
``time_ids``, PixArt's ``encoder_attention_mask`` ...), so trajectories can store, select, concatenate and
save it whatever the layout. ReNO's few-step generator and the D3PO/DDPO rollout both go through this
module. A denoiser with extra conditioning (a ControlNet, a video UNet) is a subclass that adds its
tensors to the dict and overrides :meth:`PipelineAdapter.model_kwargs` / :meth:`PipelineAdapter.forward`.
"""

from __future__ import annotations

from typing import ClassVar

import torch

Cond = dict[str, torch.Tensor]


class PipelineAdapter:
    """One pipeline layout. ``pipe``: a loaded diffusers pipeline (its weights are not copied)."""

    layout: ClassVar[str] = ""
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder",)

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        if self.denoiser is None or getattr(pipe, "vae", None) is None:
            raise ValueError(f"{type(pipe).__name__} has no unet/transformer and vae: not a latent text-to-image pipeline")

    # ---------------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    def image_size(self) -> int:
        """Side of the generated images in pixels."""
        size = self.denoiser.config.sample_size
        return (size if isinstance(size, int) else size[0]) * self.pipe.vae_scale_factor

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        """``(batch, C, h, w)`` of the initial noise."""
        size = self.image_size // self.pipe.vae_scale_factor
        return (batch, self.denoiser.config.in_channels, size, size)

    def modules(self) -> list[torch.nn.Module]:
        """Every weight-holding component: denoiser, VAE and text encoders."""
        names = self.text_encoders
        return [self.denoiser, self.pipe.vae] + [m for n in names if (m := getattr(self.pipe, n, None)) is not None]

    def freeze(self) -> PipelineAdapter:
        """All weights frozen (LoRA adapters added later are trainable)."""
        for m in self.modules():
            m.requires_grad_(False)
        return self

    # ------------------------------------------------------------------------------------ the parts
    def encode(self, prompts: list[str], guidance: bool = False) -> tuple[Cond, Cond | None]:
        """``(cond, uncond)`` for ``prompts`` (``uncond``: the empty/negative prompt's, when ``guidance``)."""
        if any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError("empty prompt in the batch")
        with torch.no_grad():
            return self._encode(list(prompts), guidance)

    def _encode(self, prompts: list[str], guidance: bool) -> tuple[Cond, Cond | None]:
        raise NotImplementedError

    @staticmethod
    def model_kwargs(cond: Cond) -> dict:
        """Keyword arguments of the denoiser's forward for a conditioning dict."""
        return {"encoder_hidden_states": cond["encoder_hidden_states"]}

    @classmethod
    def forward(cls, model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """One call of ``model`` (the denoiser, or a wrapper of it: DDP, LoRA) -> its output's mean part."""
        out = model(x, timestep=t, **cls.model_kwargs(cond)).sample
        c = x.shape[1]
        return out[:, :c] if out.shape[1] == 2 * c else out  # learned variance (PixArt): keep the mean part

    def denoise(self, x: torch.Tensor, t: torch.Tensor | int, cond: Cond, uncond: Cond | None = None,
                guidance: float = 1.0, model: torch.nn.Module | None = None) -> torch.Tensor:
        """:func:`guided_output` of ``model`` (default: the pipeline's denoiser) for this layout."""
        return guided_output(self.denoiser if model is None else model, x, t, cond, uncond, guidance, self.layout)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B,C,h,w]`` -> images ``[B,3,H,W]`` float32 in [0, 1] (differentiable; the VAE's
        scaling and shift factors applied; an fp16 VAE that needs it is upcast, as the pipelines do)."""
        vae = self.pipe.vae
        x = latents / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None):
            x = x + vae.config.shift_factor
        if getattr(vae.config, "force_upcast", False) and vae.dtype == torch.float16:
            vae.to(torch.float32)  # the SD/SDXL VAE overflows in fp16
        return (vae.decode(x.to(vae.dtype)).sample.float() / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def encode_images(vae, images: torch.Tensor) -> torch.Tensor:
    """Images ``[B,3,H,W]`` in [0, 1] -> latents ``[B,C,h,w]``: the posterior mean, the VAE's shift and scaling
    factors applied (the inverse of :meth:`PipelineAdapter.decode`); the VAE is frozen, so no gradients."""
    z = vae.encode((images * 2 - 1).to(vae.device, vae.dtype)).latent_dist.mean
    if getattr(vae.config, "shift_factor", None):
        z = z - vae.config.shift_factor
    return z * vae.config.scaling_factor


def guided_output(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor | int, cond: Cond,
                  uncond: Cond | None = None, guidance: float = 1.0, layout: str = "sd") -> torch.Tensor:
    """The denoiser's output ``[B,C,h,w]`` with classifier-free guidance ``u + g·(c − u)`` (none when
    ``g <= 1``). ``x``: ``[B,C,h,w]``; ``t``: a scalar or ``[B]``; ``cond``/``uncond``: conditioning dicts
    of ``layout``; ``model``: the denoiser or a wrapper of it (DDP, LoRA), run in its parameters' dtype."""
    if layout not in ADAPTERS:
        raise ValueError(f"unknown pipeline layout {layout!r}; known: {', '.join(ADAPTERS)}")
    forward = ADAPTERS[layout].forward
    t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
    dtype = next(model.parameters()).dtype
    if guidance <= 1.0:
        return forward(model, x.to(dtype), t, _cast(cond, dtype))
    if uncond is None:
        raise ValueError(f"guidance {guidance} needs the unconditional embeddings (encode with guidance=True)")
    both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
    u, c = forward(model, torch.cat([x, x]).to(dtype), torch.cat([t, t]), _cast(both, dtype)).chunk(2)
    return u + guidance * (c - u)


def _cast(cond: Cond, dtype: torch.dtype) -> Cond:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in cond.items()}


class SDAdapter(PipelineAdapter):
    """Stable Diffusion 1.x/2.x layout (SD-Turbo, the embedded ShapesWorld model): one CLIP text encoder."""

    layout = "sd"

    def _encode(self, prompts, guidance):
        neg = [""] * len(prompts) if guidance else None
        embeds, neg_embeds = self.pipe.encode_prompt(prompts, self.device, 1, guidance, negative_prompt=neg)
        return {"encoder_hidden_states": embeds}, ({"encoder_hidden_states": neg_embeds} if guidance else None)


class SDXLAdapter(PipelineAdapter):
    """SDXL layout (SDXL, SDXL-Turbo): two CLIP text encoders, the pooled text embedding and size/crop time
    ids; the negative prompt is the pipeline's default (zeros where ``force_zeros_for_empty_prompt``)."""

    layout = "sdxl"
    text_encoders = ("text_encoder", "text_encoder_2")

    def _encode(self, prompts, guidance):
        pipe = self.pipe
        embeds, neg, pooled, neg_pooled = pipe.encode_prompt(prompts, device=self.device, num_images_per_prompt=1,
                                                             do_classifier_free_guidance=guidance)
        size = self.image_size
        proj = pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None else int(pooled.shape[-1])
        ids = pipe._get_add_time_ids((size, size), (0, 0), (size, size), dtype=embeds.dtype,
                                     text_encoder_projection_dim=proj).to(self.device).repeat(len(prompts), 1)
        cond = {"encoder_hidden_states": embeds, "text_embeds": pooled, "time_ids": ids}
        return cond, ({"encoder_hidden_states": neg, "text_embeds": neg_pooled, "time_ids": ids} if guidance else None)

    @staticmethod
    def model_kwargs(cond):
        return {"encoder_hidden_states": cond["encoder_hidden_states"],
                "added_cond_kwargs": {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]}}


class PixArtAdapter(PipelineAdapter):
    """PixArt-α layout (PixArt-α, PixArt-DMD): a DiT transformer with learned variance, conditioned on T5
    embeddings and their attention mask (and, for the 1024 px model, resolution and aspect ratio)."""

    layout = "pixart"

    def _encode(self, prompts, guidance):
        embeds, mask, neg, neg_mask = self.pipe.encode_prompt(prompts, do_classifier_free_guidance=guidance,
                                                              device=self.device)
        extra = {}
        if self.denoiser.config.sample_size == 128:  # the 1024 px model's micro-conditions
            size = self.image_size
            extra = {"resolution": torch.tensor([[size, size]] * len(prompts), dtype=embeds.dtype, device=self.device),
                     "aspect_ratio": torch.ones(len(prompts), 1, dtype=embeds.dtype, device=self.device)}
        cond = {"encoder_hidden_states": embeds, "encoder_attention_mask": mask, **extra}
        return cond, ({"encoder_hidden_states": neg, "encoder_attention_mask": neg_mask, **extra} if guidance else None)

    @staticmethod
    def model_kwargs(cond):
        return {"encoder_hidden_states": cond["encoder_hidden_states"],
                "encoder_attention_mask": cond["encoder_attention_mask"],
                "added_cond_kwargs": {"resolution": cond.get("resolution"), "aspect_ratio": cond.get("aspect_ratio")}}


class AnimateDiffAdapter(SDAdapter):
    """AnimateDiff layout (a motion UNet on an SD 1.x/2.x image model, the embedded ShapesWorld text-to-video
    model): latents ``[B,C,F,h,w]``; the prompt's embeddings go to every frame; ``decode`` gives videos
    ``[B,F,3,H,W]``. ``frames`` sets the length of new latents."""

    layout = "animatediff"

    def __init__(self, pipe, frames: int = 8) -> None:
        super().__init__(pipe)
        self.frames = int(frames)

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        b, c, h, w = super().latent_shape(batch)
        return (b, c, self.frames, h, w)

    @classmethod
    def forward(cls, model, x, t, cond):
        ehs = cond["encoder_hidden_states"].repeat_interleave(x.shape[2], 0)  # [B*F, L, D]: one copy per frame
        return model(x, timestep=t, encoder_hidden_states=ehs).sample

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = latents.shape
        frames = super().decode(latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w))
        return frames.view(b, f, *frames.shape[1:])


ADAPTERS: dict[str, type[PipelineAdapter]] = {a.layout: a for a in (SDAdapter, SDXLAdapter, PixArtAdapter,
                                                                     AnimateDiffAdapter)}


def layout_of(pipe) -> str:
    """``sd``, ``sdxl``, ``pixart`` or ``animatediff``; ``ValueError`` naming the pipeline for any other."""
    if getattr(pipe, "transformer", None) is not None and "PixArt" in type(pipe).__name__:
        return "pixart"
    if type(getattr(pipe, "unet", None)).__name__ == "UNetMotionModel":
        return "animatediff"
    if getattr(pipe, "text_encoder_2", None) is not None or getattr(pipe, "tokenizer_2", None) is not None:
        return "sdxl"
    if getattr(pipe, "unet", None) is not None and getattr(pipe, "text_encoder", None) is not None:
        return "sd"
    raise ValueError("supported pipelines are Stable Diffusion 1.x/2.x, SDXL, PixArt-α and AnimateDiff layouts, "
                     f"not {type(pipe).__name__}")


def make_adapter(pipe) -> PipelineAdapter:
    """The adapter for ``pipe``'s layout (an adapter passes through unchanged)."""
    if isinstance(pipe, PipelineAdapter):
        return pipe
    return ADAPTERS[layout_of(pipe)](pipe)
