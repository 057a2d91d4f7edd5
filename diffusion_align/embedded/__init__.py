"""Embedded default models of diffusion_align, built and trained by scripts in this package."""
