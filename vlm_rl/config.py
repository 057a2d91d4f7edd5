"""One config dataclass for a VLM-rewarded RL run (``python -m vlm_rl.train --config FILE``).

Defaults follow VLM-RM's humanoid run card where they carry over (SAC, episode 100, batch 512, tau 0.005,
gamma 0.95, lr 6e-4, alpha 0, the baseline prompt "a humanoid robot"), scaled down for 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmreward.config_file import ConfigError, YamlConfig, need

from .envs import ENV_NAMES
from .tasks import TASKS

ALGOS = ("sac", "ppo", "dqn")
__all__ = ["ALGOS", "ConfigError", "RLConfig"]


@dataclass
class RLConfig(YamlConfig):
    task: str = "kneeling"
    output_dir: str = "outputs/vlm_rl/kneeling"
    seed: int = 0

    # environment (the task names it; frames [H, W] in pixels)
    frame_height: int = 224
    frame_width: int = 224
    episode_length: int = 100
    textured: bool = True
    #: shadows, reflections and multisampling off: about 90 instead of 10 frames/s on a CPU (EGL/Mesa)
    fast_render: bool = True
    n_envs: int = 4
    subproc: bool = False  # one process per env (SubprocVecEnv) instead of all in this one

    # reward: "vlm" (the goal-baseline projection of a CLIP model) or "ground_truth" (the env's own)
    reward_source: str = "vlm"
    # any single-CLIP spec of mmreward; the reference uses clip:ViT-bigG-14/laion2b_s39b_b160k (hub)
    reward_model: str = "clip:assets/vlm-rl-clip"
    goal: str | None = None  # default: the task's goal prompt
    baseline: str | None = None  # default: the task's baseline prompt
    alpha: float = 0.0
    reward_every: int = 1  # score a frame every k steps of an episode (held in between)
    reward_batch_size: int = 64

    # agent (stable-baselines3)
    algo: str = "sac"
    total_steps: int = 100_000
    algo_kwargs: dict = field(default_factory=lambda: {
        "learning_rate": 6e-4, "batch_size": 512, "tau": 0.005, "gamma": 0.95, "learning_starts": 5_000})
    checkpoint_every: int = 20_000  # environment steps
    keep_snapshots: bool = False  # also keep each checkpoint's policy (checkpoint/policy_<steps>.safetensors)
    eval_episodes: int = 10
    video_episodes: int = 2

    def validate(self) -> None:
        need(self.task in TASKS, f"task must be one of {sorted(TASKS)}, got {self.task!r}")
        need(self.algo in ALGOS, f"algo must be one of {ALGOS}, got {self.algo!r}")
        need(self.reward_source in ("vlm", "ground_truth"), f"reward_source must be vlm or ground_truth, got {self.reward_source!r}")
        need(TASKS[self.task].env in ENV_NAMES, f"task {self.task!r} needs env {TASKS[self.task].env!r}")
        for k in ("frame_height", "frame_width"):
            need(getattr(self, k) >= 16, f"{k} must be >= 16 pixels, got {getattr(self, k)}")
        for k in ("episode_length", "n_envs", "reward_every", "reward_batch_size", "total_steps", "checkpoint_every"):
            need(getattr(self, k) >= 1, f"{k} must be >= 1, got {getattr(self, k)}")
        need(self.eval_episodes >= 0 and self.video_episodes >= 0, "eval_episodes and video_episodes must be >= 0")
        need(0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}")
        for k in ("goal", "baseline"):
            v = getattr(self, k)
            need(v is None or bool(v.strip()), f"{k} must be a non-empty prompt or null")
        need(bool(self.reward_model.strip()), "reward_model must name a CLIP model (a reward spec)")
        import mmreward  # noqa: F401  (registers the reward families)
        from mmreward.errors import RewardSpecError
        from mmreward.registry import backbone_term

        try:
            backbone_term(self.reward_model)
        except RewardSpecError as e:
            raise ConfigError(f"reward_model: {e} (e.g. 'clip:assets/vlm-rl-clip')") from e
        if self.algo == "dqn":
            need(TASKS[self.task].env == "cartpole", "dqn needs a discrete action space (cartpole)")

    @property
    def goal_prompt(self) -> str:
        return self.goal or TASKS[self.task].goal

    @property
    def baseline_prompt(self) -> str:
        return self.baseline or TASKS[self.task].baseline
