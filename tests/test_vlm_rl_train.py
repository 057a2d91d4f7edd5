"""vlm_rl.train / vlm_rl.evaluate end to end on CartPole with a tiny CLIP reward: metrics next to the
ground truth, checkpoint/resume, safetensors policy weights, evaluation and video; config validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("mujoco")
pytest.importorskip("stable_baselines3")

from mmreward.errors import InputFileError
from vlm_rl.config import ConfigError, RLConfig  # noqa: E402
from vlm_rl.evaluate import evaluate, load_policy  # noqa: E402
from vlm_rl.train import train  # noqa: E402


def cartpole_cfg(tmp_path, clip_dir, **over) -> RLConfig:
    data = {"task": "cartpole", "output_dir": str(tmp_path / "run"), "algo": "ppo", "n_envs": 2,
            "frame_height": 48, "frame_width": 64, "episode_length": 32, "reward_model": f"clip:{clip_dir}",
            "total_steps": 128, "checkpoint_every": 64, "eval_episodes": 2, "video_episodes": 1,
            "algo_kwargs": {"n_steps": 32, "batch_size": 32, "n_epochs": 1, "learning_rate": 3e-4}}
    return RLConfig.from_dict({**data, **over})


def test_train_logs_vlm_and_ground_truth_and_resumes(tmp_path, open_clip_dir):
    cfg = cartpole_cfg(tmp_path, open_clip_dir, keep_snapshots=True)
    info = train(cfg)
    assert info == {"num_timesteps": 128, "stopped_by": "budget", "output_dir": cfg.output_dir}
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 128 // 32  # 2 envs x 2 episodes of 32 steps
    for r in rows:
        # the ground truth is CartPole-v1's reward, 1 per step while upright (the env itself pays 1 on every
        # step once termination is removed)
        assert r["gt_return"] == pytest.approx(32 * r["success_fraction"])
        assert np.isfinite(r["vlm_return"]) and r["vlm_return"] != r["gt_return"]
        assert 0.0 <= r["success_fraction"] <= 1.0
    ckpt = tmp_path / "run" / "checkpoint"
    assert json.loads((ckpt / "state.json").read_text()) == {"num_timesteps": 128}
    agent = load_policy(cfg, ckpt)
    first = {k: v.clone() for k, v in agent.policy.state_dict().items()}
    # keep_snapshots: each checkpoint's policy is kept; the last one is the final policy
    assert sorted(f.name for f in ckpt.glob("policy_*")) == ["policy_128.safetensors", "policy_64.safetensors"]
    last = load_policy(cfg, ckpt, "policy_128.safetensors").policy.state_dict()
    early = load_policy(cfg, ckpt, "policy_64.safetensors").policy.state_dict()
    assert all(torch.equal(last[k], first[k]) for k in first) and any(not torch.equal(early[k], first[k]) for k in first)

    longer = cartpole_cfg(tmp_path, open_clip_dir, total_steps=192)
    assert train(longer, resume=True)["num_timesteps"] == 192  # continued from 128, not restarted
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows][-2:] == [192, 192] and len(rows) == 6
    moved = load_policy(longer, ckpt).policy.state_dict()
    assert any(not (moved[k] == first[k]).all() for k in first)  # the resumed run trained further


def test_a_finished_run_is_never_overwritten_and_resume_drops_rows_after_the_checkpoint(tmp_path, open_clip_dir):
    """A fresh run into a folder holding a checkpoint is refused (it used to replace the checkpoint and empty
    metrics.jsonl); --resume without one is refused; a resumed run drops the episodes a killed run logged
    after its checkpoint."""
    cfg = cartpole_cfg(tmp_path, open_clip_dir, total_steps=64)
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoint"
    before = (ckpt / "policy.safetensors").read_bytes(), (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="already holds a checkpoint: pass --resume"):
        train(cfg)
    assert ((ckpt / "policy.safetensors").read_bytes(), (tmp_path / "run" / "metrics.jsonl").read_text()) == before
    with pytest.raises(ConfigError, match="--resume: no checkpoint"):
        train(cartpole_cfg(tmp_path / "other", open_clip_dir), resume=True)
    with (tmp_path / "run" / "metrics.jsonl").open("a") as f:  # a killed run's episode past the checkpoint
        f.write(json.dumps({"step": 96, "vlm_return": 0.0, "gt_return": 0.0, "success_fraction": 0.0}) + "\n")
    train(cartpole_cfg(tmp_path, open_clip_dir, total_steps=128), resume=True)
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(96) == 0 and steps[-1] == 128


def test_evaluate_reports_success_and_writes_a_video(tmp_path, open_clip_dir):
    cfg = cartpole_cfg(tmp_path, open_clip_dir, total_steps=64)
    train(cfg)
    result = evaluate(cfg, tmp_path / "run" / "checkpoint")
    assert len(result["episodes"]) == 2 and result["success_rate"] in (0.0, 0.5, 1.0)
    for ep in result["episodes"]:
        assert ep["success"] == (ep["success_fraction"] >= 0.5)
        # CartPole's ground truth is CartPole-v1's reward: 1 on each step the pole is upright
        assert ep["gt_return"] == pytest.approx(32 * ep["success_fraction"])
        assert ep["held_from_start"] <= ep["gt_return"] and (ep["held_from_start"] == 32) == (ep["gt_return"] == 32)
        assert np.isfinite(ep["vlm_return"])
    gif = tmp_path / "run" / "videos" / "episode_0.gif"
    from PIL import Image

    with Image.open(gif) as im:
        assert im.size == (64, 48) and im.n_frames == 32
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["success_rate"] == result["success_rate"]
    with pytest.raises(InputFileError, match="no policy weights"):
        load_policy(cfg, tmp_path / "nowhere")
    # evaluating a run elsewhere writes into that run, not the config's output_dir
    import shutil

    shutil.copytree(tmp_path / "run" / "checkpoint", tmp_path / "other" / "checkpoint")
    evaluate(cfg, tmp_path / "other" / "checkpoint", episodes=1)
    assert json.loads((tmp_path / "other" / "eval.json").read_text())["episodes"][0]["episode"] == 0
    assert (tmp_path / "other" / "videos" / "episode_0.gif").is_file()
    assert len(json.loads((tmp_path / "run" / "eval.json").read_text())["episodes"]) == 2  # untouched


def test_config_validation():
    bad = [({"task": "cartwheel"}, "task must be one of"), ({"algo": "a2c"}, "algo must be one of"),
           ({"alpha": 1.5}, "alpha must be in"), ({"goal": " "}, "goal must be a non-empty"),
           ({"reward_every": 0}, "reward_every must be >= 1"), ({"algo": "dqn"}, "dqn needs a discrete"),
           ({"algo_kwargs": [1]}, "algo_kwargs must be a mapping"), ({"n_env": 2}, "unknown config key")]
    for data, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            RLConfig.from_dict(data)
    cfg = RLConfig.from_dict({"task": "kneeling"})
    assert cfg.goal_prompt == "a humanoid robot kneeling" and cfg.baseline_prompt == "a humanoid robot"


@pytest.mark.parametrize("name", ["humanoid_kneeling", "humanoid_standing", "humanoid_arms_raised", "humanoid_splits",
                                  "humanoid_lotus", "cartpole", "mountaincar"])
def test_shipped_configs_build_their_agents(name):
    from pathlib import Path

    from vlm_rl.builders import build_vec_env, make_agent

    cfg = RLConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    assert cfg.reward_source == "vlm" and cfg.goal_prompt != cfg.baseline_prompt
    small_buffer = {"buffer_size": 1000} if cfg.algo != "ppo" else {}  # off-policy agents: a small replay buffer
    small = RLConfig.from_dict({**vars(cfg), "n_envs": 1, "reward_source": "ground_truth", "frame_height": 32,
                                "frame_width": 32, "algo_kwargs": {**cfg.algo_kwargs, **small_buffer}})
    env = build_vec_env(small, 0)
    agent = make_agent(small, env)
    assert type(agent).__name__.lower() == cfg.algo and agent.gamma == cfg.algo_kwargs.get("gamma", 0.99)
    obs = env.reset()
    action, _ = agent.predict(obs)
    assert env.action_space.contains(action[0])
    env.close()


@pytest.mark.slow
def test_ctrl_c_keeps_a_checkpoint_that_resume_continues(tmp_path, open_clip_dir):
    """SIGINT to a running ``python -m vlm_rl.train``: it saves a checkpoint at the step it reached and
    exits with a message; ``--resume`` continues from that step."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml
    from helpers import interrupt_when

    cfg = cartpole_cfg(tmp_path, open_clip_dir, total_steps=1_000_000, checkpoint_every=10_000)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(vars(cfg)))
    metrics = tmp_path / "run" / "metrics.jsonl"
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "vlm_rl.train", "--config", str(path)]
    code, output = interrupt_when(cmd, lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 4, cwd=root)
    assert code == 1 and "interrupted at step" in output and "checkpoint kept" in output, output
    reached = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["num_timesteps"]
    assert 128 <= reached < 10_000 and f"interrupted at step {reached}" in output
    assert load_policy(cfg, tmp_path / "run" / "checkpoint") is not None  # the weights are complete
    rows = len(metrics.read_text().splitlines())
    done = subprocess.run(cmd + ["--resume", "--set", f"total_steps={reached + 64}", "--set", "eval_episodes=0"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["num_timesteps"] == reached + 64
    assert len(metrics.read_text().splitlines()) >= rows  # the log was continued, not restarted
