"""The registry of reward families and the spec parser (see :mod:`mmreward.factory` for the grammar and
the built-in families, which it registers when ``mmreward`` is imported), and :func:`load_backbone`, the
CLIP backbone of a one-term spec, which trained heads and published rewards load their backbone with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .backbones import ClipBackbone
from .base import VisionReward
from .errors import RewardSpecError


@dataclass
class Family:
    """A named way to build a reward: ``build(arg, device, dtype, **options) -> VisionReward``."""

    name: str
    build: Callable[..., VisionReward]
    default_arg: str | None
    description: str
    backbone: Callable[..., ClipBackbone] | None = None


@dataclass
class Term:
    family: str
    arg: str | None
    weight: float = 1.0
    options: dict[str, str] = field(default_factory=dict)
    text: str = ""


_FAMILIES: dict[str, Family] = {}


def register_family(
    name: str,
    build: Callable[..., VisionReward],
    default_arg: str | None,
    description: str,
    backbone: Callable[..., ClipBackbone] | None = None,
) -> None:
    """Register a reward family under ``name`` (used as ``name:ARG`` in specs)."""
    _FAMILIES[name] = Family(name, build, default_arg, description, backbone)


def known_families() -> dict[str, str]:
    """``{name: description}`` of every registered family."""
    return {n: f.description for n, f in sorted(_FAMILIES.items())}


def _float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def parse_spec(spec: str) -> list[Term]:
    """Parse a spec string into terms (no models are loaded)."""
    if not isinstance(spec, str) or not spec.strip():
        raise RewardSpecError("empty reward spec; expected e.g. 'clip:ViT-H-14/laion2b_s32b_b79k'")
    terms = []
    for raw in spec.split(","):
        text = raw.strip()
        if not text:
            raise RewardSpecError(f"empty term in reward spec {spec!r}")
        body, _, query = text.partition("?")
        options = {}
        for kv in filter(None, query.split("&")):
            k, eq, v = kv.partition("=")
            if not eq or not k:
                raise RewardSpecError(f"bad option {kv!r} in {text!r}; expected KEY=VALUE")
            options[k.strip()] = v.strip()
        weight = None
        head, star, rest = body.partition("*")
        if star and ":" not in head and _float(head) is not None:
            weight, body = _float(head), rest.strip()
        family, colon, arg = body.partition(":")
        family, arg = family.strip().lower(), arg.strip() if colon else None
        if family not in _FAMILIES:
            raise RewardSpecError(
                f"unknown reward family {family!r} in {text!r}; known families: "
                + "; ".join(f"{n} ({d})" for n, d in known_families().items())
            )
        if arg is not None and not arg:
            raise RewardSpecError(f"missing model after '{family}:' in {text!r}")
        if arg is not None and _float(arg) is not None:
            if weight is not None:
                raise RewardSpecError(f"two weights in {text!r}")
            weight, arg = _float(arg), None
        if arg is None:
            arg = _FAMILIES[family].default_arg
        terms.append(Term(family, arg, 1.0 if weight is None else weight, options, text))
    return terms


def load_backbone(
    spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> ClipBackbone:
    """Load the CLIP backbone of a single-term spec such as ``clip:ViT-B-32/openai`` or ``hfclip:FOLDER``."""
    term = backbone_term(spec)
    return _FAMILIES[term.family].backbone(term.arg, device=device, dtype=dtype)


def backbone_term(spec: str) -> Term:
    """The one term of a CLIP backbone spec (checked, nothing loaded): :class:`RewardSpecError` otherwise."""
    terms = parse_spec(spec)
    if len(terms) != 1:
        raise RewardSpecError(f"expected one CLIP model, got {len(terms)} terms in {spec!r}")
    fam = _FAMILIES[terms[0].family]
    if fam.backbone is None:
        with_backbones = [n for n, f in _FAMILIES.items() if f.backbone is not None]
        raise RewardSpecError(f"family {fam.name!r} has no CLIP backbone; use one of {with_backbones}")
    return terms[0]
