"""vlm_rl: reinforcement learning with CLIP rewards on gymnasium/MuJoCo (VLM-RM).

* :mod:`vlm_rl.envs`: the humanoid (the reference's camera, textured scene, fast offscreen rendering) and
  CartPole, without termination, fixed episode lengths;
* :mod:`vlm_rl.tasks`: goal/baseline prompts and state-based success predicates;
* :mod:`vlm_rl.reward_wrapper`: frames rendered in each env, scored in one batched forward of a reward of
  :mod:`mmreward` (the goal–baseline projection) across a stable-baselines3 vector env.
"""
