"""A masked (absorbing-state) discrete diffusion model for DNA in the style of MDLM (Sahoo et al. 2024),
as DRAKES's DNA backbone: ``subs`` parameterisation, no time conditioning, a dilated CNN denoiser.

Forward process: each base is masked independently with probability ``t`` at time ``t ∈ [0, 1]`` (the
log-linear schedule: ``move_chance(t) = t``). The denoiser maps a (possibly soft) one-hot state
``[B, L, V+1]`` (the last index is ``MASK``) to logits; :func:`x0_log_probs` turns them into
``log p_θ(x_0 | x_t)`` over the ``V`` bases, with unmasked positions copied (``subs``).

- Training loss (:func:`diffusion_loss`): the continuous-time ELBO, ``E_t (1/t) Σ_masked −log p_θ(x_0|x_t)``
  per base (nats).
- Ancestral sampler (:func:`sample`): ``steps`` steps from ``t = 1`` (all masked) to ``t = 0``; from ``t`` to
  ``s`` a masked base becomes base ``v`` with probability ``p_θ(v)·(t − s)/t`` and stays masked with ``s/t``.

A model folder holds ``config.json`` (the :class:`DenoiserConfig`) and ``model.safetensors``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from diffusion_align.dna.folders import load_folder, save_folder

NEG = -1.0e6  # "log 0" that keeps 0·log 0 terms finite


@dataclass
class DenoiserConfig:
    vocab: int = 4  # bases; the mask token is index ``vocab``
    length: int = 200
    channels: int = 64
    kernel: int = 5
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 1, 2, 4, 8])


class Block(nn.Module):
    def __init__(self, c: int, kernel: int, dilation: int):
        super().__init__()
        self.norm = nn.LayerNorm(c)
        self.conv = nn.Conv1d(c, c, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2)
        self.mix = nn.Linear(c, c)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [B, L, C]
        y = self.conv(self.norm(h).transpose(1, 2)).transpose(1, 2)
        return h + self.mix(F.gelu(y))


class Denoiser(nn.Module):
    """Dilated residual CNN: state ``[B, L, V+1]`` (one-hot or soft) → logits ``[B, L, V+1]``. The input
    goes through a linear map (an embedding for one-hot inputs, differentiable for soft ones)."""

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        if config.kernel % 2 != 1:
            raise ValueError(f"kernel must be odd, got {config.kernel}")
        self.config = config
        c = config.channels
        self.embed = nn.Linear(config.vocab + 1, c, bias=False)
        self.pos = nn.Parameter(torch.zeros(config.length, c))
        self.blocks = nn.ModuleList(Block(c, config.kernel, d) for d in config.dilations)
        self.norm = nn.LayerNorm(c)
        self.out = nn.Linear(c, config.vocab + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.config.length, self.config.vocab + 1):
            raise ValueError(f"expected states [B, {self.config.length}, {self.config.vocab + 1}], got {tuple(x.shape)}")
        h = self.embed(x) + self.pos
        for b in self.blocks:
            h = b(h)
        return self.out(self.norm(h))


def one_hot_state(tokens: torch.Tensor, vocab: int = 4) -> torch.Tensor:
    """``[B, L]`` tokens (``vocab`` = mask) → float ``[B, L, vocab+1]``."""
    return F.one_hot(tokens, vocab + 1).float()


def x0_log_probs(model: nn.Module, state: torch.Tensor) -> torch.Tensor:
    """``log p_θ(x_0 | x_t)`` ``[B, L, V]`` (``subs``): the model's distribution at masked positions, the
    current base (log-prob 0, others ``NEG``) at unmasked ones. A position counts as masked when the mask
    is its largest entry (as the reference does for soft states)."""
    V = state.shape[-1] - 1
    logp = torch.log_softmax(model(state)[..., :V], -1)
    unmasked = state.argmax(-1) != V
    copy = torch.where(F.one_hot(state[..., :V].argmax(-1), V).bool(), 0.0, NEG)
    return torch.where(unmasked[..., None], copy, logp)


def mask_tokens(x0: torch.Tensor, t: torch.Tensor, vocab: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Forward process: each base of ``x0`` ``[B, L]`` masked with probability ``t`` ``[B]``."""
    u = torch.rand(x0.shape, generator=generator, device=x0.device)
    return torch.where(u < t[:, None], torch.full_like(x0, vocab), x0)


