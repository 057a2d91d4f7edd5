"""Parts of the embedded ShapesWorld judge, a LLaVA-layout model built from the suite's own CLIP.

* :func:`vision_from_open_clip`: an open_clip ViT (the ShapesWorld CLIP's image tower) as a transformers
  ``CLIPVisionModel`` with the same weights, and the ``CLIPImageProcessor`` of its preprocessing.
* :func:`word_tokenizer`: a word-level ``PreTrainedTokenizerFast`` (lower-cased) over a closed vocabulary.
* :func:`build_judge`: ``LlavaForConditionalGeneration`` (that vision tower, a 2-layer projector and a small
  Llama) and its ``LlavaProcessor`` with a chat template, saved and loaded like any hub LLaVA.
"""

from __future__ import annotations

import re

import torch

IMAGE_TOKEN = "<image>"
SPECIAL = ("<pad>", "<unk>", "<s>", "</s>", IMAGE_TOKEN)
#: word-level split: special tokens, words, single punctuation marks, newlines
WORD_PATTERN = r"</?s>|<[a-z]+>|\w+|[^\w\s]|\n"
CHAT_TEMPLATE = ("{% for m in messages %}{{ 'user: ' if m['role'] == 'user' else 'assistant: ' }}"
                 "{% for c in m['content'] %}{{ '<image>' + '\\n' if c['type'] == 'image' else c['text'] }}{% endfor %}"
                 "{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}")
#: the same turns with each message's text before its images, so the image tokens attend to the question
TEXT_FIRST_TEMPLATE = ("{% for m in messages %}{{ 'user: ' if m['role'] == 'user' else 'assistant: ' }}"
                       "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] + '\\n' }}{% endif %}{% endfor %}"
                       "{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ '<image>\\n' }}{% endif %}{% endfor %}"
                       "{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}")
CHAT_WORDS = ("user", "assistant", ":")  #: words of the chat template, in every vocabulary


def words_of(texts) -> list[str]:
    """The sorted distinct words of ``texts`` as :func:`word_tokenizer` splits them (lower-cased)."""
    found: set[str] = set()
    for t in texts:
        found.update(re.findall(WORD_PATTERN, t.lower()))
    return sorted(found - set(SPECIAL))


