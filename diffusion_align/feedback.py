"""Where the training signal comes from: a score per sampled image.

* ``evaluator``: the ShapesWorld evaluator (1 when the image satisfies its prompt by GenEval's rules, else
  0); ``evaluator:graded`` adds partial credit (the share of the prompt's clauses that hold, times ½) so
  fewer pairs tie; ``evaluator:strict`` is 1 only when the image is correct *and* shows no shape beyond
  those the prompt names (GenEval's rules ignore extras, so a labeller that does not penalise them teaches
  the policy to draw more objects, which costs counting: ``benchmarks/results/d3po_shapes_probes.json``).
* any reward spec of the reward core (``clip:assets/shapesworld-clip``, ``0.5*clip:A+0.5*clip:B``, ...);
  a VLM judge that compares (``vlm:FOLDER?template=pairwise``) sees each pair of a group together, and each
  image scores its Borda count (:func:`pairwise_scores`), so a pair is ordered by the judge's own verdict.

D3PO only uses the *order* of the two scores of a pair; DDPO normalises them into advantages. Human
labels (a third D3PO source) come from the labelling step, :mod:`diffusion_align.label`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Scorer = Callable[[torch.Tensor, list[str]], torch.Tensor]


EVALUATOR_MODES = ("binary", "graded", "strict")


def evaluator_scores(images: torch.Tensor, prompts: list[str], mode: str = "binary") -> torch.Tensor:
    """ShapesWorld evaluator verdicts ``[B]`` (float) for images ``[B,3,H,W]`` in [0,1]; ``mode`` is one of
    :data:`EVALUATOR_MODES` (see the module docstring)."""
    if mode not in EVALUATOR_MODES:
        raise ValueError(f"evaluator mode {mode!r}: expected one of {EVALUATOR_MODES}")
    from mmreward.images import to_uint8
    from mmreward.shapes.evaluator import detect, judge
    from mmreward.shapes.prompts import parse_prompt

    out = []
    for img, prompt in zip(to_uint8(images), prompts):
        meta = parse_prompt(prompt)
        dets = detect(img)
        ok = judge(meta, dets)[0]
        if mode == "strict":
            ok = ok and len(dets) <= sum(req["count"] for req in meta["include"])
        if ok or mode != "graded":
            out.append(float(ok))
            continue
        inc = meta["include"]
        out.append(0.5 * sum(_clause_holds(inc, k, dets) for k in range(len(inc))) / len(inc))
    return torch.tensor(out)


def _clause_holds(include: list[dict], k: int, dets) -> bool:
    """Whether clause ``k`` holds on its own: its objects exist (count, colour) and, for a relation,
    stand in that relation to the objects of the clause it refers to."""
    from mmreward.shapes.evaluator import judge

    clause = include[k]
    if "position" not in clause:
        return judge({"include": [clause]}, dets)[0]
    rel, target = clause["position"]
    return judge({"include": [include[target], {**clause, "position": [rel, 0]}]}, dets)[0]


def pairwise_scores(judge, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """``[B]`` scores from a judge that compares two images (``judge.compare``): within each run of
    consecutive images sharing a prompt (a D3PO group), ``score_i = Σ_j P(i better than j)`` over the
    group's other images; a group of two scores ``[p, 1 − p]``, so D3PO's preference is the judge's verdict
    (and ``p = 0.5`` a skipped tie)."""
    scores = torch.zeros(len(prompts))
    start = 0
    while start < len(prompts):
        end = start
        while end < len(prompts) and prompts[end] == prompts[start]:
            end += 1
        idx = torch.combinations(torch.arange(start, end), 2)
        if len(idx):
            p = judge.compare(images[idx[:, 0]], images[idx[:, 1]], [prompts[start]] * len(idx)).float().cpu()
            scores.index_add_(0, idx[:, 0], p)
            scores.index_add_(0, idx[:, 1], 1 - p)
        start = end
    return scores


def make_scorer(spec: str, device: str | torch.device = "cpu") -> Scorer:
    """A scorer from a feedback spec: ``evaluator``, ``evaluator:graded``, ``evaluator:strict`` or a reward
    spec."""
    spec = spec.strip()
    if spec == "evaluator" or spec.startswith("evaluator:"):
        mode = spec.partition(":")[2] or "binary"
        if mode not in EVALUATOR_MODES:
            raise ValueError(f"feedback {spec!r}: the evaluator's modes are {', '.join(EVALUATOR_MODES)}")
        return lambda images, prompts: evaluator_scores(images, prompts, mode)
    from mmreward import load_reward

    reward = load_reward(spec, device=device)
    template = getattr(reward, "template", None)
    if template is not None and template.readout == "pairwise":
        if template.answers:
            raise ValueError(f"feedback {spec!r}: template {template.name!r} compares text answers, not images")

        def compare(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
            with torch.no_grad():
                return pairwise_scores(reward, images.to(device), prompts)

        return compare

    def score(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return reward(images.to(device), prompts).float().cpu()

    return score
