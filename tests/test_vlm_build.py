"""The embedded judge's parts: the open_clip ViT as a transformers CLIPVisionModel, the word tokenizer, the
LLaVA-layout judge through the ``vlm:`` loader, and its training script (kill and resume)."""

import json

import numpy as np
import pytest
import torch

from mmreward import load_reward
from mmreward.backbones import load_open_clip
from mmreward.vlm.build import build_judge, open_clip_tokens, vision_from_open_clip, word_tokenizer, words_of


def test_open_clip_vit_converts_to_clip_vision_model(open_clip_dir):
    clip = load_open_clip(open_clip_dir)
    visual = clip.model.visual.float().eval()
    model, processor = vision_from_open_clip(visual, clip.preprocess.mean.flatten().tolist(),
                                             clip.preprocess.std.flatten().tolist())
    x = torch.randn(3, 3, 64, 64)
    out = model(pixel_values=x, output_hidden_states=True)
    assert torch.allclose(out.hidden_states[-1], open_clip_tokens(visual, x), atol=1e-5)
    tower = getattr(model, "vision_model", model)
    with torch.no_grad():
        assert torch.allclose(tower.post_layernorm(out.hidden_states[-1][:, 0]) @ visual.proj, visual(x), atol=1e-5)
    assert processor.crop_size == {"height": 64, "width": 64}


def test_word_tokenizer_lowercases_and_joins_words():
    tok = word_tokenizer(words_of(['Does this image show "a red circle"?', "There are two circles.", "Yes"]))
    ids = tok.encode("There are TWO circles.", add_special_tokens=False)
    assert tok.unk_token_id not in ids and tok.decode(ids) == "there are two circles."
    assert tok.convert_tokens_to_ids("<image>") != tok.unk_token_id
    assert tok.encode("Yes", add_special_tokens=False) == tok.encode("yes", add_special_tokens=False)
    assert tok.encode("zebra", add_special_tokens=False) == [tok.unk_token_id]


def test_the_judge_loads_through_the_vlm_family(open_clip_dir, tmp_path):
    clip = load_open_clip(open_clip_dir)
    vision, ip = vision_from_open_clip(clip.model.visual.float(), [0.5] * 3, [0.5] * 3)
    tok = word_tokenizer(words_of(['Does this image show "a red circle"?', "Yes No 1 2"]))
    model, processor = build_judge(vision, ip, tok, hidden=32, layers=1, heads=2)
    model.save_pretrained(tmp_path / "judge")
    processor.save_pretrained(tmp_path / "judge")
    judge = load_reward(f"vlm:{tmp_path / 'judge'}")
    assert judge.chat('Does this image show "a red circle"?') == 'user: <image>\nDoes this image show "a red circle"?\nassistant:'
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    p = judge(x, "a red circle")
    p.sum().backward()
    assert p.shape == (2,) and x.grad.abs().sum() > 0
    with torch.no_grad():  # the loaded tower is the converted CLIP's
        assert torch.allclose(judge.model.model.vision_tower(pixel_values=torch.zeros(1, 3, 64, 64)).last_hidden_state,
                              vision(pixel_values=torch.zeros(1, 3, 64, 64)).last_hidden_state, atol=1e-5)


