"""The VLM reward as environment wrappers: frames are rendered inside each env (before any auto-reset, so a
final step is scored on its own frame), gathered across a stable-baselines3 vector env, embedded in one
batched forward of the reward model, and returned as the reward. The env's own reward and the task's
success predicate go into ``info`` (``gt_reward``, ``success``) for logging only.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from mmreward.base import VisionReward

from .tasks import Task


class TaskInfo(gym.Wrapper):
    """Adds ``info["success"]`` (the task's predicate on the state after the step) and ``info["gt_reward"]``
    (the task's ground-truth reward: the env's own unless the task defines it)."""

    def __init__(self, env: gym.Env, task: Task) -> None:
        super().__init__(env)
        self.task = task

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["success"] = bool(self.task.success(self.env))
        info["gt_reward"] = float(reward) if self.task.gt_reward is None else self.task.gt_reward(float(reward), self.env)
        return obs, reward, terminated, truncated, info


class RenderToInfo(gym.Wrapper):
    """Renders the frame after the step into ``info["frame"]`` (``[H,W,3]`` uint8) on steps ``0, k, 2k, ...``
    of each episode (``k = every``), so the vector env can score the frames of all envs at once."""

    def __init__(self, env: gym.Env, every: int = 1) -> None:
        super().__init__(env)
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self._t = 0

    def reset(self, **kwargs):
        self._t = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._t % self.every == 0:
            info["frame"] = self.env.render()
        self._t += 1
        return obs, reward, terminated, truncated, info


def frames_to_tensor(frames: list[np.ndarray]) -> torch.Tensor:
    """``[N,3,H,W]`` float in ``[0,1]`` from ``N`` frames ``[H,W,3]`` uint8."""
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def score_frames(reward: VisionReward, frames: list[np.ndarray] | np.ndarray, batch_size: int = 64) -> np.ndarray:
    """VLM rewards ``[M]`` of ``M`` frames ``[H,W,3]`` uint8, in chunks of ``batch_size``."""
    out = [reward(frames_to_tensor(list(frames[k : k + batch_size]))).float().cpu() for k in range(0, len(frames), batch_size)]
    return torch.cat(out).numpy()


class VLMRewardVecEnv(VecEnvWrapper):
    """Replaces a vector env's rewards ``[N]`` by the VLM reward of each env's frame.

    The envs must be wrapped in :class:`RenderToInfo`. All frames of a step are scored together, in
    chunks of ``batch_size``, without gradients. With ``RenderToInfo(every=k)`` a frame is scored every k
    steps of an episode and its reward is held on the steps in between. The env's own reward is kept in
    ``info["gt_reward"]`` and the VLM reward in ``info["vlm_reward"]``.
    """

    def __init__(self, venv: VecEnv, reward: VisionReward, batch_size: int = 64) -> None:
        super().__init__(venv)
        if reward.needs_prompts:
            raise ValueError(f"{type(reward).__name__} needs per-image prompts; use a task reward such as ProjectionReward")
        self.reward = reward
        self.batch_size = batch_size
        self._held = np.zeros(self.num_envs, dtype=np.float32)

    def reset(self):
        self._held[:] = 0.0
        return self.venv.reset()

    def score(self, frames: list[np.ndarray]) -> np.ndarray:
        return score_frames(self.reward, frames, self.batch_size)

    def step_wait(self):
        obs, gt, dones, infos = self.venv.step_wait()
        idx = [i for i, info in enumerate(infos) if "frame" in info]
        if idx:
            self._held[idx] = self.score([infos[i].pop("frame") for i in idx])
        rewards = self._held.copy()
        for i, info in enumerate(infos):
            info.setdefault("gt_reward", float(gt[i]))
            info["vlm_reward"] = float(rewards[i])
        self._held[dones] = 0.0  # a new episode starts with a fresh frame (RenderToInfo renders its step 0)
        return obs, rewards, dones, infos
