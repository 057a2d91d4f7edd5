"""The ``vlm:`` reward family on tiny random Qwen2-VL, Qwen2.5-VL and LLaVA models saved and loaded by path:
each readout against the value computed directly from the model's logits on the processor's own inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from vlm_tiny import save_tiny

from mmreward import load_reward
from mmreward.errors import ModelLoadError, RewardError, RewardSpecError
from mmreward.vlm import load_template, shipped_templates

KINDS = ("qwen2_vl", "qwen2_5_vl", "llava")
NATIVE = {"qwen2_vl": 56, "qwen2_5_vl": 56, "llava": 32}  # a side the processor does not resize


@pytest.fixture(scope="module", params=KINDS)
def tiny(request, tmp_path_factory):
    return request.param, save_tiny(request.param, tmp_path_factory.mktemp(request.param))


def uint8_images(n: int, side: int, seed: int = 0) -> tuple[torch.Tensor, list[Image.Image]]:
    arr = np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255, [Image.fromarray(a) for a in arr]


def direct_logits(judge, texts: list[str], pils: list[Image.Image]) -> torch.Tensor:
    """Next-token logits from the model on the processor's own (PIL) inputs."""
    enc = judge.processor(text=texts, images=pils, return_tensors="pt", padding=True)
    with torch.no_grad():
        return judge.model(**enc).logits[:, -1].float()


def test_torch_pixels_match_the_processor(tiny):
    kind, folder = tiny
    judge = load_reward(f"vlm:{folder}")
    x, pils = uint8_images(2, NATIVE[kind])
    ours = judge.pixels(x)
    ref = judge.processor.image_processor(pils, return_tensors="pt")
    assert torch.allclose(ours["pixel_values"], ref["pixel_values"], atol=1e-5)
    if "image_grid_thw" in ref:
        assert torch.equal(ours["image_grid_thw"], ref["image_grid_thw"])
    # a resize: the processor resizes uint8 images, so values differ by its rounding only
    big, big_pils = uint8_images(1, 80, seed=1)
    ours, ref = judge.pixels(big)["pixel_values"], judge.processor.image_processor(big_pils, return_tensors="pt")["pixel_values"]
    assert ours.shape == ref.shape
    assert (ours - ref).abs().mean() < 0.02


def test_yes_readout_is_p_yes_of_the_first_answer_token(tiny):
    kind, folder = tiny
    judge = load_reward(f"vlm:{folder}?readout=yes")
    x, pils = uint8_images(2, NATIVE[kind])
    prompts = ["a red circle", "a blue square"]
    got = judge(x, prompts)
    texts = [judge.chat(f'Does this image show "{p}"?') for p in prompts]
    yes = judge.tokenizer.convert_tokens_to_ids("Yes")
    want = direct_logits(judge, texts, pils).softmax(-1)[:, yes]
    assert torch.allclose(got, want, atol=1e-5), (got, want)
    assert got.shape == (2,) and ((got > 0) & (got < 1)).all()


def test_rating_readout_is_the_expected_level(tiny):
    kind, folder = tiny
    judge = load_reward(f"vlm:{folder}?template=rating")
    x, pils = uint8_images(3, NATIVE[kind], seed=2)
    got = judge(x, "a red circle")
    text = judge.chat('How well does this image show "a red circle"? Answer with a number from 1 to 5.')
    ids = judge.tokenizer.convert_tokens_to_ids(["1", "2", "3", "4", "5"])
    probs = direct_logits(judge, [text] * 3, pils)[:, ids].softmax(-1)
    want = (probs * torch.arange(1.0, 6.0)).sum(-1)
    assert torch.allclose(got, want, atol=1e-4)
    assert ((got > 1) & (got < 5)).all()


def test_q_align_reads_the_words_after_its_prefix(tmp_path):
    folder = save_tiny("qwen2_vl", tmp_path / "m", seed=3)
    judge = load_reward(f"vlm:{folder}?template=q-align")
    x, pils = uint8_images(1, 56)
    text = judge.chat("How would you rate the quality of this image?")
    assert text.endswith("<|im_start|>assistant\nThe quality of the image is")
    ids = judge.tokenizer.convert_tokens_to_ids(["excellent", "good", "fair", "poor", "bad"])
    want = direct_logits(judge, [text], pils)[:, ids].softmax(-1) @ torch.tensor([5.0, 4, 3, 2, 1])
    assert torch.allclose(judge(x, "anything"), want, atol=1e-4)


