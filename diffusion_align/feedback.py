"""Where the training signal comes from: a score per sampled image.

* ``evaluator``: the ShapesWorld evaluator (1 when the image satisfies its prompt by GenEval's rules, else
  0); ``evaluator:graded`` adds partial credit (the share of the prompt's clauses that hold, times ½) so
  fewer pairs tie; ``evaluator:strict`` is 1 only when the image is correct *and* shows no shape beyond
  those the prompt names (GenEval's rules ignore extras, so a labeller that does not penalise them teaches
  the policy to draw more objects, which costs counting: ``benchmarks/results/d3po_shapes_probes.json``).
* any reward spec of the reward core (``clip:assets/shapesworld-clip``, ``0.5*clip:A+0.5*clip:B``, ...).

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

    def score(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return reward(images.to(device), prompts).float().cpu()

    return score
