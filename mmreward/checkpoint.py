"""Training state checkpoints without pickle: one safetensors file holding the tensors, with
everything else as JSON in its metadata header.

``save_state`` writes a temp file and renames it over the old one (a single atomic step), so a kill
during saving leaves the previous checkpoint intact; ``load_state`` restores model, optimizer, step,
extra fields and RNGs.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

STATE_FILE = "state.safetensors"


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for key, v in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_state(
    folder: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    extra: dict | None = None,
    np_rng: np.random.Generator | None = None,
) -> Path:
    """Write ``folder/state.safetensors`` atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {"step": int(step), "extra": extra or {}}
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = _flatten_optimizer(optimizer)
        tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    meta["rng"] = {"python": random.getstate()[1]}
    if np_rng is not None:
        meta["np_rng"] = np_rng.bit_generator.state
    tmp = folder / (STATE_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"state": json.dumps(meta, default=int)})
    os.replace(tmp, folder / STATE_FILE)
    return folder


def has_state(folder: str | os.PathLike) -> bool:
    return (Path(folder) / STATE_FILE).is_file()


def run_checkpoint_dir(output_dir: str | os.PathLike, resume: bool, name: str = "checkpoint",
                       where: str = "output_dir", marker: str = STATE_FILE, overwrite: bool = False) -> Path:
    """``output_dir/name`` of a training run, checked against ``resume``: ``--resume`` needs a checkpoint
    there, and a fresh run refuses to overwrite one unless ``overwrite`` (:class:`ConfigError` either way; the
    caller deletes the old run). ``where`` names the setting that chose ``output_dir`` in the message
    (``output_dir`` in a config, ``--out`` on a command line); ``marker`` is the file whose presence means a
    checkpoint (another library's, e.g. SB3's ``model.zip``)."""
    from .config_file import ConfigError

    out = Path(output_dir)
    ckpt = out / name
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{where} {out} is a file, expected a directory")
    held = (ckpt / marker).is_file()
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run, or replace it")
    if resume and not held:
        raise ConfigError(f"--resume: no checkpoint in {ckpt}")
    if not resume and held and not overwrite:
        raise ConfigError(f"{ckpt} already holds a checkpoint: pass --resume to continue it, --overwrite to replace "
                          f"it, or choose another {where}")
    return ckpt


# Keys that may differ when a run is resumed: its budget, and how (not what) it runs.
BUDGET_KEYS = ("max_minutes", "num_epochs", "epochs", "total_steps", "steps")
RESUMABLE_KEYS = frozenset(BUDGET_KEYS + (
    "resume", "overwrite", "stop_after", "stop_after_steps", "threads", "device", "progress", "no_progress",
    "quiet", "debug", "log_with", "checkpoint_every", "ckpt_every", "keep_snapshots", "grid_every", "eval_every",
    "eval_episodes", "video_episodes"))


def check_resumed_config(saved_file: str | os.PathLike, config: dict, allowed=RESUMABLE_KEYS) -> None:
    """Raise :class:`ConfigError` naming each key whose value differs from the run's saved config
    (``saved_file``: ``config.json``, or a ``.yaml``), except the keys in ``allowed``; a run without one is not
    checked."""
    import yaml

    from .config_file import ConfigError

    path = Path(saved_file)
    if not path.is_file():
        return
    try:
        saved = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot be read ({e}); cannot check the resumed config against it") from e
    now = json.loads(json.dumps(config, default=str))  # the form config.json stores (tuples as lists...)
    changed = [k for k in sorted(set(saved) | set(now)) if k not in allowed and saved.get(k) != now.get(k)]
    if changed:
        diffs = "; ".join(f"{k}: {saved.get(k)!r} in the run, {now.get(k)!r} now" for k in changed)
        raise ConfigError(f"--resume with a changed config ({diffs}); only the budget ({', '.join(BUDGET_KEYS)}) "
                          "may change on resume: start a new run (another output folder, or --overwrite) to change the rest")


def read_state_info(folder: str | os.PathLike) -> tuple[int, dict]:
    """``(step, extra)`` of a checkpoint, without loading its tensors."""
    with safe_open(str(Path(folder) / STATE_FILE), framework="pt") as f:
        meta = json.loads(f.metadata()["state"])
    return int(meta["step"]), meta.get("extra", {})


def load_state(
    folder: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    np_rng: np.random.Generator | None = None,
) -> tuple[int, dict]:
    """Restore what :func:`save_state` wrote; returns ``(step, extra)``."""
    folder = Path(folder)
    tensors = load_file(str(folder / STATE_FILE))
    with safe_open(str(folder / STATE_FILE), framework="pt") as f:
        meta = json.loads(f.metadata()["state"])
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    if optimizer is not None and "optimizer" in meta:
        optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    torch.set_rng_state(tensors["rng.torch"])
    random.setstate((3, tuple(meta["rng"]["python"]), None))
    if np_rng is not None and "np_rng" in meta:
        np_rng.bit_generator.state = meta["np_rng"]
    return int(meta["step"]), meta.get("extra", {})
