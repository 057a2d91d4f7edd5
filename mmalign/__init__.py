"""The suite's command line, ``mmalign``: one subcommand per job (see :mod:`mmalign.cli`).

The libraries are :mod:`mmreward` (the reward core), :mod:`diffusion_align` and :mod:`vlm_rl`.
"""
