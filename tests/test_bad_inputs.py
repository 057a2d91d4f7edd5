"""Bad inputs give clear errors that name the problem."""

import pytest
import torch

from mmreward import RewardError, VisionReward, load_reward


@pytest.fixture(scope="module")
def reward(open_clip_dir):
    return load_reward(f"clip:{open_clip_dir}")


@pytest.mark.parametrize(
    "images, prompts, message",
    [
        (torch.rand(2, 3, 32, 32), ["a red circle", "  "], "prompt 1 is empty"),
        (torch.rand(2, 3, 32, 32), ["a red circle"], "2 images but 1 prompts"),
        (torch.rand(2, 4, 32, 32), ["a", "b"], r"shape \[B,3,H,W\].*\(2, 4, 32, 32\)"),
        (torch.rand(3, 32, 32), ["a"], r"shape \[B,3,H,W\]"),
        (torch.rand(0, 3, 32, 32), [], "empty image batch"),
        (torch.rand(1, 3, 1, 32), ["a"], "too small"),
        ((torch.rand(1, 3, 32, 32) * 255), ["a"], r"in \[0,1\].*divide uint8 images by 255"),
        ((torch.rand(1, 3, 32, 32) * 255).byte(), ["a"], "float tensor"),
        (torch.full((1, 3, 32, 32), float("nan")), ["a"], "NaN"),
        (torch.rand(1, 3, 32, 32), None, "needs prompts"),
        (torch.rand(1, 3, 32, 32), [3], "prompt 0 is a int"),
        ([[0.5]], ["a"], "float tensor"),
    ],
)
def test_bad_inputs(reward, images, prompts, message):
    with pytest.raises(RewardError, match=message):
        reward(images, prompts)


class NaNReward(VisionReward):
    needs_prompts = False

    def score_images(self, images, prompts):
        r = images.mean(dim=(1, 2, 3))
        return torch.where(torch.arange(len(r)) == 1, torch.full_like(r, float("nan")), r)


def test_nan_rewards_are_reported_with_their_index():
    with pytest.raises(RewardError, match=r"NaNReward returned non-finite rewards.*\[1\]"):
        NaNReward()(torch.rand(3, 3, 8, 8))


def test_score_errors(reward, tmp_path):
    with pytest.raises(RewardError, match="image file not found"):
        reward.score([tmp_path / "missing.png"], "a red circle")
    with pytest.raises(RewardError, match="no images"):
        reward.score([], "a")


def test_projection_reward_bad_task(open_clip_dir):
    from mmreward import load_projection_reward

    with pytest.raises(RewardError, match="goal prompt 0 is empty"):
        load_projection_reward(f"clip:{open_clip_dir}", [""], "a robot")
    with pytest.raises(RewardError, match="alpha"):
        load_projection_reward(f"clip:{open_clip_dir}", "a robot kneeling", "a robot", alpha=1.5)
    with pytest.raises(RewardError, match="coincide"):
        load_projection_reward(f"clip:{open_clip_dir}", "a robot", "a robot", alpha=0.5)
    # alpha 0 needs no direction: the reward is the cosine to the (baseline) prompt, 1 - 0.5 * |s - g|^2
    same = load_projection_reward(f"clip:{open_clip_dir}", "a robot", "a robot", alpha=0.0)
    clip = load_projection_reward(f"clip:{open_clip_dir}", "a robot", "a robot kneeling", alpha=0.0)
    x = torch.rand(3, 3, 64, 64)
    assert torch.allclose(same(x), clip(x), atol=1e-6)
