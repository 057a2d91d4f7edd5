"""CLIPScore and the VLM-RM projection reward: formulas, gradients, batching, video, caching, dtype."""

import numpy as np
import pytest
import torch
from helpers import smooth_images, to_uint8_hwc
from PIL import Image

from mmreward import CLIPScore, ProjectionReward, load_backbone, load_projection_reward, load_reward

PROMPTS = ["a red circle", "two blue squares", "a green triangle above a yellow star", "a purple cross"]


@pytest.fixture(params=["clip", "hfclip"])
def spec(request, open_clip_dir, hf_clip_dir):
    return f"clip:{open_clip_dir}" if request.param == "clip" else f"hfclip:{hf_clip_dir}"


def test_gradients_reach_pixels_and_weights_stay_frozen(spec, images):
    reward = load_reward(spec)
    x = images.clone().requires_grad_(True)
    reward(x, PROMPTS).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    # every image gets its own gradient
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()
    assert all(not p.requires_grad and p.grad is None for p in reward.parameters())


def test_clipscore_modes_match_cosine(spec, images):
    bb = load_backbone(spec)
    with torch.no_grad():
        s = bb.embed_images(images).numpy()
        t = bb.encode_text(PROMPTS).numpy()
        cos = (s * t).sum(-1) / np.linalg.norm(s, axis=-1) / np.linalg.norm(t, axis=-1)
        scale = float(bb.logit_scale)
        assert np.allclose(CLIPScore(bb)(images, PROMPTS).numpy(), cos, atol=1e-5)
        assert np.allclose(CLIPScore(bb, "hessel")(images, PROMPTS).numpy(), 2.5 * np.maximum(cos, 0), atol=1e-5)
        assert np.allclose(CLIPScore(bb, "logit")(images, PROMPTS).numpy(), scale * cos, atol=1e-4)
    assert scale == pytest.approx(1 / 0.07, rel=1e-4)  # CLIP's initial temperature
    assert (cos < 0).any(), "fixture should exercise the max(cos, 0) clamp"


def test_batching_does_not_change_results(spec):
    reward = load_reward(spec)
    x = smooth_images(5, 52, 44, seed=3)
    prompts = PROMPTS + ["a cat"]
    with torch.no_grad():
        batched = reward(x, prompts)
        single = torch.cat([reward(x[i : i + 1], prompts[i : i + 1]) for i in range(5)])
        reward.batch_size = 2
        chunked = reward.score([x[i] for i in range(5)], prompts)
    assert torch.allclose(batched, single, atol=1e-5)
    assert torch.allclose(batched, chunked, atol=1e-5)


def test_score_accepts_paths_and_pil_of_mixed_sizes(spec, tmp_path):
    reward = load_reward(spec)
    a, b = smooth_images(1, 70, 50, seed=1)[0], smooth_images(1, 40, 90, seed=2)[0]
    pa, pb = Image.fromarray(to_uint8_hwc(a)), Image.fromarray(to_uint8_hwc(b))
    pb.save(tmp_path / "b.png")
    got = reward.score([pa, tmp_path / "b.png"], ["a red circle", "a blue square"])
    with torch.no_grad():
        qa = torch.from_numpy(np.array(pa)).permute(2, 0, 1).float()[None] / 255
        qb = torch.from_numpy(np.array(pb)).permute(2, 0, 1).float()[None] / 255
        ref = torch.cat([reward(qa, ["a red circle"]), reward(qb, ["a blue square"])])
    assert torch.allclose(got, ref, atol=1e-6)
    # a single string prompt is broadcast
    assert torch.allclose(reward.score([pa, pa], "a red circle"), got[:1].repeat(2), atol=1e-6)


def test_video_reward_is_mean_of_frames(spec):
    reward = load_reward(spec)
    video = smooth_images(6, seed=5).view(2, 3, 3, 48, 40)
    with torch.no_grad():
        frames = reward.frame_rewards(video, ["a red circle", "a dog"])
        assert frames.shape == (2, 3)
        direct = torch.stack([reward(video[:, t], ["a red circle", "a dog"]) for t in range(3)], 1)
        assert torch.allclose(frames, direct, atol=1e-5)
        assert torch.allclose(reward(video, ["a red circle", "a dog"]), direct.mean(1), atol=1e-5)