def test_pairwise_logits_compare_two_images_shown_together(tiny):
    kind, folder = tiny
    judge = load_reward(f"vlm:{folder}?template=pairwise")
    a, pa = uint8_images(2, NATIVE[kind], seed=4)
    b, pb = uint8_images(2, NATIVE[kind], seed=5)
    got = judge.compare(a, b, ["a red circle", "a blue square"])
    texts = [judge.chat(f'Which image shows "{p}" better? Answer 1 or 2.', images=2)
             for p in ("a red circle", "a blue square")]
    assert texts[0].count("<|image_pad|>" if kind != "llava" else "<image>") == 2
    ids = judge.tokenizer.convert_tokens_to_ids(["1", "2"])
    want = direct_logits(judge, texts, [pa[0], pb[0], pa[1], pb[1]])[:, ids].softmax(-1)[:, 0]
    assert torch.allclose(got, want, atol=1e-5)
    back = direct_logits(judge, texts, [pb[0], pa[0], pb[1], pa[1]])[:, ids].softmax(-1)[:, 0]
    assert torch.allclose(judge.compare(a, b, ["a red circle", "a blue square"], swap=True), (want + 1 - back) / 2,
                          atol=1e-5)
    with pytest.raises(RewardError, match="compares two candidates"):
        judge(a, "a red circle")


def test_answers_pairwise_compares_two_text_answers(tmp_path):
    folder = save_tiny("llava", tmp_path / "m")
    judge = load_reward(f"vlm:{folder}?template=answers-pairwise")
    x, pils = uint8_images(1, 32)
    got = judge.compare_answers(x, ["How many circles ?"], ["2"], ["3"])
    text = judge.chat("Question: How many circles ?\nAnswer 1: 2\nAnswer 2: 3\nWhich answer is right about the image? "
                      "Answer 1 or 2.")
    ids = judge.tokenizer.convert_tokens_to_ids(["1", "2"])
    want = direct_logits(judge, [text], pils)[:, ids].softmax(-1)[:, 0]
    assert torch.allclose(got, want, atol=1e-5)
    swapped = judge.chat("Question: How many circles ?\nAnswer 1: 3\nAnswer 2: 2\nWhich answer is right about the "
                         "image? Answer 1 or 2.")
    back = direct_logits(judge, [swapped], pils)[:, ids].softmax(-1)[:, 0]
    assert torch.allclose(judge.compare_answers(x, ["How many circles ?"], ["2"], ["3"], swap=True),
                          (want + 1 - back) / 2, atol=1e-5)


def test_gradients_reach_the_pixels(tiny):
    kind, folder = tiny
    judge = load_reward(f"vlm:{folder}")
    x = torch.rand(2, 3, 64, 48, dtype=torch.float32, requires_grad=True)  # resized by the judge
    judge(x, "a red circle").sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # the gradient is the derivative: a central difference along it agrees
    v = x.grad / x.grad.norm()
    eps = 2e-2
    with torch.no_grad():
        plus = judge((x + eps * v).clamp(0, 1), "a red circle").sum()
        minus = judge((x - eps * v).clamp(0, 1), "a red circle").sum()
    fd = (plus - minus) / (2 * eps)
    assert fd.item() == pytest.approx(x.grad.norm().item(), rel=0.15)


def test_text_readout_generates_and_parses(tmp_path):
    folder = save_tiny("qwen2_vl", tmp_path / "m")
    judge = load_reward(f"vlm:{folder}?template=unifiedreward&fallback=0")
    x, pils = uint8_images(1, 56)
    text = judge.chat(judge.template.message(prompt="a red circle"))
    enc = judge.processor(text=[text], images=pils, return_tensors="pt")
    ids = judge.model.generate(**enc, max_new_tokens=6, do_sample=False)
    want = judge.tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert judge.generate([text], x, max_new_tokens=6) == want
    assert judge.parse_score("element (object): 1\nFinal Score: 4.5") == 4.5
    assert judge(x, "a red circle").item() == 0.0  # a random model's reply has no score: the fallback
    strict = load_reward(f"vlm:{folder}?template=unifiedreward")
    with pytest.raises(RewardError, match="could not read a score"):
        strict.parse_score("I cannot tell.", item=3)


