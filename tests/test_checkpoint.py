"""Training-state checkpoints: exact round trip, and a crash while saving keeps the previous state."""

import os

import numpy as np
import pytest
import torch

from mmreward.checkpoint import has_state, load_state, save_state


def _trained():
    m = torch.nn.Linear(3, 2)
    o = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.randn(4, 3)).sum().backward()
    o.step()
    return m, o


def test_round_trip_restores_weights_optimizer_and_rngs(tmp_path):
    m, o = _trained()
    rng = np.random.default_rng(0)
    save_state(tmp_path, m, o, step=7, extra={"elapsed": 1.5}, np_rng=rng)
    expect_torch, expect_np = torch.rand(3), rng.random()
    m2 = torch.nn.Linear(3, 2)
    o2 = torch.optim.AdamW(m2.parameters(), lr=1e-3)
    rng2 = np.random.default_rng(99)
    assert load_state(tmp_path, m2, o2, rng2) == (7, {"elapsed": 1.5})
    assert torch.equal(m.weight, m2.weight)
    assert torch.equal(o.state_dict()["state"][0]["exp_avg"], o2.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(torch.rand(3), expect_torch) and rng2.random() == expect_np


def test_crash_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    m, o = _trained()
    save_state(tmp_path, m, o, step=1)
    saved = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(1.0)

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_state(tmp_path, m, o, step=2)
    monkeypatch.undo()
    assert has_state(tmp_path)
    fresh = torch.nn.Linear(3, 2)
    assert load_state(tmp_path, fresh)[0] == 1
    assert torch.equal(fresh.weight, saved) and not torch.equal(fresh.weight, m.weight)
