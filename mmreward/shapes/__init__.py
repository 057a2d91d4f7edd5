"""ShapesWorld: an offline GenEval with an evaluator exact on ground truth and audited on generated images.

Procedural scenes of coloured shapes (:mod:`.world`), prompts in GenEval's six categories with
GenEval-style metadata (:mod:`.prompts`), committed prompt suites (:mod:`.suites`) and an evaluator
that reads only pixels (:mod:`.evaluator`). CLI: ``python -m mmreward.shapes {evaluate,render}``.
"""

from .evaluator import Detection, detect, evaluate, evaluate_image, judge
from .prompts import (
    CATEGORIES,
    hard_negatives,
    is_held_out,
    parse_prompt,
    prompt_text,
    sample_meta,
    sample_scene,
)
from .suites import load_suite
from .world import COLORS, SHAPES, Obj, Scene, render

__all__ = [
    "CATEGORIES", "COLORS", "SHAPES", "Detection", "Obj", "Scene", "detect", "evaluate", "evaluate_image",
    "hard_negatives", "is_held_out", "judge", "load_suite", "parse_prompt", "prompt_text", "render", "sample_meta",
    "sample_scene",
]