def test_aspects_and_verdicts_parse_as_the_references_do(tmp_path):
    folder = save_tiny("qwen2_vl", tmp_path / "m")
    ur2 = load_reward(f"vlm:{folder}?template=unifiedreward-2.0")
    reply = "Alignment Score (1-5): 4\nCoherence Score (1-5): 3.5\nStyle Score (1-5): 2"
    assert ur2.parse_score(reply) == pytest.approx((4 + 3.5 + 2) / 3)
    assert load_reward(f"vlm:{folder}?template=unifiedreward-2.0&aspect=coherence").parse_score(reply) == 3.5
    pair = load_reward(f"vlm:{folder}?template=unifiedreward-pairwise")
    assert pair.parse_verdict("Image 2 is better.") == 0.0
    assert pair.parse_verdict("Both images are equally good.") == 0.5
    r1 = load_reward(f"vlm:{folder}?template=r1-reward")
    assert r1.parse_verdict("<think>Response 2 misses the cat.</think><answer>1</answer>") == 1.0
    assert r1.parse_verdict("<think>...</think> so the choice is 2") == 0.0  # the last 1 or 2
    with pytest.raises(RewardError):
        r1.parse_verdict("no choice")


def test_video_is_scored_per_frame(tmp_path):
    folder = save_tiny("qwen2_vl", tmp_path / "m")
    judge = load_reward(f"vlm:{folder}")
    video = torch.rand(2, 3, 3, 56, 56)
    per_frame = judge.frame_rewards(video, ["a red circle", "a blue square"])
    assert per_frame.shape == (2, 3)
    assert torch.allclose(judge(video, ["a red circle", "a blue square"]), per_frame.mean(1))
    assert torch.allclose(per_frame[1, 2], judge(video[1, 2][None], "a blue square")[0], atol=1e-6)


def test_templates_are_data(tmp_path):
    shipped = shipped_templates()
    assert {"yes", "vqascore", "q-align", "unifiedreward", "unifiedreward-2.0", "unifiedreward-pairwise",
            "r1-reward"} <= set(shipped)
    custom = tmp_path / "mine.json"
    custom.write_text(json.dumps({"readout": "yes", "text": 'Is "{prompt}" in this image?', "answer": "Yes"}))
    t = load_template(str(custom))
    assert t.name == "mine" and t.message(prompt="a cat") == 'Is "a cat" in this image?'
    folder = save_tiny("qwen2_vl", tmp_path / "m")
    judge = load_reward(f"vlm:{folder}?template={custom}")
    assert judge.template.text == t.text
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"readout": "yes", "text": "x", "colour": 1}))
    with pytest.raises(RewardSpecError, match="unknown key"):
        load_template(str(bad))
    bad.write_text(json.dumps({"readout": "rating", "text": "x", "levels": ["a", "b"], "weights": [1]}))
    with pytest.raises(RewardSpecError, match="levels and as many weights"):
        load_template(str(bad))
    with pytest.raises(RewardSpecError, match="neither a shipped template"):
        load_template("no-such-template")
    with pytest.raises(RewardSpecError, match="has readout 'pairwise', not 'yes'"):
        load_template("pairwise", readout="yes")