def diffusion_loss(model: nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None,
                   t_min: float = 1e-3) -> torch.Tensor:
    """The MDLM ELBO per base (nats), a Monte-Carlo estimate with antithetic (stratified) times; its
    expectation upper-bounds ``−log p_θ(x_0)/L``."""
    B, L = x0.shape
    V = model.config.vocab
    u = (torch.rand(1, generator=generator, device=x0.device) + torch.arange(B, device=x0.device) / B) % 1
    t = t_min + (1 - t_min) * u
    xt = mask_tokens(x0, t, V, generator)
    logp = torch.log_softmax(model(one_hot_state(xt, V))[..., :V], -1)
    nll = -logp.gather(-1, x0[..., None])[..., 0]  # [B, L]
    masked = (xt == V).float()
    return ((nll * masked).sum(1) / t).mean() / L


def timesteps(steps: int) -> torch.Tensor:
    """``[steps + 1]`` times from 1 to 0 (the move chances of the sampler's steps)."""
    return torch.linspace(1.0, 0.0, steps + 1)


def step_probs(logp_x0: torch.Tensor, t: float, s: float) -> torch.Tensor:
    """``[B, L, V+1]`` probabilities of ``x_s`` for a masked position at ``t``: ``p(v)·(t−s)/t`` for the bases,
    ``s/t`` for staying masked."""
    stay = torch.full_like(logp_x0[..., :1], s / t)
    return torch.cat([logp_x0.exp() * (t - s) / t, stay], -1)


def gumbel(shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Standard Gumbel noise ``−log(−log u)``."""
    u = torch.rand(shape, generator=generator, device=device).clamp_min(1e-20)
    return -torch.log((-torch.log(u)).clamp_min(1e-20))


@torch.no_grad()
def sample(model: nn.Module, n: int, steps: int = 64, generator: torch.Generator | None = None,
           batch: int = 256, progress: bool = False) -> torch.Tensor:
    """``int64 [n, L]`` sequences from the ancestral sampler (Gumbel-max categorical draws)."""
    from tqdm import tqdm

    cfg = model.config
    V, L = cfg.vocab, cfg.length
    device = next(model.parameters()).device
    ts = timesteps(steps).tolist()
    out = []
    for k in tqdm(range(0, n, batch), desc="sampling", disable=not progress):
        b = min(batch, n - k)
        x = torch.full((b, L), V, dtype=torch.long, device=device)
        for i in range(steps):
            q = step_probs(x0_log_probs(model, one_hot_state(x, V)), ts[i], ts[i + 1])
            draw = (q.clamp_min(1e-30).log() + gumbel(q.shape, generator, device)).argmax(-1)
            x = torch.where(x == V, draw, x)
        out.append(x)
    x = torch.cat(out)
    assert (x != V).all(), "the last step unmasks every position"
    return x


# ------------------------------------------------------------------------------- save / load
CONFIG_FILE = "config.json"


def save_model(model: Denoiser, folder: str | Path, extra: dict | None = None) -> None:
    save_folder(model, folder, CONFIG_FILE, "mdlm-dna", extra)


def load_model(folder: str | Path, device="cpu") -> Denoiser:
    """A :class:`Denoiser` from a folder written by :func:`save_model` (safetensors, no pickle)."""
    fields = DenoiserConfig.__dataclass_fields__
    model = load_folder(folder, CONFIG_FILE, "mdlm-dna", what="a DNA diffusion model",
                        build=lambda meta: Denoiser(DenoiserConfig(**{k: v for k, v in meta.items() if k in fields})))
    return model.to(device).eval()
