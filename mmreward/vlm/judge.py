"""Generative VLM judges (transformers image-text-to-text models) as rewards.

    judge = load_vlm_judge("Qwen/Qwen2-VL-2B-Instruct", readout="yes")        # or a local folder
    judge(images, prompts)                       # [B]: P("Yes") to 'Does this image show "{prompt}"?'
    judge.compare(images_a, images_b, prompts)   # [B]: P(a is better), with a pairwise template
    judge.compare_answers(images, questions, answers_1, answers_2)

Any ``AutoModelForImageTextToText`` + ``AutoProcessor`` pair with a chat template and an image processor of
:mod:`.pixels` works (Qwen2-VL, Qwen2.5-VL, LLaVA). The text, its image placeholders and the padding come
from the model's own processor; only the pixels are computed in torch, so the ``yes``, ``rating`` and
logit ``pairwise`` readouts are differentiable w.r.t. the images (ReNO can optimise them). The ``text``
readout and verdict-parsing pairwise templates generate greedily and are not differentiable.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from ..base import VisionReward, check_images, check_prompts
from ..errors import ModelLoadError, RewardError
from ..hub import model_source
from .pixels import pixels_for
from .templates import Template, load_template


def chat_text(processor, message: str, images: int = 1) -> str:
    """``processor``'s chat template applied to one user turn of ``images`` images then ``message``, ending
    where the assistant's reply begins."""
    content = [{"type": "image"}] * images + [{"type": "text", "text": message}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


class VLMJudge(VisionReward):
    """A generative VLM read out by a :class:`~.templates.Template`.

    Args:
        model: a transformers image-text-to-text model (frozen here).
        processor: its processor (tokenizer with a chat template, image processor).
        template: what is asked and how the answer is read.
        aspect: ``text`` readouts with per-aspect scores: the aspect to return (default: their mean).
        fallback: the score of an answer the ``text``/verdict readouts cannot parse (default: an error).
    """

    batch_size = 8

    def __init__(self, model, processor, template: Template, name: str = "vlm", aspect: str | None = None,
                 fallback: float | None = None) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"  # the next token of every row is at position -1
        self.pixels = pixels_for(processor.image_processor)
        self.template, self.name, self.aspect, self.fallback = template, name, aspect, fallback
        t = template
        if t.readout == "yes":
            self.answer_ids = [self.first_token(t.answer)]
        elif t.readout == "rating":
            self.answer_ids = [self.first_token(w) for w in t.levels]
            self.register_buffer("weights", torch.tensor(t.weights, dtype=torch.float32), persistent=False)
        elif t.choices:
            self.answer_ids = [self.first_token(c) for c in t.choices]
        else:
            self.answer_ids = []
        if len(set(self.answer_ids)) != len(self.answer_ids):
            raise ModelLoadError(f"{name}: template {t.name!r}: its answer words share a first token "
                                 f"({self.answer_ids}); the readout cannot tell them apart")

    def first_token(self, word: str) -> int:
        """The id of the first token of ``word`` as the reply's first word (no special tokens)."""
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        if not ids or ids[0] == self.tokenizer.unk_token_id:
            raise ModelLoadError(f"{self.name}: the tokenizer has no token for {word!r} (template {self.template.name!r})")
        return int(ids[0])

    # -- inputs -------------------------------------------------------------------------------------------
    def chat(self, message: str, images: int = 1) -> str:
        """The model's chat text for one user turn of ``images`` images and ``message``, ready for the reply."""
        return chat_text(self.processor, message, images) + self.template.prefix

    def encode(self, texts: list[str], images: torch.Tensor) -> dict:
        """Model inputs for ``texts`` and ``images [N,3,H,W]`` in [0,1] (in the order the texts show them).

        The processor tokenises the texts with blank images of the same size (so every placeholder expands
        as for real images); the pixel inputs are then replaced by :attr:`pixels` of ``images``, in torch."""
        from PIL import Image

        h, w = images.shape[-2:]
        blank = Image.new("RGB", (w, h))
        enc = self.processor(text=texts, images=[blank] * images.shape[0], return_tensors="pt", padding=True)
        pix = self.pixels(images.float())
        for key, value in pix.items():
            if key != "pixel_values" and key in enc and not torch.equal(enc[key].to(value.device), value):
                raise RuntimeError(f"{self.name}: torch preprocessing disagrees with the processor on {key}")
            if key == "pixel_values" and tuple(enc[key].shape) != tuple(value.shape):
                raise RuntimeError(f"{self.name}: pixel_values of shape {tuple(value.shape)}, the processor's "
                                   f"{tuple(enc[key].shape)}")
        out = {k: v.to(self.device) for k, v in enc.items() if k not in pix}
        out.update({k: v.to(self.device, self.dtype if v.is_floating_point() else v.dtype) for k, v in pix.items()})
        return out

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def next_token_logits(self, texts: list[str], images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, V]`` (float32) of the reply's next token."""
        out = self.model(**self.encode(texts, images), logits_to_keep=1)
        return out.logits[:, -1].float()

    @torch.no_grad()
    def generate(self, texts: list[str], images: torch.Tensor, max_new_tokens: int | None = None) -> list[str]:
        """The greedy replies to ``texts`` (special tokens dropped)."""
        enc = self.encode(texts, images)
        n = int(max_new_tokens or self.template.max_new_tokens)
        ids = self.model.generate(**enc, max_new_tokens=n, do_sample=False)
        return self.tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    # -- readouts -----------------------------------------------------------------------------------------
    def score_images(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        t = self.template
        if t.readout == "pairwise":
            raise RewardError(f"{self.name}: template {t.name!r} compares two candidates; call compare() or "
                              "compare_answers(), or pick a yes/rating/text template")
        texts = [self.chat(t.message(prompt=p)) for p in prompts]
        if t.readout == "text":
            return torch.tensor([self.parse_score(r, i) for i, r in enumerate(self.generate(texts, images))],
                                device=images.device)
        logits = self.next_token_logits(texts, images)
        if t.readout == "yes":
            return logits.log_softmax(-1)[:, self.answer_ids[0]].exp()
        return logits[:, self.answer_ids].softmax(-1) @ self.weights.to(logits.device)

    def parse_score(self, reply: str, item: int = 0) -> float:
        """The score of a ``text`` readout's reply."""
        t = self.template
        if t.aspect_pattern:
            found = {name.lower(): float(v) for name, v in re.findall(t.aspect_pattern, reply)}
            if self.aspect is not None:
                value = found.get(self.aspect.lower())
            else:
                value = sum(found.values()) / len(found) if found else None
        else:
            m = re.search(t.score_pattern, reply)
            value = float(m.group(1)) if m else None
        return self._or_fallback(value, reply, item)

    def parse_verdict(self, reply: str, item: int = 0) -> float:
        """P(first candidate better) of a verdict reply: 1, 0, or the verdict's value (ties: 0.5)."""
        t = self.template
        value = None
        if t.verdict_pattern:
            m = re.search(t.verdict_pattern, reply, re.DOTALL | re.IGNORECASE)
            if m is None and t.fallback_pattern:
                m = re.search(t.fallback_pattern, reply, re.DOTALL)
            key = (m.group(1) if m and m.groups() else m.group(0)) if m else None
            value = t.verdicts.get(key.strip()) if key is not None else None
        else:
            hits = [v for k, v in t.verdicts.items() if k.lower() in reply.lower()]
            value = hits[0] if len(hits) == 1 else None
        return self._or_fallback(value, reply, item)

    def _or_fallback(self, value: float | None, reply: str, item: int) -> float:
        if value is not None:
            return value
        if self.fallback is not None:
            return float(self.fallback)
        raise RewardError(f"{self.name}: template {self.template.name!r} could not read a score from the reply to item "
                          f"{item}: {reply[:200]!r} (set ?fallback=VALUE to score such replies)")

    def _pairwise(self, texts: list[str], images: torch.Tensor) -> torch.Tensor:
        if self.template.choices:
            logits = self.next_token_logits(texts, images)[:, self.answer_ids]
            return logits.softmax(-1)[:, 0]
        return torch.tensor([self.parse_verdict(r, i) for i, r in enumerate(self.generate(texts, images))],
                            device=images.device)

    def compare(self, images_a: torch.Tensor, images_b: torch.Tensor,
                prompts: str | Sequence[str], swap: bool = False) -> torch.Tensor:
        """P(``images_a[i]`` fits ``prompts[i]`` better than ``images_b[i]``) ``[B]``, both images shown;
        ``swap``: asked in both orders, the mean of ``p(a, b)`` and ``1 − p(b, a)`` (cancels position bias)."""
        t = self.template
        if t.readout != "pairwise" or t.images != 2:
            raise RewardError(f"{self.name}: template {t.name!r} does not compare two images; use ?template=pairwise "
                              "or unifiedreward-pairwise")
        for x in (images_a, images_b):
            check_images(x)
        if images_a.shape != images_b.shape:
            raise RewardError(f"compare: images_a {tuple(images_a.shape)} and images_b {tuple(images_b.shape)} differ")
        prompts = check_prompts(prompts, images_a.shape[0])
        texts = [self.chat(t.message(prompt=p), images=2) for p in prompts]
        p = self._pairwise(texts, torch.stack([images_a, images_b], 1).flatten(0, 1))  # a0, b0, a1, b1, ...
        if not swap:
            return p
        return (p + 1 - self._pairwise(texts, torch.stack([images_b, images_a], 1).flatten(0, 1))) / 2

    def compare_answers(self, images: torch.Tensor, questions: str | Sequence[str], answers_1: Sequence[str],
                        answers_2: Sequence[str], swap: bool = False) -> torch.Tensor:
        """P(``answers_1[i]`` is the better answer to ``questions[i]`` about ``images[i]``) ``[B]``; ``swap``: as
        for :meth:`compare`."""
        t = self.template
        if t.readout != "pairwise" or not t.answers:
            raise RewardError(f"{self.name}: template {t.name!r} does not compare answers; use "
                              "?template=answers-pairwise or r1-reward")
        check_images(images)
        b = images.shape[0]
        questions = check_prompts(questions, b)
        if len(answers_1) != b or len(answers_2) != b:
            raise RewardError(f"compare_answers: {b} images but {len(answers_1)} / {len(answers_2)} answers")
        def ask(first: Sequence[str], second: Sequence[str]) -> torch.Tensor:
            return self._pairwise([self.chat(t.message(question=q, answer1=a1, answer2=a2))
                                   for q, a1, a2 in zip(questions, first, second, strict=True)], images)

        p = ask(answers_1, answers_2)
        return (p + 1 - ask(answers_2, answers_1)) / 2 if swap else p


def load_vlm_judge(arg: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   readout: str | None = None, template: str | None = None, aspect: str | None = None,
                   fallback: str | float | None = None, min_pixels: str | int | None = None,
                   max_pixels: str | int | None = None) -> VLMJudge:
    """A :class:`VLMJudge` from a hub id (``Qwen/Qwen2.5-VL-3B-Instruct``) or a local folder.

    ``readout`` picks the template's kind when ``template`` (a shipped name or a JSON file) is not given
    (default ``yes``); ``min_pixels``/``max_pixels`` override a Qwen processor's resolution bounds."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    tmpl = load_template(template, readout if template is not None else (readout or "yes"))
    arg = model_source(arg, "VLM judge", "vlm")
    kwargs = {k: int(v) for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    try:
        processor = AutoProcessor.from_pretrained(arg, **kwargs)
        model = AutoModelForImageTextToText.from_pretrained(arg, dtype=dtype)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load a VLM judge from {arg!r}: {str(e)[:300]}") from e
    if getattr(processor, "image_processor", None) is None or getattr(processor, "chat_template", None) is None:
        raise ModelLoadError(f"{arg!r}: the processor needs an image processor and a chat template")
    judge = VLMJudge(model, processor, tmpl, name=f"vlm:{arg}", aspect=aspect,
                     fallback=None if fallback is None else float(fallback))
    return judge.to(device)
