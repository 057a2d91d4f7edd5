"""Packages of the suite. The embedded default models (``assets/``) and the shipped configs (``configs/``) are
installed as ``mmalign/assets`` and ``mmalign/configs``, where :mod:`mmreward.assets` finds them from any
working folder. Everything else is in ``pyproject.toml``."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["mmreward*", "diffusion_align*", "vlm_rl*", "mmalign*"])
    + ["mmalign.assets", "mmalign.configs"],
    package_dir={"mmalign.assets": "assets", "mmalign.configs": "configs"},
    package_data={"mmreward": ["shapes/suites/*.jsonl", "vlm/*.json"], "diffusion_align": ["*.html"], "mmalign.assets": ["**/*"], "mmalign.configs": ["*.yaml", "README.md"]},
)
