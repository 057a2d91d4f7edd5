"""A model folder: a JSON file with the model's dataclass config (and a ``kind``) next to its weights as
safetensors. Saving renames a temp file over the weights, so a crash leaves the old ones intact; loading
executes no pickled code."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch.nn as nn

from mmreward.assets import resolve_asset
from mmreward.errors import ModelLoadError

WEIGHTS_FILE = "model.safetensors"


def save_folder(model: nn.Module, folder: str | Path, config_file: str, kind: str, extra: dict | None = None) -> None:
    """Write ``model.config`` (a dataclass) with ``kind`` and ``extra`` to ``config_file``, and the weights."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / config_file).write_text(json.dumps({"kind": kind, **asdict(model.config), **(extra or {})}, indent=2))
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(folder / WEIGHTS_FILE)


def load_folder(folder: str | Path, config_file: str, kind: str, build, what: str) -> nn.Module:
    """The module ``build(config_dict)`` with the folder's weights; ``what`` names the folder in errors."""
    from safetensors.torch import load_file

    folder = Path(resolve_asset(folder))
    if not (folder / config_file).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise ModelLoadError(f"{folder}: not {what} folder (needs {config_file} and {WEIGHTS_FILE})")
    meta = json.loads((folder / config_file).read_text())
    if meta.get("kind") != kind:
        raise ValueError(f"{folder}/{config_file}: kind {meta.get('kind')!r}, expected {kind!r}")
    model = build(meta)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model