def word_tokenizer(words: list[str]):
    """A lower-casing word-level tokenizer: :data:`SPECIAL` then ``words``; unknown words map to ``<unk>``."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    extra = [w for w in CHAT_WORDS if w not in words]
    vocab = {w: i for i, w in enumerate([*SPECIAL, *[w for w in [*words, *extra] if w not in SPECIAL]])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(" ", behavior="removed"),
                                                pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")])
    from tokenizers import decoders

    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, no space before . , ?
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>")
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tok


def vision_from_open_clip(visual, mean, std):
    """``(CLIPVisionModel, CLIPImageProcessor)`` equal to open_clip's ``VisionTransformer`` ``visual``
    (class token, no attention pooling); ``mean``/``std`` its normalisation."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    width = visual.conv1.out_channels
    patch = visual.conv1.kernel_size[0]
    size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
    blocks = visual.transformer.resblocks
    heads = blocks[0].attn.num_heads
    act = "quick_gelu" if type(blocks[0].mlp.gelu).__name__ == "QuickGELU" else "gelu"
    cfg = CLIPVisionConfig(hidden_size=width, intermediate_size=blocks[0].mlp.c_fc.out_features,
                           num_hidden_layers=len(blocks), num_attention_heads=heads, image_size=size, patch_size=patch,
                           projection_dim=visual.proj.shape[1], hidden_act=act, layer_norm_eps=blocks[0].ln_1.eps)
    model = CLIPVisionModel(cfg)
    state = {"vision_model.embeddings.patch_embedding.weight": visual.conv1.weight,
             "vision_model.embeddings.class_embedding": visual.class_embedding,
             "vision_model.embeddings.position_embedding.weight": visual.positional_embedding,
             "vision_model.pre_layrnorm.weight": visual.ln_pre.weight, "vision_model.pre_layrnorm.bias": visual.ln_pre.bias,
             "vision_model.post_layernorm.weight": visual.ln_post.weight,
             "vision_model.post_layernorm.bias": visual.ln_post.bias}
    for i, b in enumerate(blocks):
        pre = f"vision_model.encoder.layers.{i}."
        q, k, v = b.attn.in_proj_weight.chunk(3)
        qb, kb, vb = b.attn.in_proj_bias.chunk(3)
        state.update({pre + "self_attn.q_proj.weight": q, pre + "self_attn.k_proj.weight": k,
                      pre + "self_attn.v_proj.weight": v, pre + "self_attn.q_proj.bias": qb,
                      pre + "self_attn.k_proj.bias": kb, pre + "self_attn.v_proj.bias": vb,
                      pre + "self_attn.out_proj.weight": b.attn.out_proj.weight,
                      pre + "self_attn.out_proj.bias": b.attn.out_proj.bias,
                      pre + "layer_norm1.weight": b.ln_1.weight, pre + "layer_norm1.bias": b.ln_1.bias,
                      pre + "layer_norm2.weight": b.ln_2.weight, pre + "layer_norm2.bias": b.ln_2.bias,
                      pre + "mlp.fc1.weight": b.mlp.c_fc.weight, pre + "mlp.fc1.bias": b.mlp.c_fc.bias,
                      pre + "mlp.fc2.weight": b.mlp.c_proj.weight, pre + "mlp.fc2.bias": b.mlp.c_proj.bias})
    prefixed = any(k.startswith("vision_model.") for k in model.state_dict())  # transformers 4 nests the tower
    state = {(k if prefixed else k.removeprefix("vision_model.")): v.detach().float() for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if "position_ids" not in m]:
        raise RuntimeError(f"open_clip → CLIPVisionModel: missing {missing}, unexpected {unexpected}")
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                   image_mean=list(mean), image_std=list(std), resample=3)
    return model, processor


def build_judge(vision, image_processor, tokenizer, hidden: int = 128, layers: int = 4, heads: int = 4,
                feature_layer: int | list[int] = -1, class_token: bool = False, text_first: bool = False):
    """``(LlavaForConditionalGeneration, LlavaProcessor)``: ``vision`` (a ``CLIPVisionModel``) → 2-layer
    projector → a Llama of ``layers`` × ``hidden``; the image's patch tokens (and its class token with
    ``class_token``) of ``feature_layer`` (a list: those layers' features concatenated) stand where
    ``<image>`` is. ``text_first``: the chat template writes a turn's text before its images."""
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    ids = tokenizer.convert_tokens_to_ids
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=512, bos_token_id=ids("<s>"), eos_token_id=ids("</s>"),
                       pad_token_id=ids("<pad>"), tie_word_embeddings=False)
    strategy = "full" if class_token else "default"
    tokens = (vision.config.image_size // vision.config.patch_size) ** 2 + int(class_token)
    cfg = LlavaConfig(vision_config=vision.config, text_config=text, image_token_index=ids(IMAGE_TOKEN),
                      vision_feature_select_strategy=strategy, vision_feature_layer=feature_layer,
                      projector_hidden_act="gelu", image_seq_length=tokens)
    model = LlavaForConditionalGeneration(cfg)
    model.model.vision_tower.load_state_dict(vision.state_dict())
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               chat_template=TEXT_FIRST_TEMPLATE if text_first else CHAT_TEMPLATE,
                               patch_size=vision.config.patch_size, vision_feature_select_strategy=strategy,
                               num_additional_image_tokens=1)
    return model, processor


@torch.no_grad()
def open_clip_tokens(visual, pixels: torch.Tensor) -> torch.Tensor:
    """open_clip's transformer output tokens ``[B, 1 + patches, width]`` (before ``ln_post``), for tests."""
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, x], 1) + visual.positional_embedding.to(x.dtype))
    return visual.transformer(x)
