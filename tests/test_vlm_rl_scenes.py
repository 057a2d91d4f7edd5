"""The textured MountainCar (absorbing goal, arrival bonus once, the flag and car in the frame) and the
trainer of the embedded scene CLIP (caption truth, AUC, kill/resume, the exported folder as a reward)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("mujoco")

from vlm_rl.envs import EnvSpec, make_env  # noqa: E402
from vlm_rl.tasks import get_task  # noqa: E402


def test_mountain_car_goal_is_absorbing_and_pays_once():
    env = make_env(EnvSpec("mountaincar", size=(64, 96), episode_length=30), seed=0)
    env.reset(seed=0)
    assert not get_task("mountaincar").success(env)
    env.unwrapped.state = np.array([0.44, 0.05], dtype=np.float32)
    obs, r1, terminated, _, info = env.step(np.array([1.0]))
    assert info["terminated_by_env"] and not terminated
    assert r1 == pytest.approx(100 - 0.1)  # arrival bonus minus the action cost
    assert get_task("mountaincar").success(env) and np.allclose(obs, [0.45, 0.0])
    rewards = []
    for a in (-1.0, 0.0, 1.0):  # pushing back left does not leave the goal; the bonus is not paid again
        obs, r, terminated, truncated, _ = env.step(np.array([a]))
        rewards.append(r)
        assert np.allclose(obs, [0.45, 0.0]) and get_task("mountaincar").success(env) and not terminated
    assert rewards == pytest.approx([-0.1, 0.0, -0.1])
    env.reset(seed=1)  # a new episode starts in the valley again
    assert env.unwrapped.state[0] < -0.3 and not get_task("mountaincar").success(env)


def test_mountain_car_textured_frames_show_the_car_where_it_is():
    env = make_env(EnvSpec("mountaincar", size=(100, 150)), seed=0)
    env.reset(seed=0)
    frames = {}
    for x in (-1.0, -0.52, 0.45):
        env.unwrapped.state = np.array([x, 0.0], dtype=np.float32)
        frames[x] = env.render().astype(int)
    f = frames[-0.52]
    assert f.shape == (100, 150, 3) and f.dtype == np.int64
    red = (f[..., 0] > 150) & (f[..., 1] < 90) & (f[..., 2] < 90)
    yellow = (f[..., 0] > 200) & (f[..., 1] > 170) & (f[..., 2] < 80)
    assert red.sum() > 10 and yellow.sum() > 5  # the car and the flag
    cols = [np.nonzero(((g[..., 0] > 150) & (g[..., 1] < 90) & (g[..., 2] < 90)).any(0))[0].mean() for g in frames.values()]
    assert cols[0] < cols[1] < cols[2]  # the car moves right with its position
    assert f[0, :, 2].mean() > f[-1, :, 2].mean() + 50  # blue sky over green grass
    plain = make_env(EnvSpec("mountaincar", size=(100, 150), textured=False), seed=0)
    plain.reset(seed=0)
    assert (plain.render().astype(int)[..., 0] > 150).mean() > 0.5  # gymnasium's white line drawing


def test_textured_cartpole_draws_the_pole_where_the_state_puts_it():
    env = make_env(EnvSpec("cartpole", size=(100, 150)), seed=0)
    env.reset(seed=0)

    def pole_columns(x: float, theta_deg: float) -> np.ndarray:
        env.unwrapped.state = np.array([x, 0.0, np.deg2rad(theta_deg), 0.0])
        f = env.render().astype(int)
        orange = (f[..., 0] > 150) & (f[..., 1] > 60) & (f[..., 1] < 130) & (f[..., 2] < 70)
        return orange, np.nonzero(orange)

    upright, (ys, xs) = pole_columns(0.0, 0.0)
    assert upright.sum() > 40 and xs.std() < 2.5 and abs(xs.mean() - 75) < 2  # a thick vertical pole, centred
    _, (ys_r, xs_r) = pole_columns(0.0, 30.0)  # positive theta leans right (gymnasium's convention)
    top = ys_r < np.percentile(ys_r, 20)
    assert xs_r[top].mean() > 75 + 5
    _, (_, xs_l) = pole_columns(-1.5, 0.0)  # the cart (and pole) move with x: 125 px/m at 600 px, here /4
    assert abs(xs_l.mean() - (75 - 1.5 * 125 / 4)) < 3
    plain = make_env(EnvSpec("cartpole", size=(100, 150), textured=False), seed=0)
    plain.reset(seed=0)
    assert (plain.render().astype(int).sum(-1) > 700).mean() > 0.7  # gymnasium's drawing: mostly white


def test_scene_clip_truth_and_auc_by_hand():
    from vlm_rl.train_clip import auc, truth

    t = truth([["a", "c"], ["b"], []], ["a", "b", "c"])
    assert t.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    # positives 0.9, 0.4; negatives 0.5, 0.1, 0.4: pairs won 1+1+1, 0+1+0.5 -> 4.5 of 6
    assert auc(torch.tensor([0.9, 0.4, 0.5, 0.1, 0.4]), torch.tensor([1, 1, 0, 0, 0])) == pytest.approx(0.75)


@pytest.mark.slow
def test_scene_clip_resumes_to_the_same_weights_and_loads_as_a_reward(tmp_path):
    from safetensors.torch import load_file

    from mmreward import load_projection_reward
    from vlm_rl.train_clip import main as train_clip

    common = ["--tiny", "--frames-scale", "0.004", "--steps", "6", "--batch", "16", "--ckpt-every", "2",
              "--eval-every", "3", "--seed", "2", "--threads", "1"]
    data = tmp_path / "w1"
    train_clip(common + ["--work", str(data), "--out", str(tmp_path / "m1")])
    (tmp_path / "w2").mkdir()
    (tmp_path / "w2" / "data").symlink_to(data / "data")  # same frames, rendered once
    stopped = train_clip(common + ["--work", str(tmp_path / "w2"), "--out", str(tmp_path / "m2"), "--stop-after", "3"])
    assert stopped == {"steps": 3, "stopped": True} and not (tmp_path / "m2").exists()
    train_clip(common + ["--work", str(tmp_path / "w2"), "--out", str(tmp_path / "m2"), "--resume"])
    a = load_file(str(tmp_path / "m1" / "open_clip_model.safetensors"))
    b = load_file(str(tmp_path / "m2" / "open_clip_model.safetensors"))
    assert a.keys() == b.keys() and "logit_bias" in a and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "w2" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6] and "eval" in log[2]
    info = json.loads((tmp_path / "m1" / "training.json").read_text())
    assert set(info["frames"]) == {"humanoid", "cartpole", "mountaincar"}
    assert get_task("kneeling").goal in info["vocab"] and 0 <= info["held_out"]["mean_auc"] <= 1
    # the folder is the reward core's open_clip format, preprocessing as VLM-RM (squash)
    reward = load_projection_reward(f"clip:{tmp_path / 'm1'}", "a humanoid robot kneeling", "a humanoid robot", 0.0)
    assert reward.backbone.preprocess.resize_mode == "squash"
    x = torch.rand(2, 3, 48, 80, requires_grad=True)
    r = reward(x)
    assert r.shape == (2,) and torch.isfinite(r).all()
    r.sum().backward()
    assert x.grad.abs().sum() > 0


@pytest.mark.slow
def test_embedded_scene_clip_rewards_the_goal_states_on_fresh_renders():
    """``assets/vlm-rl-clip`` through the reward core (as the configs name it): on frames rendered here with
    other seeds than its training data, the VLM-RM reward (alpha 0) of each task ranks frames where the
    task's predicate holds above those where it does not."""
    from pathlib import Path

    from mmreward import load_projection_reward
    from vlm_rl.reward_wrapper import score_frames
    from vlm_rl.scene_data import render_dataset
    from vlm_rl.train_clip import auc

    folder = Path(__file__).resolve().parents[1] / "assets" / "vlm-rl-clip"
    aucs = {}
    for env_name, tasks, n in (("humanoid", ("kneeling", "standing"), 70), ("cartpole", ("cartpole",), 60),
                               ("mountaincar", ("mountaincar",), 45)):
        frames, captions = render_dataset(env_name, n, (224, 224), seed=987, progress=False)
        for name in tasks:
            task = get_task(name)
            reward = load_projection_reward(f"clip:{folder}", task.goal, task.baseline, 0.0)
            assert reward.backbone.preprocess.resize_mode == "squash"
            r = torch.from_numpy(score_frames(reward, frames.numpy()))
            y = torch.tensor([task.goal in c for c in captions], dtype=torch.float32)
            assert 0 < y.sum() < len(y)
            aucs[name] = auc(r, y)
    assert min(aucs.values()) > 0.85, aucs
