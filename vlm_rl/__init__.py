"""vlm_rl: reinforcement learning with CLIP rewards on gymnasium/MuJoCo (VLM-RM).

The environments and training land in a later issue; rewards come from :mod:`mmreward`.
"""
