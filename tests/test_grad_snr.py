"""The gradient signal-to-noise diagnostic: the unbiased estimator against known Gaussians, D3PO's rank
coefficients against the pair loss, and per-step gradients against one backward pass of their sum."""

import pytest
import torch

from diffusion_align.config import D3POConfig
from diffusion_align.grad_snr import gradient_snr, group_snr, per_step_gradients, rank_advantages
from diffusion_align.losses import d3po_loss, pair_preferences
from diffusion_align.rollout import ddim_scheduler, initial_noise, sample_rollouts, transition_log_prob
from diffusion_align.sampling import group_pairs


@pytest.mark.parametrize("signal", [0.0, 0.05, 0.3])
def test_gradient_snr_recovers_a_known_ratio(signal):
    g = torch.Generator().manual_seed(0)
    n, P = 4000, 50
    mu = torch.zeros(P)
    mu[0] = (signal * P) ** 0.5  # ‖μ‖² = signal · P = signal · E‖noise‖²
    v = mu + torch.randn(n, P, generator=g)
    assert gradient_snr(v) == pytest.approx(signal, abs=0.02)
    with pytest.raises(ValueError, match="n >= 2"):
        gradient_snr(v[:1])


@pytest.mark.parametrize("signal", [0.0, 0.3])
def test_gradient_snr_is_unbiased_at_small_sample_sizes(signal):
    """With n = 8 estimates per draw the plug-in ratio ‖v̄‖² / mean‖v − v̄‖² overshoots by about 1/(n−1)
    (‖v̄‖² carries the noise's trace / n); the unbiased estimator, averaged over 400 draws, does not."""
    g = torch.Generator().manual_seed(1)
    n, P, draws = 8, 50, 400
    mu = torch.zeros(P)
    mu[0] = (signal * P) ** 0.5
    est, plug_in = [], []
    for _ in range(draws):
        v = mu + torch.randn(n, P, generator=g)
        est.append(gradient_snr(v))
        m = v.mean(0)
        plug_in.append(float(m @ m / ((v - m) ** 2).sum(1).mean()))
    assert sum(est) / draws == pytest.approx(signal, abs=0.03)
    assert sum(plug_in) / draws - signal > 0.1  # the control: the biased estimator is told apart


def test_rank_advantages_are_the_d3po_pair_loss_gradient_near_the_reference():
    """Summed over all C(k,2) pairs at log-ratio 0 the D3PO loss's gradient w.r.t. each image's log-prob
    is -β/2 times its rank coefficient Σ_j sign(s_i - s_j) (ties: 0)."""
    scores = torch.tensor([[0.5, 1.0, 0.0, 0.5]])
    c = rank_advantages(scores)
    assert c.tolist() == [[0.0, 3.0, -3.0, 0.0]]
    logp = torch.zeros(4, requires_grad=True)
    pairs = group_pairs(1, 4)
    pref = pair_preferences(scores[0], pairs)
    beta = 0.1
    loss = d3po_loss(logp[pairs], torch.zeros(len(pairs), 2), pref, beta=beta, eps=0.1) * len(pairs)
    loss.backward()
    torch.testing.assert_close(logp.grad, -beta / 2 * c[0])


@pytest.mark.slow
def test_per_step_gradients_sum_to_one_backward_pass_and_group_snr_splits_groups(tmp_path):
    from diffusion_align.embedded.shapes_t2i import build_components, save_pipeline
    from diffusion_align.rl_trainer import add_lora
    from diffusion_align.sampling import load_pipeline

    save_pipeline(build_components(seed=0, tiny=True), tmp_path)
    pipe = load_pipeline(str(tmp_path), "cpu")
    params = add_lora(pipe.unet, D3POConfig())
    with torch.no_grad():  # off the zero start, so every LoRA matrix gets a gradient
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    ro = sample_rollouts(pipe, pipe.unet, ["a photo of a red circle"] * 4, initial_noise(pipe, [3] * 4), [1, 2, 3, 4],
                         steps=3, eta=1.0, guidance=2.0)
    sched = ddim_scheduler(pipe, 3)
    grads = per_step_gradients(sched, pipe.unet, params, ro, 2.0, 1.0)  # [4, 3, P]
    assert grads.shape == (4, 3, sum(p.numel() for p in params))
    coef = torch.tensor([1.0, -2.0, 0.5, 3.0])
    total = sum((coef * transition_log_prob(sched, pipe.unet, ro, torch.full((4,), j), 2.0, 1.0)).sum() for j in (0, 2))
    expected = torch.cat([g.flatten() for g in torch.autograd.grad(total, params)])
    got = (coef[:, None, None] * grads[:, [0, 2]]).sum((0, 1))  # batch of 1 vs 4: float32 rounding differs
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())
    assert torch.nn.functional.cosine_similarity(got, expected, dim=0) > 0.9999
    # group_snr: groups of 2 from groups of 4 are the same samples, split; a tied group contributes zero
    G = torch.randn(6, 4, 5, generator=torch.Generator().manual_seed(1))  # per image, summed over trained steps
    s = torch.tensor([[1.0, 0.0, 1.0, 0.0]] * 6)
    est = []
    for start in (0, 2):
        c = rank_advantages(s[:, start : start + 2])
        est.append((c[..., None] * G[:, start : start + 2]).sum(1))
    assert group_snr(G, s, k=2) == pytest.approx(gradient_snr(torch.cat(est)) / 2)
    with pytest.raises(ValueError, match="divide"):
        group_snr(G, s, k=3)
