"""Fine-tune a diffusion model with D3PO or DDPO (LoRA adapters), a text-to-video model with InstructVideo,
or a discrete DNA diffusion model with DRAKES, one config file per run; the ``method`` key picks the trainer.

    accelerate launch diffusion_align/train.py --config configs/d3po_shapes.yaml
    accelerate launch -m diffusion_align.train --config configs/d3po_shapes.yaml
    python -m diffusion_align.train --config configs/d3po_shapes.yaml [--resume] [--set key=value ...]

D3PO (:mod:`diffusion_align.d3po`) and DDPO (:mod:`diffusion_align.ddpo`) sample DDIM trajectories of the
pipeline every epoch, score them with the feedback source and update the LoRA weights
(:mod:`diffusion_align.rl_trainer`); DRAKES (:mod:`diffusion_align.drakes`) backpropagates a reward oracle
through Gumbel-softmax relaxed sampling; InstructVideo (:mod:`diffusion_align.instructvideo`) edits videos
and backpropagates a segmental video reward through the last DDIM steps. Every run writes to ``output_dir``: ``metrics.jsonl`` (one line per
epoch), ``config.json``, ``checkpoint/`` (safetensors; written every ``checkpoint_every`` epochs, at the
end, when the time budget runs out and on Ctrl-C, which finishes the current epoch first) and the final
weights (``lora/``: ``pytorch_lora_weights.safetensors`` for ``pipe.load_lora_weights``, or peft's format
for pipelines without a LoRA loader; DRAKES: ``model/``). ``--resume`` continues from ``checkpoint/`` and
gives the weights of an uninterrupted run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffusion_align.config import ConfigError, DiffusionRLConfig
from mmreward.command import run_command, with_examples
from mmreward.trainer import setup_logging

__all__ = ["config_method", "main", "method_entry", "train"]


def train(cfg: DiffusionRLConfig, resume: bool = False, stop_after_epochs: int | None = None, progress: bool = True,
          overwrite: bool = False) -> dict:
    """Run a D3PO or DDPO config (``cfg.method``); returns the run's result (epoch, counters, stop reason)."""
    from diffusion_align.d3po import D3POTrainer
    from diffusion_align.ddpo import DDPOTrainer

    trainer = {"d3po": D3POTrainer, "ddpo": DDPOTrainer}[cfg.method]
    return trainer(cfg, resume=resume, stop_after_epochs=stop_after_epochs, progress=progress, overwrite=overwrite).train()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML run config (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in output_dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (YAML value)")
    p.add_argument("--stop-after-epochs", type=int, default=None,
                   help="checkpoint and stop after this epoch (InstructVideo: step), simulating a kill")
    p.add_argument("--no-progress", action="store_true")
    with_examples(p, "mmalign train --config d3po_shapes", "mmalign train --config d3po_shapes --resume --set max_minutes=120", "accelerate launch diffusion_align/train.py --config configs/ddpo_shapes.yaml")
    args = p.parse_args(argv)
    setup_logging()
    config_class, run = method_entry(config_method(args.config, args.set))
    cfg = config_class.from_cli(args.config, args.set)
    return run(cfg, resume=args.resume, stop_after_epochs=args.stop_after_epochs, progress=not args.no_progress,
               overwrite=args.overwrite)


def method_entry(method: str | None):
    """``(config class, train function)`` of a config's ``method``: DRAKES (discrete diffusion), InstructVideo
    (text-to-video) and ControlNet++ / Ctrl-U (``controlnet_reward``) have their own configs and loops; D3PO and
    DDPO share :class:`DiffusionRLConfig`."""
    if method == "drakes":
        from diffusion_align import drakes

        return drakes.DrakesConfig, drakes.train
    if method == "instructvideo":
        from diffusion_align import instructvideo

        return instructvideo.InstructVideoConfig, instructvideo.train
    if method == "controlnet_reward":
        from diffusion_align import controlnet_reward

        return controlnet_reward.ControlNetRewardConfig, controlnet_reward.train
    return DiffusionRLConfig, train


def config_method(path: str, overrides: list[str]) -> str | None:
    """The ``method`` a config file (and its ``--set`` overrides) names, read before the config is validated."""
    import yaml

    from mmreward.assets import resolve_config

    path = resolve_config(path)
    if not Path(path).is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    method = data.get("method") if isinstance(data, dict) else None
    for item in overrides:
        if item.split("=", 1)[0].strip() == "method" and "=" in item:
            method = yaml.safe_load(item.split("=", 1)[1])
    return method


if __name__ == "__main__":
    sys.exit(run_command(main))
