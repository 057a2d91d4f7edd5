"""Generative VLM judges: the ``vlm:`` reward family (:mod:`.judge`), its templates (:mod:`.templates`) and
the torch image preprocessing that keeps its readouts differentiable (:mod:`.pixels`)."""

from .judge import VLMJudge, load_vlm_judge
from .templates import Template, load_template, shipped_templates

__all__ = ["Template", "VLMJudge", "load_template", "load_vlm_judge", "shipped_templates"]
