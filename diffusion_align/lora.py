"""LoRA adapters (peft) on a pipeline's denoiser: add, switch off, checkpoint, export and load back.

The export is the format the pipeline's own loader reads: ``pytorch_lora_weights.safetensors`` for
``pipe.load_lora_weights(folder)`` (SD 1.x/2.x, SDXL); for a pipeline without a LoRA loader (PixArt-α in
diffusers 0.42) peft's own layout, ``adapter_model.safetensors`` + ``adapter_config.json``, which
``peft.PeftModel.from_pretrained(pipe.transformer, folder)`` and :func:`load_lora` read.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from .pipelines import PipelineAdapter

LORA_FILE = "pytorch_lora_weights.safetensors"  #: diffusers' LoRA file (``load_lora_weights``)
PEFT_FILE = "adapter_model.safetensors"  #: peft's adapter file (``PeftModel.from_pretrained``)
PEFT_PREFIX = "base_model.model."  #: the key prefix of a PeftModel's saved state


def add_lora(model: torch.nn.Module, rank: int, alpha: float, targets: list[str]) -> list[torch.nn.Parameter]:
    """Attach LoRA adapters (gaussian init: the adapted model starts equal to the base) to ``model`` and
    return the trainable parameters (fp32). Diffusers models with peft integration use ``add_adapter``;
    others (PixArt's transformer) get the adapters injected by peft directly."""
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets)
    try:
        _attach(model, config)
    except ValueError as e:  # peft: "Target modules ... not found in the base model"
        raise ValueError(f"lora_targets {targets} matched no module of the {type(model).__name__}: {e}") from e
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"lora_targets {targets} matched no module of the {type(model).__name__}")
    for p in params:
        p.data = p.data.float()
    return params


def _attach(model: torch.nn.Module, config) -> None:
    """Add the adapters of ``config`` to ``model``: ``add_adapter`` for diffusers models with peft
    integration, peft's injection (and the ``peft_config`` the state-dict helpers read) for others."""
    if hasattr(model, "add_adapter"):
        model.add_adapter(config)
    else:
        from peft import inject_adapter_in_model

        inject_adapter_in_model(config, model)
        model.peft_config = {"default": config}


def _tuner_layers(model: torch.nn.Module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def adapters_disabled(model: torch.nn.Module):
    """Run ``model`` as its base model: its LoRA adapters switched off inside the block."""
    layers = _tuner_layers(model)
    for m in layers:
        m.enable_adapters(False)
    try:
        yield model
    finally:
        for m in layers:
            m.enable_adapters(True)


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights (peft's names, without the adapter name), on the CPU."""
    from peft.utils import get_peft_model_state_dict

    return {n: v.detach().cpu() for n, v in get_peft_model_state_dict(model).items()}


class LoraState(torch.nn.Module):
    """A model's LoRA weights as a module state dict (what :func:`mmreward.checkpoint.save_state` stores)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self._model = [model]  # not a submodule: only the adapters are state

    def state_dict(self, *a, **k):
        return lora_state_dict(self._model[0])

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        from peft.utils import set_peft_model_state_dict

        result = set_peft_model_state_dict(self._model[0], state)
        if strict and getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"unexpected LoRA keys in checkpoint: {result.unexpected_keys[:5]}")
        return result


def save_lora(adapter: PipelineAdapter, folder: str | os.PathLike) -> Path:
    """Export the denoiser's adapters to ``folder`` in the pipeline's own LoRA format (see the module
    docstring), with the adapter config (rank, alpha, targets); written to a temp folder and renamed, so a
    kill never leaves a half-written file. Returns the file written."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    tmp = folder / ".saving"
    tmp.mkdir(parents=True, exist_ok=True)
    model, pipe_cls = adapter.denoiser, type(adapter.pipe)
    config = model.peft_config["default"]
    if hasattr(pipe_cls, "save_lora_weights"):
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
        pipe_cls.save_lora_weights(str(tmp), unet_lora_layers=layers, safe_serialization=True,
                                   unet_lora_adapter_metadata=config.to_dict())
        name = LORA_FILE
    else:
        from safetensors.torch import save_file

        state = {PEFT_PREFIX + k: v.contiguous() for k, v in lora_state_dict(model).items()}
        save_file(state, str(tmp / PEFT_FILE), metadata={"format": "pt"})
        config.save_pretrained(str(tmp))
        os.replace(tmp / "adapter_config.json", folder / "adapter_config.json")
        name = PEFT_FILE
    os.replace(tmp / name, folder / name)
    shutil.rmtree(tmp, ignore_errors=True)
    return folder / name


def load_lora(adapter: PipelineAdapter, folder: str | os.PathLike) -> None:
    """Load adapters exported by :func:`save_lora` into the pipeline (``pipe.load_lora_weights`` where the
    pipeline has it, peft otherwise); ``ValueError`` when ``folder`` holds neither format."""
    folder = Path(folder)
    if (folder / LORA_FILE).is_file() and hasattr(adapter.pipe, "load_lora_weights"):
        adapter.pipe.load_lora_weights(str(folder))
    elif (folder / PEFT_FILE).is_file():
        from peft import LoraConfig
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(folder / PEFT_FILE)).items()}
        _attach(adapter.denoiser, LoraConfig.from_pretrained(str(folder)))
        set_peft_model_state_dict(adapter.denoiser, state)
    else:
        raise ValueError(f"{folder}: no LoRA adapters ({LORA_FILE} or {PEFT_FILE}) for a {type(adapter.pipe).__name__}")
