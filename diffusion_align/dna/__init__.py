"""Discrete diffusion for DNA: the ground-truth world, a masked diffusion model (MDLM) and reward oracles."""
