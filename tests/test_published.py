"""Published reward-model loaders, each on tiny random weights saved in that model's own layout: PickScore
(transformers CLIP + separate processor), HPSv2 (open_clip ViT state dict in a torch checkpoint), the LAION
aesthetic predictor (MLP ``layers.*`` in a .pth). Scores are checked against the formulas computed directly."""

import math

import pytest
import torch

from mmreward import load_reward
from mmreward.errors import ModelLoadError

PROMPTS = ["a red circle", "two blue squares", "a star", "four circles"]


@pytest.mark.slow
def test_pickscore_is_the_logit_scaled_cosine_with_the_processor_it_names(tmp_path, hf_clip_dir, images):
    from transformers import CLIPModel

    reward = load_reward(f"pickscore:{hf_clip_dir}")
    model = CLIPModel.from_pretrained(hf_clip_dir).eval()
    tok = reward.backbone.tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        img = model.get_image_features(pixel_values=reward.backbone.preprocess(images))
        txt = model.get_text_features(**tok)
        img, txt = (x if isinstance(x, torch.Tensor) else x.pooler_output for x in (img, txt))
        want = model.logit_scale.exp() * torch.nn.functional.cosine_similarity(img, txt)
        assert torch.allclose(reward(images, PROMPTS), want, atol=1e-4)
    # the published repo has no tokenizer of its own: the processor comes from another repo/folder
    bare = tmp_path / "pickscore_weights_only"
    model.save_pretrained(bare)
    again = load_reward(f"pickscore:{bare}?processor={hf_clip_dir}")
    with torch.no_grad():
        assert torch.allclose(again(images, PROMPTS), want, atol=1e-4)
    with pytest.raises(ModelLoadError):  # default processor: the LAION repo, not reachable here
        load_reward(f"pickscore:{bare}")


def test_hps_loads_a_torch_checkpoint_of_an_open_clip_model_and_scores_the_cosine(tmp_path, open_clip_dir, images):
    import open_clip

    model, _, _ = open_clip.create_model_and_transforms("local-dir:" + open_clip_dir)
    torch.manual_seed(1)
    for p in model.parameters():  # "fine-tuned": different from the architecture's stored weights
        p.data += 0.05 * torch.randn_like(p)
    ckpt = tmp_path / "HPS_v2_compressed.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, ckpt)
    reward = load_reward(f"hps:{ckpt}?arch=local-dir:{open_clip_dir}")
    tokenizer = open_clip.get_tokenizer("local-dir:" + open_clip_dir)
    with torch.no_grad():
        img = model.eval().encode_image(reward.backbone.preprocess(images), normalize=True)
        txt = model.encode_text(tokenizer(PROMPTS), normalize=True)
        want = (img * txt).sum(-1)  # hpsv2.score: the diagonal of image @ text.T, no logit scale
        got = reward(images, PROMPTS)
    assert torch.allclose(got, want, atol=1e-5) and got.abs().max() <= 1
    with pytest.raises(ModelLoadError, match="neither a version"):
        load_reward("hps:/nowhere/HPS.pt")
    torch.save({"state_dict": {"visual.bad": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError, match="does not fit"):
        load_reward(f"hps:{tmp_path / 'bad.pt'}?arch=local-dir:{open_clip_dir}")


def test_aesthetic_predictor_layout_scores_the_normalised_image_embedding(tmp_path, open_clip_dir, images):
    g = torch.Generator().manual_seed(0)
    sizes = [(1024, 32), (128, 1024), (64, 128), (16, 64), (1, 16)]
    state = {}
    for i, (o, n) in zip((0, 2, 4, 6, 7), sizes):
        state[f"layers.{i}.weight"] = torch.randn(o, n, generator=g) / math.sqrt(n)
        state[f"layers.{i}.bias"] = torch.randn(o, generator=g)
    torch.save(state, tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    reward = load_reward(f"aesthetic:{tmp_path / 'sac+logos+ava1-l14-linearMSE.pth'}?backbone=clip:{open_clip_dir}")
    assert not reward.needs_prompts
    with torch.no_grad():
        x = reward.backbone.embed_images(images)
        assert torch.allclose(x.norm(dim=-1), torch.ones(len(images)), atol=1e-5)
        for i in (0, 2, 4, 6, 7):  # the reference MLP: linear layers, dropout off at inference
            x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
        assert torch.allclose(reward(images), x.squeeze(-1), atol=1e-4)


def test_torch_checkpoints_are_read_without_unpickling_code(tmp_path, open_clip_dir):
    import collections

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"layers.0.weight": torch.zeros(2, 2), "extra": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ModelLoadError, match="tensors-only"):
        load_reward(f"aesthetic:{tmp_path / 'evil.pth'}?backbone=clip:{open_clip_dir}")
    torch.save(collections.OrderedDict(w=torch.zeros(1)), tmp_path / "other.pth")
    with pytest.raises(ModelLoadError, match="layout"):
        load_reward(f"aesthetic:{tmp_path / 'other.pth'}?backbone=clip:{open_clip_dir}")
