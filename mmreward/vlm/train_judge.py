"""Train the embedded ShapesWorld judge: a LLaVA-layout VLM on the ShapesWorld CLIP's image tower.

    mmalign assets shapes-judge --out assets/shapesworld-judge        # python -m mmreward.vlm.train_judge

The model (:func:`mmreward.vlm.build.build_judge`): the CLIP's ViT as a transformers ``CLIPVisionModel``
(fine-tuned at a tenth of the learning rate), a 2-layer projector and a 4 × 128 Llama over a word-level
vocabulary of the world. Every item is one user turn of the shipped templates and the reply, trained with
the language-model loss on the reply only; the items, mixed in every batch:

* ``yes`` (template ``yes``): 'Does this image show "{prompt}"?' → Yes for the scene's prompt, No for one of
  its hard negatives (the CLIP's: colour, shape, count or relation swapped) or, 1 time in 5, a random prompt;
* ``qa``: a question of :mod:`mmreward.shapes.qa` (count, colour, relation, what is shown) → its answer;
* ``answers`` (template ``answers-pairwise``): that question with the right and a hallucinated answer, in
  random order → 1 or 2;
* ``answer-yes`` (template ``answer-yes``): that question and one of the two answers → Yes or No;
* ``images`` (template ``pairwise``): two images, one of the prompt and one of a hard negative or (half of the
  pairs, ``--easy-pairs``) of another prompt → 1 or 2. With them the comparison forms (0.71 on hard pairs);
  the same recipe without them left it at chance.

So the readouts it offers (``yes``, ``answer-yes``, ``pairwise``, ``answers-pairwise``, and free answers by
``generate``) are all trained. Held-out compositions appear in no training image and no training text (not
even as a negative or a wrong answer); renders are mildly blurred or noised as the CLIP's. The run
checkpoints to ``--work`` (``--resume`` continues, ``--overwrite`` starts again); the export records the
readouts' accuracy on fresh renders of training and held-out compositions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ..command import run_command, with_examples
from ..config_file import ConfigError
from ..schedules import warmup_cosine
from ..shapes.data import to_tensor
from ..shapes.evaluator import judge as judge_scene
from ..shapes.evaluator import scene_detections
from ..shapes.prompts import (
    CATEGORIES,
    all_metas,
    hard_negatives,
    is_held_out,
    mentions_held_out,
    sample_meta,
    sample_scene,
)
from ..shapes.qa import HELD_OUT_TAGS, QA_CATEGORIES, question
from ..shapes.train_clip import augment
from ..shapes.world import render
from ..trainer import StepTrainer, add_run_args, start_run
from .judge import chat_text
from .templates import shipped_templates

WARMUP = 200
KINDS = ("yes", "qa", "answers", "answer-yes", "images")
MIX = {"yes": 0.3, "qa": 0.2, "answers": 0.15, "answer-yes": 0.15, "images": 0.2}  #: share of each item kind in a batch


def corpus() -> list[str]:
    """Every text the judge reads or writes (for its vocabulary): the templates, all prompts, and the
    questions and answers of many scenes."""
    t = shipped_templates()
    texts = [t[n].text for n in ("yes", "pairwise", "answers-pairwise", "answer-yes", "rating")] + ["Yes", "No", "1", "2"]
    texts += [m["prompt"] for tag in CATEGORIES for m in all_metas(tag)]
    rng = np.random.default_rng(0)
    for i in range(2000):
        scene = sample_scene(sample_meta(CATEGORIES[i % len(CATEGORIES)], rng, "any"), rng)
        for cat in QA_CATEGORIES:
            if (qa := question(scene, cat, rng)) is not None:
                texts += [qa["question"], qa["answer"], qa["wrong"]]
    return texts


def make_item(kind: str, rng: np.random.Generator, split: str = "train", random_negatives: float = 0.2,
              easy_pairs: float = 0.0) -> tuple[list[np.ndarray], str, str, str]:
    """``(images, message, reply, detail)`` of one training or evaluation item (``detail``: the category);
    ``random_negatives``: the share of ``yes`` negatives that are random prompts instead of hard negatives;
    ``easy_pairs``: the share of image pairs whose other image shows another prompt instead of a hard negative.

    ``split="train"`` keeps held-out compositions out of everything the judge reads, renders or writes,
    negatives and wrong answers included (otherwise it learns that a held-out composition means No)."""
    while True:
        item = _draw_item(kind, rng, split, random_negatives, easy_pairs)
        if item is not None and not (split == "train" and (mentions_held_out(item[1]) or mentions_held_out(item[2]))):
            return item


def _draw_item(kind: str, rng: np.random.Generator, split: str, random_negatives: float, easy_pairs: float):
    t = shipped_templates()
    tags = HELD_OUT_TAGS if split == "held_out" else CATEGORIES
    allow = split != "train"
    meta = sample_meta(str(rng.choice(tags)), rng, split)
    scene = sample_scene(meta, rng, allow_held_out=allow)
    negs = [n for n in hard_negatives(meta, rng) if allow or not is_held_out(n)]
    if kind == "yes":
        if rng.random() < 0.5:
            return [render(scene)], t["yes"].message(prompt=meta["prompt"]), "Yes", meta["tag"]
        if rng.random() < random_negatives or not negs:
            other = sample_meta(str(rng.choice(CATEGORIES)), rng, "any" if allow else "train")
            if other["prompt"] == meta["prompt"]:
                return None
            return [render(scene)], t["yes"].message(prompt=other["prompt"]), "No", meta["tag"]
        neg = negs[int(rng.integers(len(negs)))]
        return [render(scene)], t["yes"].message(prompt=neg["prompt"]), "No", meta["tag"]
    if kind in ("qa", "answers", "answer-yes"):
        cat = str(rng.choice(QA_CATEGORIES))
        qa = question(scene, cat, rng)
        if qa is None:
            return None
        if kind == "qa":
            return [render(scene)], qa["question"], qa["answer"], cat
        if kind == "answer-yes":
            right = rng.random() < 0.5
            text = f"{qa['question']}\n{qa['answer'] if right else qa['wrong']}"
            return [render(scene)], t["answer-yes"].message(prompt=text), "Yes" if right else "No", cat
        first = rng.random() < 0.5
        a1, a2 = (qa["answer"], qa["wrong"]) if first else (qa["wrong"], qa["answer"])
        return ([render(scene)], t["answers-pairwise"].message(question=qa["question"], answer1=a1, answer2=a2),
                "1" if first else "2", cat)
    if not negs:
        return None
    if easy_pairs > 0 and rng.random() < easy_pairs:  # (no draw at 0: --easy-pairs 0 repeats the earlier items)
        other = sample_meta(str(rng.choice(CATEGORIES)), rng, "any" if allow else "train")
        neg_scene = sample_scene(other, rng, allow_held_out=allow)
        if judge_scene(meta, scene_detections(neg_scene))[0]:  # the other scene shows the prompt too
            return None
    else:
        neg_scene = sample_scene(negs[int(rng.integers(len(negs)))], rng, allow_held_out=allow)
    first = rng.random() < 0.5
    pair = [render(scene), render(neg_scene)] if first else [render(neg_scene), render(scene)]
    return pair, t["pairwise"].message(prompt=meta["prompt"]), "1" if first else "2", meta["tag"]


def parse_mix(text: str) -> dict[str, float]:
    """``"yes=0.4,qa=0.2,..."`` → shares of :data:`KINDS` (kinds left out: 0), normalised to sum 1."""
    mix = dict.fromkeys(KINDS, 0.0)
    for part in text.split(","):
        kind, _, share = part.partition("=")
        if kind.strip() not in mix:
            raise ConfigError(f"--mix: unknown item kind {kind.strip()!r}; known: {', '.join(KINDS)}")
        try:
            mix[kind.strip()] = float(share)
        except ValueError:
            raise ConfigError(f"--mix: {part!r} is not kind=share") from None
    total = sum(mix.values())
    if total <= 0 or min(mix.values()) < 0:
        raise ConfigError(f"--mix: shares must be >= 0 and not all 0, got {text!r}")
    return {k: v / total for k, v in mix.items()}


def encode_batch(processor, chats: list[str], replies: list[str], images: list[np.ndarray]) -> dict:
    """Model inputs of chats + replies (right-padded) with ``labels`` only on each reply and its ``</s>``."""
    tok = processor.tokenizer
    tok.padding_side = "right"
    full = [f"{c} {r}{tok.eos_token}" for c, r in zip(chats, replies, strict=True)]
    enc = processor(text=full, images=[np.ascontiguousarray(im) for im in images], return_tensors="pt", padding=True)
    labels = torch.full_like(enc["input_ids"], -100)
    lengths = enc["attention_mask"].sum(1)
    for i, r in enumerate(replies):
        n = len(tok.encode(r, add_special_tokens=False)) + 1
        labels[i, lengths[i] - n: lengths[i]] = enc["input_ids"][i, lengths[i] - n: lengths[i]]
    enc["labels"] = labels
    return enc


@torch.no_grad()
def readout_accuracy(model, processor, n: int = 96, seed: int = 12345, split: str = "train") -> dict:
    """On ``n`` fresh items per kind (``split`` compositions): ``yes``, ``answer-yes`` — P(Yes) > 0.5 is right; ``answers``
    and ``images`` — the right candidate gets P > 0.5; ``qa`` — the greedy answer is exactly right. Per
    category and overall."""
    from .judge import VLMJudge
    from .templates import load_template

    rng = np.random.default_rng(seed)
    model.eval()
    out = {}
    for kind in KINDS:
        template = {"yes": "yes", "qa": "yes", "answers": "answers-pairwise", "answer-yes": "answer-yes",
                    "images": "pairwise"}[kind]
        judge = VLMJudge(model, processor, load_template(template), name="shapesworld-judge")
        per: dict[str, list[float]] = {}
        for start in range(0, n, 16):
            items = [make_item(kind, rng, split) for _ in range(min(16, n - start))]
            ims = to_tensor(np.stack([im for it in items for im in it[0]]))
            chats = [judge.chat(msg, images=len(ims_)) for ims_, msg, _, _ in items]
            if kind == "qa":
                got = judge.generate(chats, ims, max_new_tokens=24)
                right = [g.strip().lower() == it[2].lower() for g, it in zip(got, items, strict=True)]
            else:
                logits = judge.next_token_logits(chats, ims)
                if kind in ("yes", "answer-yes"):
                    p = logits.log_softmax(-1)[:, judge.answer_ids[0]].exp()
                    right = [(pi > 0.5) == (it[2] == "Yes") for pi, it in zip(p.tolist(), items, strict=True)]
                else:
                    p = logits[:, judge.answer_ids].softmax(-1)[:, 0]
                    right = [(pi > 0.5) == (it[2] == "1") for pi, it in zip(p.tolist(), items, strict=True)]
            for ok, it in zip(right, items, strict=True):
                per.setdefault(it[3], []).append(float(ok))
        out[kind] = {"accuracy": float(np.mean([v for vs in per.values() for v in vs])),
                     "per_category": {c: float(np.mean(v)) for c, v in sorted(per.items())}}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="assets/shapesworld-clip", help="open_clip folder whose image tower is used")
    p.add_argument("--work", default="outputs/shapes_judge", help="checkpoints and logs")
    p.add_argument("--out", default="assets/shapesworld-judge", help="the exported transformers folder")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--vision-lr-scale", type=float, default=0.1, help="the image tower's learning rate factor (0: frozen)")
    p.add_argument("--mix", default=",".join(f"{k}={v}" for k, v in MIX.items()),
                   help="share of each item kind in a batch, as kind=share,...")
    p.add_argument("--random-negatives", type=float, default=0.2, help="share of yes negatives that are random prompts")
    p.add_argument("--easy-pairs", type=float, default=0.5,
                   help="share of image pairs whose other image shows another prompt (not a hard negative)")
    p.add_argument("--feature-layers", type=int, nargs="+", default=[-1], help="image tower layers the projector reads")
    p.add_argument("--class-token", action="store_true", help="pass the image's class token too")
    p.add_argument("--text-first", action="store_true", help="chat template: the question before the images")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--eval-items", type=int, default=96, help="fresh items per readout in the final accuracy")
    p.add_argument("--stop-after", type=int, default=None, help="checkpoint and exit after this step (simulates a kill)")
    p.add_argument("--fp16", action="store_true", help="save the exported judge in fp16")
    p.add_argument("--threads", type=int, default=2)
    add_run_args(p)
    with_examples(p, "mmalign assets shapes-judge --out outputs/shapesworld-judge --steps 200")
    args = p.parse_args(argv)
    mix = parse_mix(args.mix)  # a bad --mix fails before anything is loaded
    start_run(args)
    from ..backbones import load_open_clip
    from .build import build_judge, vision_from_open_clip, word_tokenizer, words_of

    clip = load_open_clip(args.clip)
    pre = clip.preprocess
    vision, image_processor = vision_from_open_clip(clip.model.visual.float(), pre.mean.flatten().tolist(),
                                                    pre.std.flatten().tolist())
    layers = args.feature_layers[0] if len(args.feature_layers) == 1 else list(args.feature_layers)
    model, processor = build_judge(vision, image_processor, word_tokenizer(words_of(corpus())), hidden=args.hidden,
                                   layers=args.layers, feature_layer=layers, class_token=args.class_token,
                                   text_first=args.text_first)
    vision_params = list(model.model.vision_tower.parameters())
    ids = {id(q) for q in vision_params}
    rest = [q for q in model.parameters() if id(q) not in ids]
    groups = [{"params": rest, "lr": args.lr}]
    scales = [1.0]
    if args.vision_lr_scale > 0:
        groups.append({"params": vision_params, "lr": args.lr * args.vision_lr_scale})
        scales.append(args.vision_lr_scale)
    else:  # a frozen image tower
        model.model.vision_tower.requires_grad_(False)
    trainable = [q for gr in groups for q in gr["params"]]
    opt = torch.optim.AdamW(groups, weight_decay=1e-2)
    rng = np.random.default_rng(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    counts = np.round(np.array([mix[k] for k in KINDS]) * args.batch).astype(int)
    counts[0] += args.batch - counts.sum()

    def step(i: int) -> dict:
        model.train()
        items = [make_item(k, rng, random_negatives=args.random_negatives, easy_pairs=args.easy_pairs)
                 for k, c in zip(KINDS, counts, strict=True) for _ in range(c)]
        lr = warmup_cosine(i, args.steps, args.lr, warmup=WARMUP)
        opt.zero_grad(set_to_none=True)
        encs = []
        for n_images in (1, 2):  # one padding length per image count
            group = [it for it in items if len(it[0]) == n_images]
            if group:
                x = augment(to_tensor(np.stack([im for it in group for im in it[0]])), g)
                images = [(a.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for a in x]
                encs.append(encode_batch(processor, [chat_text(processor, m, n_images) for _, m, _, _ in group],
                                         [r for _, _, r, _ in group], images))
        n_tokens = [int((enc["labels"] != -100).sum()) for enc in encs]
        total = 0.0
        for enc, n in zip(encs, n_tokens, strict=True):
            loss = model(**enc).loss  # mean over this group's reply tokens: weigh groups by their token counts
            (loss * n / sum(n_tokens)).backward()
            total += loss.item() * n
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        for group, s in zip(opt.param_groups, scales, strict=True):
            group["lr"] = lr * s
        opt.step()
        return {"step": i + 1, "loss": total / sum(n_tokens), "lr": lr}

    trainer = StepTrainer(args.work, args.steps, model, opt, step, np_rng=rng, checkpoint_every=args.ckpt_every,
                          stop_after=args.stop_after, name="shapes-judge", resume=args.resume, overwrite=args.overwrite,
                          config=vars(args), extra_state=lambda: {"torch_rng": g.get_state().tolist()},
                          load_extra=lambda e: g.set_state(torch.tensor(e["torch_rng"], dtype=torch.uint8)))
    trainer.run()
    if trainer.position < args.steps:
        return {"steps": trainer.position, "stopped": True}
    model.eval()
    record = {"model": f"LLaVA-layout judge on the image tower of {args.clip}", "steps": trainer.position,
              "wall_time_s": round(trainer.seconds, 1), "parameters": sum(q.numel() for q in model.parameters()),
              "trained_on": "ShapesWorld renders of training compositions: yes/no, questions, answer pairs, image pairs",
              "accuracy_train_compositions": readout_accuracy(model, processor, args.eval_items, split="train"),
              "accuracy_held_out_compositions": readout_accuracy(model, processor, args.eval_items, seed=54321,
                                                                 split="held_out"),
              "args": vars(args)}
    out = Path(args.out)
    model.to(torch.float16 if args.fp16 else torch.float32).save_pretrained(out)
    processor.tokenizer.padding_side = "left"
    processor.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(record, indent=2))
    print(f"judge saved to {out}: {json.dumps({k: v for k, v in record.items() if k.startswith('accuracy')})}")
    return record


if __name__ == "__main__":
    sys.exit(run_command(main))
