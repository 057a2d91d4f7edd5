"""ImageReward loader: a tiny random BLIP (vision + cross-attending text encoder) and MLP saved in the
reference checkpoint's own key layout (``blip.visual_encoder.*`` timm-style ViT, ``blip.text_encoder.*``,
``mlp.layers.*``) loads through ``load_reward("imagereward:...")`` and scores exactly what the reference
computation gives: (MLP(text [CLS] cross-attending to the image tokens) − 0.16717) / 1.03334."""

import json

import pytest
import torch

from mmreward import load_reward
from mmreward.errors import ModelLoadError

PROMPTS = ["a red circle", "two blue squares", "a star", "four circles"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "two", "blue", "square", "##s", "star",
         "four", "circles"]
# transformers' BLIP vision layout -> the reference checkpoint's (BLIP vit.py), written out independently
TO_REFERENCE = [("embeddings.class_embedding", "cls_token"), ("embeddings.position_embedding", "pos_embed"),
                ("embeddings.patch_embedding.", "patch_embed.proj."), ("post_layernorm.", "norm."),
                (".layer_norm1.", ".norm1."), (".layer_norm2.", ".norm2."), (".self_attn.qkv.", ".attn.qkv."),
                (".self_attn.projection.", ".attn.proj."), ("encoder.layers.", "blocks.")]


@pytest.fixture(scope="module")
def tiny_image_reward(tmp_path_factory):
    from transformers import BertTokenizer, BlipTextConfig, BlipVisionConfig, BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    from mmreward.heads import MLPHead

    root = tmp_path_factory.mktemp("imagereward")
    (root / "bert").mkdir()
    (root / "bert" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tok = BertTokenizer.from_pretrained(str(root / "bert"))
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    torch.manual_seed(0)
    vision = BlipVisionModel(BlipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                              num_attention_heads=1, patch_size=16, image_size=32, layer_norm_eps=1e-6))
    med = {"architectures": ["BertModel"], "vocab_size": len(tok), "hidden_size": 32, "num_hidden_layers": 2,
           "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 40, "hidden_act": "gelu",
           "layer_norm_eps": 1e-12, "add_cross_attention": True,
           "encoder_width": 768}  # as in the published med_config.json: BLIP_Pretrain replaces it by the ViT's width
    text = BlipTextModel(BlipTextConfig(vocab_size=len(tok), hidden_size=32, encoder_hidden_size=64, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=40),
                         add_pooling_layer=False)
    mlp = MLPHead(32)
    for m in (vision, text, mlp):
        for p in m.parameters():  # LayerNorms and biases too: nothing left at its initial value
            p.data += 0.05 * torch.randn_like(p)
    state = {}
    for k, v in vision.state_dict().items():
        for a, b in TO_REFERENCE:
            k = k.replace(a, b)
        state["blip.visual_encoder." + k] = v
    state.update({"blip.text_encoder." + k: v for k, v in text.state_dict().items()})
    state.update({"mlp." + k: v for k, v in mlp.state_dict().items()})
    state["blip.vision_proj.weight"] = torch.zeros(8, 64)  # parts of BLIP_Pretrain that the reward does not use
    torch.save(state, root / "ImageReward.pt")
    (root / "med_config.json").write_text(json.dumps(med))
    return root, vision.eval(), text.eval(), mlp.eval(), tok


def test_image_reward_matches_the_reference_computation(tiny_image_reward, images):
    root, vision, text, mlp, tok = tiny_image_reward
    reward = load_reward(f"imagereward:{root}?tokenizer={root / 'bert'}")
    with torch.no_grad():
        pixels = reward.preprocess(images)
        assert pixels.shape[-1] == 32  # the vision size read from the checkpoint
        emb = vision(pixel_values=pixels).last_hidden_state
        t = tok(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        out = text(input_ids=t["input_ids"], attention_mask=t["attention_mask"], encoder_hidden_states=emb,
                   encoder_attention_mask=torch.ones(emb.shape[:-1], dtype=torch.long))
        want = (mlp(out.last_hidden_state[:, 0]) - 0.16717362830052426) / 1.0333394966054072
        got = reward(images, PROMPTS)
    assert torch.allclose(got, want, atol=1e-5)
    assert t["input_ids"][0, 0] == tok.cls_token_id and t["input_ids"].shape[1] == 35
    # the image decides: different images of one prompt score differently; differentiable (ReFL)
    x = images.clone().requires_grad_(True)
    r = reward(x, PROMPTS[0])
    assert r.std() > 1e-4
    r.sum().backward()
    assert x.grad.abs().sum() > 0


def test_image_reward_bad_checkpoints_fail_clearly(tiny_image_reward, tmp_path):
    root = tiny_image_reward[0]
    with pytest.raises(ModelLoadError, match="checkpoint not found"):
        load_reward(f"imagereward:{tmp_path / 'none.pt'}")
    torch.save({"mlp.layers.0.weight": torch.zeros(1)}, tmp_path / "ImageReward.pt")
    (tmp_path / "med_config.json").write_text((root / "med_config.json").read_text())
    with pytest.raises(ModelLoadError, match="not an ImageReward checkpoint"):
        load_reward(f"imagereward:{tmp_path}?tokenizer={root / 'bert'}")
    state = torch.load(root / "ImageReward.pt", weights_only=True)
    del state["blip.text_encoder.encoder.layer.0.crossattention.self.key.weight"]
    torch.save(state, tmp_path / "ImageReward.pt")
    with pytest.raises(ModelLoadError, match="text weights .* do not fit"):
        load_reward(f"imagereward:{tmp_path}?tokenizer={root / 'bert'}")
