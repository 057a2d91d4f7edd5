"""Tiny random generative VLMs (Qwen2-VL, Qwen2.5-VL, LLaVA) with their processors, built offline and saved
as transformers folders, for the judge tests."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
         "<|image_pad|>", "<|video_pad|>", "<image>", "user", "assistant", "USER", "ASSISTANT", ":", "\n", "Yes",
         "No", "Does", "this", "image", "figure", "show", "a", "red", "blue", "circle", "square", "?", ".", '"',
         "1", "2", "3", "4", "5", "Which", "shows", "better", "Answer", "or", "How", "well", "does", "with",
         "number", "from", "to", "Final", "Score", "Image", "is", "Question", "right", "about", "the", "answer",
         "The", "quality", "of", "would", "you", "rate", "excellent", "good", "fair", "poor", "bad", "<answer>",
         "</answer>", "equally", "Both", "images", "are"]

QWEN_CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
             "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}"
             "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
             "{% endif %}")
LLAVA_CHAT = ("{% for m in messages %}{% if m['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
              "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}"
              "{% endfor %}\n{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def word_tokenizer(words=WORDS):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", behavior="removed"),
        pre_tokenizers.Split(Regex(r"<\|[a-z_]+\|>|</?[a-z]+>|\w+|[^\w\s]|\n"), behavior="isolated")])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>")


def _text(vocab: int, **extra) -> dict:
    return dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, bos_token_id=2, eos_token_id=3, pad_token_id=0, **extra)


def save_tiny(kind: str, folder: str | Path, seed: int = 0, max_pixels: int = 112 * 112) -> Path:
    """Build a tiny random ``kind`` (``qwen2_vl``, ``qwen2_5_vl``, ``llava``) model + processor in ``folder``."""
    import transformers as tf

    torch.manual_seed(seed)
    tok = word_tokenizer()
    ids = tok.convert_tokens_to_ids
    n = len(WORDS)
    mrope = {"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0}
    special = dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                   vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    if kind in ("qwen2_vl", "qwen2_5_vl"):
        ip = tf.Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=max_pixels)
        if kind == "qwen2_vl":
            cfg = tf.Qwen2VLConfig(text_config=_text(n, rope_parameters=mrope), **special,
                                   vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2))
            model, proc = tf.Qwen2VLForConditionalGeneration(cfg), tf.Qwen2VLProcessor
        else:
            cfg = tf.Qwen2_5_VLConfig(text_config=_text(n, rope_parameters=mrope), **special,
                                      vision_config=dict(depth=2, hidden_size=32, out_hidden_size=32, num_heads=2,
                                                         intermediate_size=64, fullatt_block_indexes=[1],
                                                         window_size=56))
            model, proc = tf.Qwen2_5_VLForConditionalGeneration(cfg), tf.Qwen2_5_VLProcessor
        processor = proc(image_processor=ip, tokenizer=tok, video_processor=tf.Qwen2VLVideoProcessor(),
                         chat_template=QWEN_CHAT)
    elif kind == "llava":
        ip = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     image_size=32, patch_size=8)
        cfg = tf.LlavaConfig(vision_config=vision, text_config=_text(n, model_type="llama"),
                             image_token_index=ids("<image>"), vision_feature_select_strategy="default",
                             vision_feature_layer=-1)
        model = tf.LlavaForConditionalGeneration(cfg)
        processor = tf.LlavaProcessor(image_processor=ip, tokenizer=tok, chat_template=LLAVA_CHAT, patch_size=8,
                                      vision_feature_select_strategy="default", num_additional_image_tokens=1)
    else:
        raise ValueError(kind)
    folder = Path(folder)
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
