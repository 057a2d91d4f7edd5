"""Shared fixtures (tiny random CLIP folders, test images) and test-wide settings; helpers are in helpers.py."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail fast instead of retrying
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

from helpers import make_tiny_hf_clip, make_tiny_open_clip, smooth_images  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_threads():
    """Scripts run in-process set their ``--threads``; every test starts again from the suite's 2."""
    yield
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def open_clip_dir(tmp_path_factory) -> str:
    return make_tiny_open_clip(tmp_path_factory.mktemp("tiny_open_clip"))


@pytest.fixture(scope="session")
def hf_clip_dir(tmp_path_factory) -> str:
    return make_tiny_hf_clip(tmp_path_factory.mktemp("tiny_hf_clip"))


@pytest.fixture
def images() -> torch.Tensor:
    return smooth_images(4)
