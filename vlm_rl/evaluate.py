"""Replay a trained policy and judge it by the task's success predicate (no person needed).

    python -m vlm_rl.evaluate --config configs/humanoid_kneeling.yaml [--checkpoint DIR] [--episodes N] [--set k=v]

An episode succeeds when the predicate holds on at least half of its steps (the reference's protocol).
Writes ``eval.json`` (success rate, ground-truth and VLM returns per episode) and GIF videos of the first
``video_episodes`` episodes into the evaluated run: the folder holding the checkpoint (``output_dir`` for the
default ``output_dir/checkpoint``). The policy is read from ``policy.safetensors`` into a
freshly built agent: nothing is unpickled.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.torch import load_file
from stable_baselines3.common.vec_env import DummyVecEnv

from mmreward.command import run_command, with_examples
from mmreward.errors import InputFileError

from .builders import env_spec, load_task_reward, make_agent
from .config import RLConfig
from .envs import make_env
from .reward_wrapper import TaskInfo, frames_to_tensor
from .tasks import get_task


def load_policy(cfg: RLConfig, checkpoint: Path, weights: str = "policy.safetensors"):
    """An agent of ``cfg.algo`` with the weights of ``checkpoint/<weights>``."""
    path = Path(checkpoint) / weights
    if not path.is_file():
        raise InputFileError(f"no policy weights at {path} (train first: `mmalign rl train --config ...`, or pass "
                             "--checkpoint FOLDER)")
    env = DummyVecEnv([lambda: make_env(env_spec(cfg), seed=0)])
    agent = make_agent(cfg, env, for_eval=True)
    agent.policy.load_state_dict(load_file(path))
    return agent


def save_gif(frames: list[np.ndarray], path: Path, fps: int = 20) -> None:
    """Write frames ``[H,W,3]`` uint8 as a looping GIF (imageio)."""
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.stack(frames), extension=".gif", duration=int(1000 / fps), loop=0)


def evaluate(cfg: RLConfig, checkpoint: Path, episodes: int | None = None, reward=None,
             weights: str = "policy.safetensors", write: bool = True) -> dict:
    """Success rate, ground-truth and VLM returns of the policy in ``checkpoint/<weights>`` over ``episodes``
    (seeds 10000, 10001, ...); with ``write``, ``eval.json`` and the videos go to the run that holds the
    checkpoint (its parent folder)."""
    agent = load_policy(cfg, checkpoint, weights)
    episodes = cfg.eval_episodes if episodes is None else episodes
    if reward is None and cfg.reward_source == "vlm":
        reward = load_task_reward(cfg)
    task = get_task(cfg.task)
    out = Path(checkpoint).resolve().parent
    rows = []
    env = TaskInfo(make_env(env_spec(cfg)), task)  # one env (and renderer), re-seeded per episode
    for ep in range(episodes):
        obs, _ = env.reset(seed=10_000 + ep)
        frames, success, gt = [], [], 0.0
        done = False
        while not done:
            action, _ = agent.predict(obs, deterministic=True)
            obs, r, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            frames.append(env.render())
            success.append(info["success"])
            gt += info["gt_reward"]
        held = int(np.argmin(success)) if not all(success) else len(success)
        # held_from_start: steps before the predicate first fails (CartPole: the return CartPole-v1 would pay)
        row = {"episode": ep, "gt_return": gt, "success_fraction": float(np.mean(success)),
               "success": bool(np.mean(success) >= 0.5), "held_from_start": held}
        if reward is not None:
            import torch

            with torch.no_grad():
                row["vlm_return"] = float(reward(frames_to_tensor(frames)).sum())
        if write and ep < cfg.video_episodes:
            save_gif(frames, out / "videos" / f"episode_{ep}.gif")
        rows.append(row)
    env.close()
    mean = lambda k: float(np.mean([r[k] for r in rows])) if rows else None  # noqa: E731
    result = {"task": cfg.task, "episodes": rows, "success_rate": mean("success"), "gt_return": mean("gt_return"),
              "held_from_start": mean("held_from_start")}
    if rows and "vlm_return" in rows[0]:
        result["vlm_return"] = float(np.mean([r["vlm_return"] for r in rows]))
    if write:
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", default=None, help="default: OUTPUT_DIR/checkpoint")
    p.add_argument("--episodes", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (YAML value)")
    with_examples(p, "mmalign rl evaluate --config cartpole --episodes 10",
                  "mmalign rl evaluate --config cartpole --set output_dir=outputs/cartpole_b")
    args = p.parse_args(argv)
    cfg = RLConfig.from_cli(args.config, args.set)
    result = evaluate(cfg, Path(args.checkpoint or Path(cfg.output_dir) / "checkpoint"), args.episodes)
    print(json.dumps({k: v for k, v in result.items() if k != "episodes"}, indent=1))


if __name__ == "__main__":
    sys.exit(run_command(main))
