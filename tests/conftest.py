"""Shared fixtures: tiny random CLIP models saved to disk in the real open_clip / transformers layouts."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail fast instead of retrying
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

TINY_OPEN_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 48, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def make_tiny_open_clip(folder, seed: int = 0) -> str:
    import open_clip

    from mmreward import save_open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_OPEN_CLIP_CFG)
    save_open_clip(model, TINY_OPEN_CLIP_CFG, folder)
    return str(folder)


def make_tiny_hf_clip(folder, seed: int = 0) -> str:
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from mmreward.tokenizer_files import write_clip_tokenizer

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=16
        ),
        projection_dim=32,
    )
    CLIPModel(config).save_pretrained(folder)
    write_clip_tokenizer(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def open_clip_dir(tmp_path_factory) -> str:
    return make_tiny_open_clip(tmp_path_factory.mktemp("tiny_open_clip"))


@pytest.fixture(scope="session")
def hf_clip_dir(tmp_path_factory) -> str:
    return make_tiny_hf_clip(tmp_path_factory.mktemp("tiny_hf_clip"))


def smooth_images(n: int, h: int = 48, w: int = 40, seed: int = 0) -> torch.Tensor:
    """``[n,3,h,w]`` images in [0,1] with structure (gradients + blobs), not white noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    out = []
    for _ in range(n):
        a = torch.rand(3, 4, generator=g)
        img = a[:, 0, None, None] * xx + a[:, 1, None, None] * yy
        cy, cx, r = torch.rand(3, generator=g)
        blob = (((yy - cy) ** 2 + (xx - cx) ** 2) < (0.1 + 0.3 * r) ** 2).float()
        img = img + a[:, 2, None, None] * blob
        out.append((img - img.amin()) / (img.amax() - img.amin() + 1e-6))
    return torch.stack(out)


@pytest.fixture
def images() -> torch.Tensor:
    return smooth_images(4)


def to_uint8_hwc(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def interrupt_when(cmd: list[str], ready, cwd=None, wait: float = 180) -> tuple[int, str]:
    """Run ``cmd``, send it SIGINT (Ctrl-C) once ``ready()`` is true, and return ``(returncode, output)``.
    Fails if the command ends before it is ready."""
    import signal
    import subprocess
    import time

    def default_sigint() -> None:
        # a shell starts background jobs with SIGINT ignored; the child would inherit that, and Python
        # leaves an ignored SIGINT ignored (no KeyboardInterrupt): give the command the default disposition
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                            preexec_fn=default_sigint)
    try:
        deadline = time.time() + wait
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read()
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, output
