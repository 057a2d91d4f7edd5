"""Torch preprocessing must match the libraries' own PIL preprocessing (and keep gradients)."""

import pytest
import torch
import torch.nn.functional as F
from helpers import smooth_images, to_uint8_hwc
from PIL import Image

from mmreward import ClipPreprocess, load_backbone

SIZES = [(48, 40), (120, 90), (64, 64), (33, 70)]  # downscale, upscale, exact, odd sizes


def _pil_images(h, w, n=3):
    return [Image.fromarray(to_uint8_hwc(x)) for x in smooth_images(n, h, w, seed=h * w)]


def _tensor(pils):
    import numpy as np

    return torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1).float() / 255 for p in pils])


@pytest.mark.parametrize("h,w", SIZES)
def test_open_clip_torch_preprocess_matches_pil(open_clip_dir, h, w):
    import open_clip

    _, _, pil_pre = open_clip.create_model_and_transforms("local-dir:" + open_clip_dir)
    bb = load_backbone(f"clip:{open_clip_dir}")
    pils = _pil_images(h, w)
    ref_pixels = torch.stack([pil_pre(p) for p in pils])
    ours = bb.preprocess(_tensor(pils))
    assert ours.shape == ref_pixels.shape == (3, 3, 64, 64)
    # pixels agree up to uint8 rounding of the PIL path (measured ~0.004 in normalised units)
    assert (ours - ref_pixels).abs().mean() < 0.006
    if h != w:  # control: a different resize policy is clearly distinguishable at this tolerance
        assert (ClipPreprocess(64, resize_mode="squash")(_tensor(pils)) - ref_pixels).abs().mean() > 0.05
    cos = F.cosine_similarity(bb.encode_image(ours), bb.encode_image(ref_pixels), dim=-1)
    assert cos.min() > 0.999, cos


@pytest.mark.parametrize("h,w", SIZES)
def test_hf_clip_torch_preprocess_matches_pil(hf_clip_dir, h, w):
    from transformers import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil.from_pretrained(hf_clip_dir)
    bb = load_backbone(f"hfclip:{hf_clip_dir}")
    pils = _pil_images(h, w)
    ref_pixels = proc(images=pils, return_tensors="pt")["pixel_values"]
    ours = bb.preprocess(_tensor(pils))
    assert ours.shape == ref_pixels.shape
    assert (ours - ref_pixels).abs().mean() < 0.006  # measured 0.004-0.0045 (uint8 rounding of the PIL path)
    cos = F.cosine_similarity(bb.encode_image(ours), bb.encode_image(ref_pixels), dim=-1)
    assert cos.min() > 0.999, cos
    # control, on textured images (smooth ones hide the filter): bilinear instead of bicubic, or the
    # centre crop's odd margin put where torchvision puts it (round, not floor), is clearly distinguishable
    textured = [Image.fromarray(to_uint8_hwc(x)) for x in _textured(3, h, w, seed=h * w)]
    ref = proc(images=textured, return_tensors="pt")["pixel_values"]
    x = _tensor(textured)
    assert (bb.preprocess(x) - ref).abs().mean() < 0.006  # measured 0.0044-0.0046
    if (h, w) != (64, 64):
        bilinear = ClipPreprocess(64, bb.preprocess.mean.flatten().tolist(), bb.preprocess.std.flatten().tolist(),
                                  interpolation="bilinear", crop="floor")
        assert (bilinear(x) - ref).abs().mean() > 0.02  # measured 0.033-0.048
    rounded = ClipPreprocess(64, bb.preprocess.mean.flatten().tolist(), bb.preprocess.std.flatten().tolist())
    margin = max(rounded.resized_shape(h, w)) - 64
    if round(margin / 2) != margin // 2:  # the two conventions differ (33x70 -> 64x135: margin 71)
        assert (rounded(x) - ref).abs().mean() > 0.05  # measured 0.17


def _textured(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Smooth images with 30% per-pixel noise: fine detail, so resampling filters and pixel shifts show."""
    g = torch.Generator().manual_seed(seed)
    return (0.7 * smooth_images(n, h, w, seed=seed) + 0.3 * torch.rand(n, 3, h, w, generator=g)).clamp(0, 1)


def test_preprocess_shapes_and_modes():
    x = torch.rand(2, 3, 30, 60)
    assert ClipPreprocess(16)(x).shape == (2, 3, 16, 16)
    assert ClipPreprocess(16).resized_shape(30, 60) == (16, 32)
    assert ClipPreprocess(16, resize_mode="squash").resized_shape(30, 60) == (16, 16)
    # a constant image maps to (c - mean) / std exactly
    const = torch.full((1, 3, 40, 50), 0.5)
    p = ClipPreprocess(16, mean=(0.5, 0.25, 0.0), std=(1.0, 0.5, 0.25))(const)
    assert torch.allclose(p[0, :, 3, 3], torch.tensor([0.0, 0.5, 2.0]), atol=1e-5)
    with pytest.raises(ValueError, match="resize_mode"):
        ClipPreprocess(16, resize_mode="longest")


def test_preprocess_is_differentiable():
    x = torch.rand(2, 3, 50, 70, requires_grad=True)
    ClipPreprocess(32)(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_resize_beyond_the_crop_matches_a_transformers_processor():
    """A processor that resizes the shortest side to 40 and crops 32 (as LLaVA-style ones may)."""
    import numpy as np
    from transformers import CLIPImageProcessor

    arr = np.random.default_rng(0).integers(0, 256, (1, 48, 64, 3), dtype=np.uint8)
    ref = CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})(
        [Image.fromarray(arr[0])], return_tensors="pt")["pixel_values"]
    pre = ClipPreprocess(32, crop="floor", resize=40)
    assert pre.resized_shape(48, 64) == (40, 53)
    ours = pre(torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255)
    assert ours.shape == ref.shape and (ours - ref).abs().mean() < 0.02
    with pytest.raises(ValueError, match="at least the crop size"):
        ClipPreprocess(32, resize=16)


def test_hf_clip_loader_reads_a_resize_beyond_the_crop(tmp_path):
    """A saved CLIP folder whose processor resizes to 80 and crops 64: the loaded backbone does the same."""
    import numpy as np
    from helpers import make_tiny_hf_clip
    from transformers import CLIPImageProcessor

    from mmreward.backbones import load_hf_clip

    folder = make_tiny_hf_clip(tmp_path / "clip")
    proc = CLIPImageProcessor(size={"shortest_edge": 80}, crop_size={"height": 64, "width": 64})
    proc.save_pretrained(folder)
    pre = load_hf_clip(folder).preprocess
    assert (pre.size, pre.resize) == (64, 80)
    arr = np.random.default_rng(1).integers(0, 256, (1, 72, 96, 3), dtype=np.uint8)
    ref = proc([Image.fromarray(arr[0])], return_tensors="pt")["pixel_values"]
    ours = pre(torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255)
    assert ours.shape == ref.shape and (ours - ref).abs().mean() < 0.02
    # the crop-only reading would differ clearly
    crop_only = ClipPreprocess(64, crop="floor")(torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255)
    assert (crop_only - ref).abs().mean() > 0.05
