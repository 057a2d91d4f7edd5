"""InstructVideo's Segmental Video Reward with the Temporally Attenuated Reward, against its formulas
written out independently: TSN frame sampling within segments, weights exp(-λ|g - F//2|), the unnormalised
mean (the reference) and the normalised option, gradients to the sampled frames only, any image spec."""

import math

import pytest
import torch

from mmreward import SegmentalVideoReward, VisionReward, load_video_reward
from mmreward.errors import RewardError


class MeanPixel(VisionReward):
    """A transparent image reward: the mean pixel value, plus 0.1 for prompts that mention 'red'."""

    def score_images(self, images, prompts):
        return images.mean(dim=(1, 2, 3)) + torch.tensor([0.1 * ("red" in p) for p in prompts])


def video(b=2, f=16, seed=0):
    return torch.rand(b, f, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_tsn_draws_one_frame_uniformly_within_each_segment():
    r = SegmentalVideoReward(MeanPixel(), segments=4)
    idx = r.sample_frames(4000, 16, torch.Generator().manual_seed(0))
    assert idx.shape == (4000, 4)
    for i in range(4):
        seg = idx[:, i]
        assert seg.min() == 4 * i and seg.max() == 4 * i + 3  # g(i) ~ U[(i-1)F/S, iF/S - 1] (1-based)
        counts = torch.bincount(seg - 4 * i, minlength=4).float()
        assert (counts / 4000 - 0.25).abs().max() < 0.03
    assert SegmentalVideoReward(MeanPixel(), 4, "uniform").sample_frames(2, 16).tolist() == [[2, 6, 10, 14]] * 2
    assert SegmentalVideoReward(MeanPixel(), 4, "all").sample_frames(1, 8).tolist() == [list(range(8))]


@pytest.mark.parametrize("lam, normalize", [(1.0, False), (0.3, True), (0.0, False)])
def test_reward_matches_the_formula_written_out(lam, normalize):
    v, prompts = video(), ["a red circle", "a blue square"]
    r = SegmentalVideoReward(MeanPixel(), segments=4, lambda_tar=lam, normalize=normalize)
    out = r.evaluate(v, prompts, torch.Generator().manual_seed(3))
    g = r.sample_frames(2, 16, torch.Generator().manual_seed(3))  # the same draw
    assert torch.equal(out.frames, g)
    for b in range(2):
        num = den = 0.0
        for i in range(4):
            k = int(g[b, i])
            score = float(v[b, k].mean()) + (0.1 if "red" in prompts[b] else 0.0)
            w = math.exp(-lam * abs(k - 16 // 2))
            num, den = num + w * score, den + w
        expected = num / den if normalize else num / 4
        assert float(out.reward[b]) == pytest.approx(expected, rel=1e-5)
    if lam == 0.0 and not normalize:  # TAR off: the plain mean of the segment scores
        torch.testing.assert_close(out.reward, out.scores.mean(1))


def test_gradients_reach_only_the_scored_frames():
    v = video(b=1, f=8).requires_grad_(True)
    r = SegmentalVideoReward(MeanPixel(), segments=4, lambda_tar=1.0)
    out = r.evaluate(v, "a circle", torch.Generator().manual_seed(1))
    (1 - out.reward).mean().backward()  # InstructVideo's loss
    touched = v.grad.abs().sum(dim=(0, 2, 3, 4)) > 0
    assert touched.nonzero().flatten().tolist() == sorted(out.frames[0].tolist())


def test_any_image_spec_wraps_and_bad_input_is_refused(open_clip_dir):
    r = load_video_reward(f"clip:{open_clip_dir}", segments=2)
    v = torch.rand(2, 4, 3, 64, 64, requires_grad=True)
    out = r(v, ["a photo of a red circle", "a photo of a star"], generator=torch.Generator().manual_seed(0))
    assert out.shape == (2,) and torch.isfinite(out).all()
    out.sum().backward()
    assert v.grad.abs().sum() > 0
    with pytest.raises(RewardError, match="cannot be split into 4 segments"):
        SegmentalVideoReward(MeanPixel(), segments=4)(video(f=3), "a")
    with pytest.raises(RewardError, match=r"video must be a tensor \[B,F,3,H,W\]"):
        SegmentalVideoReward(MeanPixel())(torch.rand(2, 3, 8, 8), "a")
    with pytest.raises(RewardError, match="unknown sampling"):
        SegmentalVideoReward(MeanPixel(), sampling="random")
    with pytest.raises(RewardError, match="lambda_tar must be >= 0"):
        SegmentalVideoReward(MeanPixel(), lambda_tar=-1)
