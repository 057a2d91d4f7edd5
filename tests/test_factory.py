"""Spec strings: parsing, loading through the real loaders, combinations and error messages."""

import time

import pytest
import torch

from mmreward import (
    CLIPScore,
    ModelLoadError,
    RewardSpecError,
    WeightedSum,
    load_reward,
    parse_spec,
    register_family,
)
from mmreward.factory import _FAMILIES

PROMPTS = ["a red circle", "two blue squares", "a green triangle", "a purple cross"]


def test_parse_spec_grammar():
    t = parse_spec("hfclip:0.01")[0]
    assert (t.family, t.arg, t.weight) == ("hfclip", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", 0.01)
    t = parse_spec("clip:ViT-H-14/laion2b_s32b_b79k")[0]
    assert (t.family, t.arg, t.weight) == ("clip", "ViT-H-14/laion2b_s32b_b79k", 1.0)
    t = parse_spec(" 5*clip:ViT-B-32//ckpt/w.safetensors?mode=hessel&w=2 ")[0]
    assert (t.arg, t.weight, t.options) == ("ViT-B-32//ckpt/w.safetensors", 5.0, {"mode": "hessel", "w": "2"})
    assert [(t.family, t.weight) for t in parse_spec("clip:1.0,hfclip:0.01")] == [("clip", 1.0), ("hfclip", 0.01)]
    assert parse_spec("CLIP")[0].arg == "ViT-H-14/laion2b_s32b_b79k"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "empty reward spec"),
        ("clip:a,,clip:b", "empty term"),
        ("pickscorez:1.0", r"unknown reward family 'pickscorez'.*known families: .*clip .*hfclip .*imagereward .*pickscore"),
        ("clip:", "missing model"),
        ("2*clip:0.5", "two weights"),
        ("clip:x?mode", "bad option"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(RewardSpecError, match=message):
        parse_spec(spec)


@pytest.mark.slow
def test_loads_local_folders_by_spec(open_clip_dir, hf_clip_dir, images):
    a = load_reward(f"clip:{open_clip_dir}")
    b = load_reward(f"clip:local-dir:{open_clip_dir}")
    assert isinstance(a, CLIPScore) and isinstance(load_reward(f"hfclip:{hf_clip_dir}"), CLIPScore)
    with torch.no_grad():
        assert torch.allclose(a(images, PROMPTS), b(images, PROMPTS))
    # MODEL//file loads the weights into the named architecture: a tiny checkpoint does not fit ViT-B-32
    with pytest.raises(ModelLoadError, match="could not load open_clip model"):
        load_reward(f"clip:ViT-B-32//{open_clip_dir}/open_clip_model.safetensors")


@pytest.mark.slow
def test_model_file_spec_loads_weights_into_named_architecture(tmp_path, images):
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = open_clip.create_model("RN50").eval()  # a real architecture, random weights
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "rn50.safetensors"))
    reward = load_reward(f"clip:RN50//{tmp_path}/rn50.safetensors")
    with torch.no_grad():
        ours = reward(images[:1], PROMPTS[:1])
        ref_img = model.encode_image(reward.backbone.preprocess(images[:1]))
        ref_txt = model.encode_text(open_clip.get_tokenizer("RN50")(PROMPTS[:1]))
        ref = torch.nn.functional.cosine_similarity(ref_img, ref_txt)
    assert torch.allclose(ours, ref, atol=1e-5)


@pytest.mark.slow
def test_weighted_combination_equals_manual_sum(open_clip_dir, hf_clip_dir, images):
    combo = load_reward(f"clip:{open_clip_dir}?mode=logit, 0.5*hfclip:{hf_clip_dir}")
    assert isinstance(combo, WeightedSum) and combo.weights == [1.0, 0.5]
    a, b = load_reward(f"clip:{open_clip_dir}?mode=logit"), load_reward(f"hfclip:{hf_clip_dir}")
    with torch.no_grad():
        parts = combo.components(images, PROMPTS)
        expected = a(images, PROMPTS) + 0.5 * b(images, PROMPTS)
        assert set(parts) == {"clip", "hfclip", "total"}
        assert torch.allclose(parts["total"], expected, atol=1e-5)
        assert torch.allclose(combo(images, PROMPTS), expected, atol=1e-5)
    x = images.clone().requires_grad_(True)
    combo(x, PROMPTS).sum().backward()
    assert x.grad.abs().sum() > 0
    same_family = load_reward(f"clip:{open_clip_dir},clip:{open_clip_dir}?mode=hessel")
    assert same_family.names == ["clip[0]", "clip[1]"]


def test_family_default_with_weight_uses_registered_default(open_clip_dir):
    register_family("tinyclip", _FAMILIES["clip"].build, open_clip_dir, "test family")
    try:
        r = load_reward("tinyclip:0.25")
        assert isinstance(r, WeightedSum) and r.weights == [0.25]
        assert r.rewards[0].backbone.name == open_clip_dir
    finally:
        _FAMILIES.pop("tinyclip")


def test_unknown_option_is_rejected(open_clip_dir):
    with pytest.raises(RewardSpecError, match="unknown option"):
        load_reward(f"clip:{open_clip_dir}?temperature=3")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("clip:ViT-B-32/openai", r"could not fetch open_clip weights.*offline.*local path"),
        ("hfclip:openai/clip-vit-large-patch14", r"could not fetch 'openai/clip-vit-large-patch14'.*offline.*hfclip:/path"),
        ("clip:/no/such/folder", "not found"),
        ("hfclip:/no/such/folder", "not found"),
        ("clip:ViT-B-32//no/such/file.safetensors", "checkpoint file not found"),
        ("clip:ViT-B-32/not_a_tag", r"unknown pretrained tag 'not_a_tag'.*known tags"),
        ("clip:ViT-B-32", "names no weights"),
        ("clip:NoSuchNet/openai", "unknown open_clip architecture"),
    ],
)
def test_load_errors_are_clear_and_fast(spec, message):
    start = time.time()
    with pytest.raises(ModelLoadError, match=message):
        load_reward(spec)
    assert time.time() - start < 30


def test_folder_of_wrong_format_is_named(open_clip_dir, hf_clip_dir):
    with pytest.raises(ModelLoadError, match="no open_clip_config.json"):
        load_reward(f"clip:{hf_clip_dir}")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_reward(f"hfclip:{open_clip_dir}")
