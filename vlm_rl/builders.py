"""What training and evaluation build the same way from a run config: the environment spec, the
vectorised environments (with the VLM reward in place of the environment's), the task reward and the
stable-baselines3 agent."""

from __future__ import annotations

from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from .config import ConfigError, RLConfig
from .envs import EnvSpec, make_env
from .reward_wrapper import RenderToInfo, TaskInfo, VLMRewardVecEnv
from .tasks import get_task


def env_spec(cfg: RLConfig) -> EnvSpec:
    return EnvSpec(get_task(cfg.task).env, (cfg.frame_height, cfg.frame_width), cfg.episode_length, cfg.textured,
                   cfg.fast_render)


def _env_fn(cfg: RLConfig, seed: int, render_every: int | None):
    def make():
        env = make_env(env_spec(cfg), seed=seed)
        if render_every is not None:
            env = RenderToInfo(env, render_every)
        return TaskInfo(env, get_task(cfg.task))

    return make


def load_task_reward(cfg: RLConfig, device: str = "cpu"):
    """The goal–baseline projection reward of ``cfg.reward_model`` (frames squashed to the model's input)."""
    from mmreward import load_projection_reward

    reward = load_projection_reward(cfg.reward_model, cfg.goal_prompt, cfg.baseline_prompt, cfg.alpha, device=device)
    reward.backbone.preprocess.resize_mode = "squash"  # as VLM-RM: non-square frames are squashed, not cropped
    return reward.eval()


def build_vec_env(cfg: RLConfig, seed: int, reward=None) -> VecEnv:
    """``cfg.n_envs`` envs; with ``reward_source: vlm`` their rewards are replaced by the VLM reward."""
    vlm = cfg.reward_source == "vlm"
    fns = [_env_fn(cfg, seed + i, cfg.reward_every if vlm else None) for i in range(cfg.n_envs)]
    venv = SubprocVecEnv(fns) if cfg.subproc and cfg.n_envs > 1 else DummyVecEnv(fns)
    if vlm:
        venv = VLMRewardVecEnv(venv, reward if reward is not None else load_task_reward(cfg), cfg.reward_batch_size)
    return venv


def make_agent(cfg: RLConfig, env: VecEnv, for_eval: bool = False):
    """A fresh SB3 agent of ``cfg.algo``; ``for_eval``: with a one-entry replay buffer (weights only)."""
    from stable_baselines3 import DQN, PPO, SAC

    algo = {"sac": SAC, "ppo": PPO, "dqn": DQN}[cfg.algo]
    kwargs = dict(cfg.algo_kwargs)
    if for_eval and cfg.algo != "ppo":
        kwargs.update(buffer_size=1, learning_starts=0)
    try:
        return algo("MlpPolicy", env, seed=cfg.seed, verbose=0, **kwargs)
    except TypeError as e:
        raise ConfigError(f"algo_kwargs {sorted(cfg.algo_kwargs)} not accepted by {algo.__name__}: {e}") from e