def test_bad_input_gets_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_reward(f"vlm:{tmp_path}/missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_reward(f"vlm:{tmp_path}/empty")
    with pytest.raises(RewardSpecError, match="needs a model"):
        load_reward("vlm")
    with pytest.raises(RewardSpecError, match="unknown option"):
        load_reward(f"vlm:{tmp_path}/empty?colour=1")
    folder = save_tiny("qwen2_vl", tmp_path / "m")
    judge = load_reward(f"vlm:{folder}")
    with pytest.raises(RewardError, match="empty"):
        judge(torch.rand(1, 3, 56, 56), "")
    with pytest.raises(RewardError, match=r"\[0,1\]"):
        judge(torch.rand(1, 3, 56, 56) * 255, "a red circle")
    with pytest.raises(RewardError, match="does not compare two images"):
        judge.compare(torch.rand(1, 3, 56, 56), torch.rand(1, 3, 56, 56), "a red circle")


def test_the_harness_compares_pairs_with_a_judge(tmp_path):
    """Pairwise mode: each ranked pair shown to the judge together; --swap averages both orders."""
    from mmreward.bench import compare_pairs, evaluate, load_benchmark, main

    folder = save_tiny("qwen2_vl", tmp_path / "m")
    x, pils = uint8_images(3, 56, seed=7)
    for i, im in enumerate(pils):
        im.save(tmp_path / f"{i}.png")
    # VL-RewardBench format: one image, a query, two answers
    recs = [{"id": str(i), "query": "How many circles ?", "response": ["2", "3"], "human_ranking": [i % 2, 1 - i % 2],
             "image": f"{i}.png", "query_source": "rlaif-v"} for i in range(3)]
    (tmp_path / "vlrb.json").write_text(json.dumps(recs))
    items = load_benchmark(tmp_path / "vlrb.json")
    assert items[0].query == "How many circles ?" and items[0].answers == ["2", "3"]
    judge = load_reward(f"vlm:{folder}?template=answers-pairwise")
    probs = compare_pairs(judge, items, progress=False)
    want = judge.compare_answers(x, ["How many circles ?"] * 3, ["2"] * 3, ["3"] * 3)
    assert [probs[(n, 0, 1)] for n in range(3)] == pytest.approx(want.tolist(), abs=1e-5)
    swapped = compare_pairs(judge, items, swap=True, progress=False)
    back = judge.compare_answers(x, ["How many circles ?"] * 3, ["3"] * 3, ["2"] * 3)
    assert [swapped[(n, 0, 1)] for n in range(3)] == pytest.approx((0.5 * (want + 1 - back)).tolist(), abs=1e-5)
    res = evaluate(items, pair_probs=probs)
    right = [(want[n] > 0.5).item() == (recs[n]["human_ranking"][0] < recs[n]["human_ranking"][1]) for n in range(3)]
    assert res["accuracy"] == pytest.approx(np.mean(right)) and list(res["per_category"]) == ["hallucination"]
    # preference files of image pairs go through judge.compare
    lines = [{"prompt": "a red circle", "images": ["0.png", "1.png", "2.png"], "choice": 0}]
    (tmp_path / "prefs.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    out = main(["--reward", f"vlm:{folder}?template=pairwise", "--data", str(tmp_path / "prefs.jsonl"),
                "--no-progress", "--out", str(tmp_path / "res.json")])
    assert out["mode"] == "pairwise" and out["pairs"] == 2  # image 0 against 1 and 2
    img_judge = load_reward(f"vlm:{folder}?template=pairwise")
    p01 = img_judge.compare(x[:1], x[1:2], "a red circle").item()
    p02 = img_judge.compare(x[:1], x[2:3], "a red circle").item()
    assert out["accuracy"] == pytest.approx(((p01 > 0.5) + (p02 > 0.5)) / 2)
    with pytest.raises(RewardError, match="needs a judge that compares"):
        compare_pairs(load_reward(f"vlm:{folder}"), items)


def test_a_judge_that_compares_is_a_d3po_feedback_source(tmp_path):
    from diffusion_align.feedback import make_scorer
    from diffusion_align.losses import pair_preferences

    folder = save_tiny("qwen2_vl", tmp_path / "m", seed=8)
    spec = f"vlm:{folder}?template=pairwise"
    scorer, judge = make_scorer(spec), load_reward(spec)
    x = torch.rand(5, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle"] * 2 + ["a blue square"] * 3  # a group of two, then one of three
    scores = scorer(x, prompts)
    p01 = judge.compare(x[:1], x[1:2], "a red circle").item()
    assert scores[:2].tolist() == pytest.approx([p01, 1 - p01], abs=1e-5)
    pref = pair_preferences(scores, torch.tensor([[0, 1]]))
    assert pref[0, 0].item() == (1.0 if p01 > 0.5 else -1.0)  # D3PO's preference is the judge's verdict
    p = {(i, j): judge.compare(x[i:i + 1], x[j:j + 1], "a blue square").item() for i, j in ((2, 3), (2, 4), (3, 4))}
    borda = [p[2, 3] + p[2, 4], 1 - p[2, 3] + p[3, 4], 2 - p[2, 4] - p[3, 4]]
    assert scores[2:].tolist() == pytest.approx(borda, abs=1e-5)
    with pytest.raises(ValueError, match="compares text answers"):
        make_scorer(f"vlm:{folder}?template=answers-pairwise")
