"""Where the embedded default models and the shipped configs are found, from any working folder.

A path that starts with ``assets/`` (``clip:assets/shapesworld-clip``, ``pretrained: assets/dna-mdlm``) is
read as given when it exists relative to the working folder; otherwise it is looked up in the suite's asset
folder: ``$MMALIGN_ASSETS`` when set, else the ``assets/`` installed with the package (or the checkout's).
Shipped configs are found the same way by name: ``--config d3po_shapes`` is ``configs/d3po_shapes.yaml``.
"""

from __future__ import annotations

import os
from pathlib import Path

ASSETS_ENV = "MMALIGN_ASSETS"
_ROOT = Path(__file__).resolve().parents[1]  # the checkout, or site-packages for an installed wheel


def shipped_dir(name: str) -> Path | None:
    """The installed (``site-packages/mmalign/<name>``) or checkout (``<repo>/<name>``) data folder, if any."""
    for cand in (_ROOT / "mmalign" / name, _ROOT / name):
        if cand.is_dir():
            return cand
    return None


def assets_dir() -> Path | None:
    """The folder the embedded defaults are read from (``$MMALIGN_ASSETS`` first)."""
    env = os.environ.get(ASSETS_ENV)
    return Path(env).expanduser() if env else shipped_dir("assets")


def resolve_asset(path: str | os.PathLike) -> str:
    """``path`` itself when it exists (or is not an ``assets/...`` path), else its copy in :func:`assets_dir`.

    >>> resolve_asset("assets/shapesworld-clip")    # from any folder  # doctest: +SKIP
    '/.../site-packages/mmalign/assets/shapesworld-clip'
    """
    text = os.path.expanduser(str(path))
    parts = Path(text).parts
    if os.path.exists(text) or os.path.isabs(text) or not parts or parts[0] != "assets":
        return text
    root = assets_dir()
    if root is not None and (root.joinpath(*parts[1:])).exists():
        return str(root.joinpath(*parts[1:]))
    return text


def missing_asset_hint(path: str | os.PathLike) -> str:
    """A sentence for errors about an ``assets/...`` path that is found nowhere ('' for other paths)."""
    parts = Path(str(path)).parts
    if not parts or parts[0] != "assets" or os.path.exists(str(path)):
        return ""
    root = assets_dir()
    return (f" (looked in the working folder and in {root}; set {ASSETS_ENV} to the folder holding the "
            f"embedded models, or re-train it: see docs/assets.md)")


def resolve_config(name_or_path: str | os.PathLike) -> str:
    """A config path as given when it exists, else the shipped config of that name (``d3po_shapes``,
    ``d3po_shapes.yaml`` or ``configs/d3po_shapes.yaml``); unchanged when neither exists."""
    text = os.path.expanduser(str(name_or_path))
    if os.path.exists(text):
        return text
    root = shipped_dir("configs")
    if root is None:
        return text
    name = Path(text).name
    for cand in (root / name, root / f"{name}.yaml"):
        if cand.is_file() and (len(Path(text).parts) == 1 or Path(text).parts[0] == "configs"):
            return str(cand)
    return text


def shipped_configs() -> list[str]:
    """Names of the shipped configs (``--config NAME``)."""
    root = shipped_dir("configs")
    return sorted(p.stem for p in root.glob("*.yaml")) if root else []
