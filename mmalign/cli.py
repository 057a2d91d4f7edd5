"""``mmalign``: one command with a subcommand per job. Each subcommand is the ``main`` of a module, which
also runs as ``python -m <module>``; every one accepts ``--debug`` (traceback instead of a one-line error).

    mmalign --help
    mmalign reno --prompt "a photo of a red star" --out out/reno
    mmalign train --config d3po_shapes
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

from mmreward.command import run_command, split_debug


@dataclass(frozen=True)
class Command:
    module: str  # the module whose ``main(argv)`` runs
    help: str
    prefix: tuple[str, ...] = ()  # arguments put before the user's (a subcommand of the module's parser)


COMMANDS: dict[str, Command | dict[str, Command]] = {
    "demo": Command("mmreward.demo", "score ShapesWorld scenes and one-step samples with the embedded models"),
    "reno": Command("diffusion_align.reno.cli", "ReNO: optimise the initial noise of a one-step text-to-image model"),
    "train": Command("diffusion_align.train", "train D3PO, DDPO, DRAKES or InstructVideo from a config (the method key picks)"),
    "label": Command("diffusion_align.label", "sample image groups and label preferences for D3PO"),
    "bench": Command("mmreward.bench", "reward accuracy on a preference benchmark"),
    "train-reward": Command("mmreward.train_reward", "train a reward head or fine-tune CLIP on preference pairs"),
    "shapes": {
        "render": Command("mmreward.shapes.__main__", "ground-truth renders of a prompt suite", ("render",)),
        "evaluate": Command("mmreward.shapes.__main__", "score images against their prompts (exact evaluator)",
                            ("evaluate",)),
        "generate": Command("mmreward.shapes.__main__", "sample a text-to-image pipeline for a prompt suite",
                            ("generate",)),
        "preferences": Command("mmreward.shapes.preferences", "synthetic preference pairs with known truth"),
    },
    "rl": {
        "train": Command("vlm_rl.train", "train an RL agent on a CLIP reward (VLM-RM)"),
        "evaluate": Command("vlm_rl.evaluate", "roll out a trained agent: ground-truth success, reward, video"),
        "scenes": Command("vlm_rl.scene_data", "render captioned environment frames (the RL CLIP's data)"),
    },
    "dna": {
        "pretrain": Command("diffusion_align.dna.pretrain", "pretrain the masked-diffusion DNA model"),
        "oracle": Command("diffusion_align.dna.oracle", "train a DNA activity oracle (reward or held-out judge)"),
    },
    "assets": {
        "shapes-clip": Command("mmreward.shapes.train_clip", "re-train the embedded ShapesWorld CLIP"),
        "shapes-t2i": Command("diffusion_align.embedded.train_shapes_t2i",
                              "re-train the embedded ShapesWorld text-to-image models (vae, teacher, distill)"),
        "shapes-t2v": Command("diffusion_align.embedded.train_shapes_t2v",
                              "train the embedded ShapesWorld text-to-video model (motion modules on the teacher)"),
        "shapes-controlnet": Command("diffusion_align.embedded.train_shapes_controlnet",
                                     "train an embedded ShapesWorld ControlNet (seg or edges) on the teacher"),
        "dense-rewards": Command("mmreward.shapes.train_dense_rewards",
                                 "train the per-pixel reward models (segformer, edges) on clean renders"),
        "shapes-judge": Command("mmreward.vlm.train_judge", "train the embedded ShapesWorld VLM judge (LLaVA layout)"),
        "shape-net": Command("mmreward.shapes.train_shape_net", "re-train the evaluator's shape classifier"),
        "rl-clip": Command("vlm_rl.train_clip", "re-train the embedded CLIP of the RL scenes"),
    },
}

EXAMPLES = """examples:
  mmalign demo --out outputs/demo
  mmalign reno --prompt "a photo of a red star" --out out/reno
  mmalign train --config d3po_shapes            (a shipped config by name, or a path)
  mmalign rl train --config cartpole
  mmalign shapes evaluate --images out/reno --out out/reno/eval.json

Every command accepts --debug (show the traceback of an error). 'mmalign COMMAND --help' shows its options."""


def _usage(table: dict, name: str) -> str:
    width = max(len(k) for k in table) + 2
    lines = [f"usage: {name} COMMAND [options]", "", "commands:"]
    for key, cmd in table.items():
        text = cmd.help if isinstance(cmd, Command) else " | ".join(cmd)
        lines.append(f"  {key:<{width}}{text}")
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a subcommand; returns the exit status."""
    argv, debug = split_debug(sys.argv[1:] if argv is None else argv)
    table, prog = COMMANDS, "mmalign"
    while True:
        if not argv or argv[0] in ("-h", "--help"):
            print(_usage(table, prog) + ("\n\n" + EXAMPLES if table is COMMANDS else ""))
            return 0 if argv else 2
        name, argv = argv[0], argv[1:]
        entry = table.get(name)
        if entry is None:
            print(f"{prog}: unknown command {name!r}; choose from {', '.join(table)} (see '{prog} --help')",
                  file=sys.stderr)
            return 2
        prog = f"{prog} {name}"
        if isinstance(entry, Command):
            break
        table = entry
    main = importlib.import_module(entry.module).main
    saved, sys.argv[0] = sys.argv[0], prog  # argparse names the command after sys.argv[0]
    try:
        return run_command(main, [*entry.prefix, *argv, *(["--debug"] if debug else [])])
    except SystemExit as e:  # argparse's exits (--help: 0, a bad option: 2) keep their status
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    finally:
        sys.argv[0] = saved
