"""Pieces shared by the scripts that train the embedded CLIP models (``mmreward.shapes.train_clip``,
``vlm_rl.train_clip``): their common command-line options, the tiny test-size model, and the fp16 round trip
that makes the evaluated model exactly the exported one."""

from __future__ import annotations

import argparse
import json

import torch

from .trainer import add_run_args


def add_training_args(p: argparse.ArgumentParser, *, out: str, work: str, steps: int, batch: int, warmup: int) -> None:
    p.add_argument("--out", default=out, help="output open_clip model folder")
    p.add_argument("--work", default=work, help="checkpoints and logs of the run")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="a very small model (tests)")
    p.add_argument("--stop-after", type=int, default=None, help="checkpoint and exit after this step (simulates a kill)")
    add_run_args(p)


def model_config(base: dict, tiny: bool, **tiny_vision) -> dict:
    """A copy of an open_clip model config; with ``tiny``, one layer of width 32 per tower (and the
    ``tiny_vision`` overrides, e.g. a smaller ``image_size``)."""
    cfg = json.loads(json.dumps(base))
    if tiny:
        cfg["vision_cfg"].update(layers=1, width=32, head_width=16, **tiny_vision)
        cfg["text_cfg"].update(layers=1, width=32, heads=2)
        cfg["embed_dim"] = 32
    return cfg


def round_to_fp16(model: torch.nn.Module) -> None:
    """Round the weights through fp16 in place (the exported precision), so what is evaluated is what is saved."""
    model.load_state_dict({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()})


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params, lr: float, max_norm: float = 1.0) -> None:
    """One update at learning rate ``lr``, gradients clipped to norm ``max_norm``."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()