def test_text_embeddings_are_cached_per_prompt(spec, images, monkeypatch):
    bb = load_backbone(spec)
    calls = []
    original = bb._text_features
    monkeypatch.setattr(bb, "_text_features", lambda ps: calls.append(list(ps)) or original(ps))
    reward = CLIPScore(bb)
    first = reward(images, ["a", "b", "a", "b"])
    reward(images, ["b", "c", "a", "a"])
    assert calls == [["a", "b"], ["c"]]
    # image 1 was scored with "b" in the first call; a fresh, uncached computation gives the same value
    assert torch.allclose(first[1], CLIPScore(load_backbone(spec))(images[1:2], ["b"])[0], atol=1e-6)
    # cached embeddings equal freshly computed ones
    bb.clear_cache()
    assert torch.allclose(bb.encode_text(["c"]), reward.backbone.encode_text(["c"]))


def test_reduced_precision_and_output_dtype(spec, images):
    ref = load_reward(spec)
    low = load_reward(spec, dtype=torch.bfloat16)
    assert next(low.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        r32, r16 = ref(images, PROMPTS), low(images, PROMPTS)
    assert r16.dtype == torch.float32
    assert (r32 - r16).abs().max() < 0.05
    x = images.clone().requires_grad_(True)
    low(x, PROMPTS).sum().backward()
    assert x.grad.dtype == torch.float32 and x.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# VLM-RM projection reward
# ---------------------------------------------------------------------------------------------
def _paper_reward(s, goals, baselines, alpha):
    """Def. 1 of Rocamonde et al.: 1 - 0.5 * ||alpha * proj_L(s) + (1 - alpha) * s - g||^2, numpy."""
    g, b = goals.mean(0), baselines.mean(0)
    d = (g - b) / np.linalg.norm(g - b)
    proj = b + np.outer((s - b) @ d, d)  # orthogonal projection onto the line through b and g
    y = alpha * proj + (1 - alpha) * s - g
    return 1 - 0.5 * (y**2).sum(-1)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 1.0])
def test_projection_reward_matches_independent_numpy(spec, images, alpha):
    goal = ["a humanoid robot kneeling", "a robot on its knees"]
    baseline = ["a humanoid robot", "a robot"]
    reward = load_projection_reward(spec, goal, baseline, alpha=alpha)
    bb = reward.backbone
    with torch.no_grad():
        got = reward(images).numpy()
        s = bb.embed_images(images).numpy().astype(np.float64)
        gs = bb.encode_text(goal).numpy().astype(np.float64)
        bs = bb.encode_text(baseline).numpy().astype(np.float64)
    s /= np.linalg.norm(s, axis=-1, keepdims=True)
    assert np.allclose(got, _paper_reward(s, gs, bs, alpha), atol=1e-5)


def test_projection_alpha0_is_cosine_to_goal(spec, images):
    bb = load_backbone(spec)
    reward = ProjectionReward(bb, "a humanoid robot kneeling", "a humanoid robot", alpha=0.0)
    with torch.no_grad():
        cos = CLIPScore(bb)(images, "a humanoid robot kneeling")
        assert torch.allclose(reward(images), cos, atol=1e-5)  # ||g|| = 1: 1 - 0.5||s-g||^2 = s.g


def test_projection_alpha1_only_sees_the_goal_direction(spec):
    bb = load_backbone(spec)
    r1 = ProjectionReward(bb, "a humanoid robot kneeling", "a humanoid robot", alpha=1.0)
    r0 = ProjectionReward(bb, "a humanoid robot kneeling", "a humanoid robot", alpha=0.0)
    g, b = r1.goal, bb.encode_text(["a humanoid robot"])[0]
    d = (g - b) / (g - b).norm()
    s = torch.nn.functional.normalize(torch.randn(8, g.numel(), generator=torch.Generator().manual_seed(0)), dim=-1)
    orth = torch.randn_like(s)
    orth = orth - (orth @ d)[:, None] * d  # orthogonal to the baseline->goal line
    # alpha = 1: moving orthogonally to the line changes nothing; alpha = 0 it does
    assert torch.allclose(r1.embedding_reward(s), r1.embedding_reward(s + orth), atol=1e-5)
    assert not torch.allclose(r0.embedding_reward(s), r0.embedding_reward(s + orth), atol=1e-3)
    # alpha = 1: reward rises as the projection moves from the baseline to the goal, maximal (1) at g
    t = torch.linspace(0, 1, 6)[:, None]
    path = b + t * (g - b)
    assert (r1.embedding_reward(path).diff() > 0).all()
    assert r1.embedding_reward(g[None]).item() == pytest.approx(1.0, abs=1e-6)


def test_projection_gradients_reach_pixels(spec, images):
    reward = load_projection_reward(spec, "a robot kneeling", "a robot", alpha=0.5)
    x = images.clone().requires_grad_(True)
    reward(x).sum().backward()
    assert x.grad.abs().sum() > 0
