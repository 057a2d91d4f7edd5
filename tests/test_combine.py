"""Ensembles (mean / WCO / UWO), weighted sums and running normalisation against numpy."""

import numpy as np
import pytest
import torch

from mmreward import Ensemble, RewardError, RunningNorm, VisionReward, WeightedSum


class Linear(VisionReward):
    """Reward = mean pixel value times ``a`` plus ``b``: exact, differentiable, prompt-free."""

    needs_prompts = False

    def __init__(self, a: float, b: float = 0.0):
        super().__init__()
        self.a, self.b = a, b

    def score_images(self, images, prompts):
        return self.a * images.mean(dim=(1, 2, 3)) + self.b


@pytest.fixture
def members():
    return [Linear(1.0), Linear(2.0, -0.5), Linear(-1.0, 1.0)]


def _member_values(images, members):
    m = images.mean(dim=(1, 2, 3)).numpy()
    return np.stack([mb.a * m + mb.b for mb in members])


@pytest.mark.parametrize("ddof", [0, 1])
def test_ensemble_aggregations_match_numpy(members, images, ddof):
    r = _member_values(images, members)
    out = Ensemble(members, "uwo", lam=0.5, ddof=ddof).evaluate(images)
    assert np.allclose(out.members.numpy(), r, atol=1e-6)
    assert np.allclose(out.mean.numpy(), r.mean(0), atol=1e-6)
    assert np.allclose(out.std.numpy(), r.std(0, ddof=ddof), atol=1e-6)
    assert np.allclose(out.reward.numpy(), r.mean(0) - 0.5 * r.var(0, ddof=ddof), atol=1e-6)
    assert np.allclose(Ensemble(members, "wco")(images).numpy(), r.min(0), atol=1e-6)
    assert np.allclose(Ensemble(members, "mean")(images).numpy(), r.mean(0), atol=1e-6)


def test_conservative_aggregations_are_below_the_mean(members, images):
    mean = Ensemble(members, "mean")(images)
    assert (Ensemble(members, "wco")(images) <= mean + 1e-7).all()
    assert (Ensemble(members, "uwo", lam=0.1)(images) <= mean + 1e-7).all()


def test_ensemble_is_differentiable(members, images):
    x = images.clone().requires_grad_(True)
    Ensemble(members, "uwo")(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_ensemble_bad_arguments(members):
    with pytest.raises(RewardError, match="aggregation"):
        Ensemble(members, "median")
    with pytest.raises(RewardError, match="at least one"):
        Ensemble([])
    with pytest.raises(RewardError, match="ddof"):
        Ensemble(members[:1], "uwo", ddof=1)


def test_weighted_sum_components(members, images):
    ws = WeightedSum([("a", members[0], 5.0), ("b", members[1], 0.01)])
    parts = ws.components(images)
    r = _member_values(images, members)
    assert np.allclose(parts["a"].numpy(), r[0]) and np.allclose(parts["b"].numpy(), r[1])
    assert np.allclose(ws(images).numpy(), 5.0 * r[0] + 0.01 * r[1], atol=1e-6)
    with pytest.raises(RewardError, match="duplicate"):
        WeightedSum([("a", members[0], 1.0), ("a", members[1], 1.0)])


def test_running_norm_matches_numpy_over_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=n) for n in (1, 7, 64, 3)]
    norm = RunningNorm()
    for b in batches:
        norm.update(torch.tensor(b))
    allv = np.concatenate(batches)
    assert norm.count.item() == len(allv)
    assert norm.mean.item() == pytest.approx(allv.mean(), rel=1e-10)
    assert norm.var.item() == pytest.approx(allv.var(), rel=1e-10)
    x = torch.tensor([0.0, 3.0, 10.0])
    expected = (x.numpy() - allv.mean()) / np.sqrt(allv.var() + 1e-8)
    assert np.allclose(norm(x, update=False).numpy(), expected, atol=1e-6)
    assert norm.count.item() == len(allv)  # update=False leaves statistics alone


def test_running_norm_state_survives_checkpoint_and_rejects_nan():
    norm = RunningNorm(clip=5.0).train()
    norm(torch.randn(100) * 3 + 1)
    fresh = RunningNorm(clip=5.0)
    fresh.load_state_dict(norm.state_dict())
    assert fresh.mean == norm.mean and fresh.m2 == norm.m2 and fresh.count == norm.count
    assert fresh(torch.tensor([1e6]), update=False).item() == 5.0
    before = norm.state_dict()
    with pytest.raises(RewardError, match="NaN"):
        norm.update(torch.tensor([1.0, float("nan")]))
    assert all(torch.equal(before[k], v) for k, v in norm.state_dict().items())  # state not corrupted
