"""Which denoising steps carry a preference signal: the signal-to-noise ratio of the policy gradient.

D3PO's (and DDPO's) update is a score-function estimate: per image, ``Σ_t c · ∇_θ log π(x_{t-1} | x_t)``
with a coefficient ``c`` from the image's rank in its group. Its expectation is the useful direction; the
rest is noise. For estimates ``v_1 … v_n`` (one per group, i.i.d.)::

    SNR = ‖E v‖² / E‖v − E v‖²          (per group; ÷ group size k: per sample drawn)

estimated without bias from ``‖Σv‖²`` and ``Σ‖v‖²``. After ``N`` samples the accumulated update has signal
over noise ``√(N · SNR_per_sample)``, whatever the learning rate, so a step whose gradient is large but
signal-free (the last, low-noise DDIM step: ``∇ log π ∝ ε / σ_t``) drowns the rest when all steps are
summed. ``benchmarks/d3po_gradient_snr.py`` measures it on ShapesWorld.
"""

from __future__ import annotations

import torch

from diffusion_align.rollout import Rollout, transition_log_prob


def gradient_snr(v: torch.Tensor) -> float:
    """Unbiased ``‖E v‖² / E‖v − E v‖²`` of ``n ≥ 2`` i.i.d. estimates ``v`` ``[n, P]`` (may come out
    slightly negative when the signal is nil)."""
    if v.ndim != 2 or v.shape[0] < 2:
        raise ValueError(f"need [n >= 2, P] estimates, got {tuple(v.shape)}")
    v = v.double()
    n, total = v.shape[0], v.sum(0)
    sq = (v * v).sum()
    mean_sq = (total @ total - sq) / (n * (n - 1))  # unbiased ‖E v‖²
    var = sq / n - mean_sq  # E‖v‖² − ‖E v‖²
    return float(mean_sq / var)


def rank_advantages(scores: torch.Tensor) -> torch.Tensor:
    """D3PO's net coefficient of each image of a group ``[G, k]``: with a loss summed over all C(k,2) pairs
    (σ ≈ ½ near the reference), image ``i`` is pushed up ``Σ_j sign(s_i − s_j)`` times."""
    return torch.sign(scores[:, :, None] - scores[:, None, :]).sum(-1)


def per_step_gradients(sched, unet, params: list[torch.nn.Parameter], rollout: Rollout, guidance: float,
                       eta: float) -> torch.Tensor:
    """``∇_θ log π(x_{t-1} | x_t)`` of every image and step: ``[B, T, P]`` with ``P`` the number of entries of
    ``params`` (flattened in order). One backward pass per image and step."""
    T = rollout.latents.shape[1] - 1
    out = torch.zeros(len(rollout), T, sum(p.numel() for p in params))
    for b in range(len(rollout)):
        one = rollout.select([b])
        for j in range(T):
            grads = torch.autograd.grad(
                transition_log_prob(sched, unet, one, torch.tensor([j]), guidance, eta).sum(), params, allow_unused=True)
            out[b, j] = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])
    return out


def group_snr(grads: torch.Tensor, scores: torch.Tensor, k: int | None = None) -> float:
    """Per-*sample* SNR of D3PO's gradient estimate from per-image gradients ``grads`` ``[G, K, P]`` (summed
    over the trained steps) and scores ``[G, K]``. With ``k`` (dividing ``K``) each group is split into
    ``K/k`` groups of ``k`` (smaller groups, same samples)."""
    G, K, _ = grads.shape
    k = k or K
    if K % k or k < 2:
        raise ValueError(f"k={k} must be >= 2 and divide the group size {K}")
    est = [(rank_advantages(scores[:, s : s + k])[..., None] * grads[:, s : s + k]).sum(1) for s in range(0, K, k)]
    return gradient_snr(torch.cat(est)) / k