def test_train_judge_resumes_and_exports_a_loadable_judge(open_clip_dir, tmp_path):
    from mmreward.vlm.train_judge import main

    common = ["--clip", open_clip_dir, "--work", str(tmp_path / "w"), "--out", str(tmp_path / "judge"), "--steps", "3",
              "--batch", "8", "--hidden", "32", "--layers", "1", "--ckpt-every", "1", "--eval-items", "4"]
    assert main(common + ["--stop-after", "2"])["stopped"]
    assert not (tmp_path / "judge").exists()
    rec = main(common + ["--resume"])
    rows = [json.loads(line) for line in (tmp_path / "w" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert set(rec["accuracy_train_compositions"]) == {"yes", "qa", "answers", "answer-yes", "images"}
    unk = None
    for template in ("yes", "pairwise", "answers-pairwise"):
        judge = load_reward(f"vlm:{tmp_path / 'judge'}?template={template}")
        unk = judge.tokenizer.unk_token_id
        message = judge.template.message(prompt="a photo of two red circles", question="What colour is the star?",
                                         answer1="The star is blue.", answer2="The star is red.")
        assert unk not in judge.tokenizer.encode(judge.chat(message), add_special_tokens=False), template
    assert judge.tokenizer.encode("zebra", add_special_tokens=False) == [unk]


def test_text_first_judge_with_class_token_and_two_layers_matches_its_processor(open_clip_dir, tmp_path):
    clip = load_open_clip(open_clip_dir)
    vision, ip = vision_from_open_clip(clip.model.visual.float(), [0.5] * 3, [0.5] * 3)
    tok = word_tokenizer(words_of(['Does this image show "a red circle"?', "Yes No 1 2"]))
    model, processor = build_judge(vision, ip, tok, hidden=32, layers=1, heads=2, feature_layer=[-2, -1],
                                   class_token=True, text_first=True)
    model.save_pretrained(tmp_path / "judge")
    processor.save_pretrained(tmp_path / "judge")
    judge = load_reward(f"vlm:{tmp_path / 'judge'}")
    chat = judge.chat('Does this image show "a red circle"?')
    assert chat == 'user: Does this image show "a red circle"?\n<image>\nassistant:'
    x = torch.rand(2, 3, 64, 64)  # resized to the tower's size by both paths
    enc = judge.processor(text=[chat] * 2, images=[(im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for im in x],
                          return_tensors="pt")
    vc = model.config.vision_config
    patches = (vc.image_size // vc.patch_size) ** 2
    assert int((enc["input_ids"] == model.config.image_token_index).sum(1)[0]) == patches + 1  # and the class token
    with torch.no_grad():
        direct = judge.model(**enc).logits[:, -1].float().log_softmax(-1)[:, judge.answer_ids[0]].exp()
        # the torch pixel path rounds nothing, the processor's PIL path rounds to uint8: within rounding
        assert torch.allclose(judge(x, "a red circle"), direct, atol=2e-3)


def test_training_items_never_name_held_out_compositions():
    from mmreward.shapes.prompts import mentions_held_out
    from mmreward.vlm.train_judge import KINDS, make_item

    rng = np.random.default_rng(0)
    for kind in KINDS:
        for _ in range(60):
            _, message, reply, _ = make_item(kind, rng)
            assert not mentions_held_out(message) and not mentions_held_out(reply), (kind, message, reply)
    held = [make_item("yes", rng, "held_out") for _ in range(20)]
    assert all(mentions_held_out(m) for _, m, r, _ in held if r == "Yes")


def test_mix_is_parsed_and_normalised_with_clear_errors():
    from mmreward.vlm.train_judge import parse_mix

    assert parse_mix("yes=3,images=1") == {"yes": 0.75, "qa": 0.0, "answers": 0.0, "answer-yes": 0.0, "images": 0.25}
    with pytest.raises(ValueError, match="unknown item kind 'yess'"):
        parse_mix("yess=1")
    with pytest.raises(ValueError, match="not kind=share"):
        parse_mix("yes=a")
    with pytest.raises(ValueError, match="not all 0"):
        parse_mix("yes=0")


def test_easy_image_pairs_show_another_prompt_and_leave_the_default_stream_alone():
    from mmreward.shapes.evaluator import evaluate_image
    from mmreward.vlm.train_judge import make_item

    def stream(seed, **kw):
        rng = np.random.default_rng(seed)
        return [make_item("images", rng, **kw) for _ in range(12)]

    default, zero = stream(1), stream(1, easy_pairs=0.0)
    assert all(a[1:] == b[1:] and all(np.array_equal(x, y) for x, y in zip(a[0], b[0], strict=True))
               for a, b in zip(default, zero, strict=True))
    easy = stream(2, easy_pairs=1.0)
    for images, message, reply, _ in easy:
        prompt = message.split('"')[1]
        right, other = (images[0], images[1]) if reply == "1" else (images[1], images[0])
        assert evaluate_image(right, prompt)["correct"] and not evaluate_image(other, prompt)["correct"], message
