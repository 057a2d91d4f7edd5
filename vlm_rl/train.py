"""Train an agent with a CLIP model as its only reward (VLM-RM), with stable-baselines3.

    python -m vlm_rl.train --config configs/humanoid_kneeling.yaml [--resume] [--set key=value ...]

Writes to ``output_dir``: ``metrics.jsonl`` (per finished episode: the VLM return next to the ground-truth
return and the success rate; steps/s), ``checkpoint/`` (SB3's ``model.zip`` and replay buffer for
``--resume``, and the policy weights as ``policy.safetensors``, which :mod:`vlm_rl.evaluate` reads),
``eval.json`` and ``videos/`` at the end. Ctrl-C saves a checkpoint before exiting. With ``keep_snapshots``
each periodic checkpoint also keeps its policy as ``checkpoint/policy_<steps>.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from safetensors.torch import save_file
from stable_baselines3.common.callbacks import BaseCallback
from tqdm import tqdm

from mmreward.checkpoint import check_resumed_config, run_checkpoint_dir
from mmreward.command import run_command, with_examples
from mmreward.trainer import trim_metrics

from .builders import build_vec_env, make_agent
from .config import RLConfig


class EpisodeLogger(BaseCallback):
    """Per finished episode: VLM and ground-truth returns, the share of steps the task's predicate held;
    a progress bar over environment steps; a checkpoint every ``every`` steps."""

    def __init__(self, cfg: RLConfig, out: Path, start: int) -> None:
        super().__init__()
        self.cfg, self.out, self.every = cfg, out, cfg.checkpoint_every
        self.next_ckpt = (start // self.every + 1) * self.every
        self.start = start
        self.bar = None

    def _on_training_start(self) -> None:
        n = self.cfg.n_envs
        self.vlm, self.gt, self.succ = np.zeros(n), np.zeros(n), np.zeros(n)
        self.t0, self.steps0 = time.time(), self.num_timesteps
        self.bar = tqdm(total=self.cfg.total_steps, initial=self.start, desc=f"{self.cfg.algo} {self.cfg.task}", unit="step")
        self.file = open(self.out / "metrics.jsonl", "a")

    def _on_step(self) -> bool:
        infos, dones = self.locals["infos"], self.locals["dones"]
        for i, info in enumerate(infos):
            self.vlm[i] += info.get("vlm_reward", np.nan)
            self.gt[i] += info["gt_reward"]
            self.succ[i] += info["success"]
            if dones[i]:
                row = {"step": self.num_timesteps, "vlm_return": float(self.vlm[i]), "gt_return": float(self.gt[i]),
                       "success_fraction": float(self.succ[i] / self.cfg.episode_length),
                       "steps_per_s": (self.num_timesteps - self.steps0) / max(time.time() - self.t0, 1e-9)}
                self.file.write(json.dumps(row) + "\n")
                self.file.flush()
                self.bar.set_postfix(gt=f"{row['gt_return']:.1f}", vlm=f"{row['vlm_return']:.2f}")
                self.vlm[i] = self.gt[i] = self.succ[i] = 0.0
        self.bar.update(self.num_timesteps - self.bar.n)
        if self.num_timesteps >= self.next_ckpt:
            save_checkpoint(self.model, self.out, self.cfg.keep_snapshots)
            self.next_ckpt += self.every
        return True

    def _on_training_end(self) -> None:
        self.bar.close()
        self.file.close()


def save_checkpoint(model, out: Path, snapshot: bool = False) -> None:
    """SB3's full state (for --resume) and the policy weights as safetensors, written then renamed; with
    ``snapshot`` the weights are also kept as ``policy_<steps>.safetensors`` (for learning curves)."""
    ckpt = out / "checkpoint"
    ckpt.mkdir(parents=True, exist_ok=True)
    model.save(ckpt / "model.tmp.zip")
    if hasattr(model, "replay_buffer") and model.replay_buffer is not None:
        model.save_replay_buffer(ckpt / "replay_buffer.tmp.pkl")
        (ckpt / "replay_buffer.tmp.pkl").replace(ckpt / "replay_buffer.pkl")
    state = {k: v.detach().cpu().contiguous() for k, v in model.policy.state_dict().items()}
    save_file(state, ckpt / "policy.tmp.safetensors", metadata={"num_timesteps": str(model.num_timesteps)})
    if snapshot:
        shutil.copyfile(ckpt / "policy.tmp.safetensors", ckpt / f"policy_{model.num_timesteps}.safetensors")
    (ckpt / "policy.tmp.safetensors").replace(ckpt / "policy.safetensors")
    (ckpt / "model.tmp.zip").replace(ckpt / "model.zip")
    (ckpt / "state.json").write_text(json.dumps({"num_timesteps": int(model.num_timesteps)}))


def train(cfg: RLConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Train to ``cfg.total_steps`` environment steps (continuing a checkpoint with ``resume``)."""
    from stable_baselines3 import DQN, PPO, SAC

    out = Path(cfg.output_dir)
    # a fresh run never replaces a checkpoint unless told, --resume needs one (SB3's model.zip)
    ckpt = run_checkpoint_dir(out, resume, marker="model.zip", overwrite=overwrite)
    if resume:
        check_resumed_config(out / "config.yaml", vars(cfg))
    elif overwrite:
        for name in ("checkpoint", "videos", "metrics.jsonl", "config.yaml", "eval.json"):
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(vars(cfg), sort_keys=False))
    env = build_vec_env(cfg, cfg.seed)
    if resume:
        algo = {"sac": SAC, "ppo": PPO, "dqn": DQN}[cfg.algo]
        model = algo.load(ckpt / "model.zip", env=env)
        if (ckpt / "replay_buffer.pkl").is_file():
            model.load_replay_buffer(ckpt / "replay_buffer.pkl")
        start = int(model.num_timesteps)
        trim_metrics(out / "metrics.jsonl", lambda row: row["step"] <= start)  # episodes after the checkpoint are redone
    else:
        (out / "metrics.jsonl").unlink(missing_ok=True)
        model, start = make_agent(cfg, env), 0
    stopped_by = "budget"
    try:
        if start < cfg.total_steps:
            model.learn(cfg.total_steps - start, callback=EpisodeLogger(cfg, out, start), reset_num_timesteps=False)
    except KeyboardInterrupt:
        stopped_by = "interrupt"
    save_checkpoint(model, out, cfg.keep_snapshots and stopped_by == "budget")
    env.close()
    return {"num_timesteps": int(model.num_timesteps), "stopped_by": stopped_by, "output_dir": str(out)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in output_dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (YAML value)")
    with_examples(p, "mmalign rl train --config cartpole", "mmalign rl train --config humanoid_kneeling --resume --set total_steps=200000")
    args = p.parse_args(argv)
    cfg = RLConfig.from_cli(args.config, args.set)
    info = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if info["stopped_by"] == "interrupt":
        raise SystemExit(f"interrupted at step {info['num_timesteps']}; checkpoint kept (--resume continues)")
    from .evaluate import evaluate

    result = evaluate(cfg, Path(cfg.output_dir) / "checkpoint")
    print(json.dumps({k: v for k, v in result.items() if k != "episodes"}, indent=1))


if __name__ == "__main__":
    sys.exit(run_command(main))
