"""The ``reno`` command: ReNO noise optimisation for every prompt and seed, written in the ShapesWorld
evaluator's format.

    reno --prompt "a photo of a red circle left of a blue square" --n-seeds 2 --out outputs/reno
    python -m diffusion_align.reno --prompts eval --iters 50 --out outputs/reno_eval

Writes to ``--out``: ``NNNN_S.png`` (prompt NNNN, seed S; optimised) with ``prompts.jsonl``, ``initial/NNNN_S.png`` with
``initial/prompts.jsonl``, ``grid.png`` (initial | optimised, a row per image, each cell labelled with its prompt, reward and verdict) and ``log.jsonl`` (one line
per prompt, seed and iteration: total and per-term reward, regulariser, noise norm, seconds). Images are
written as each batch finishes, so Ctrl-C keeps everything finished so far.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mmreward.command import run_command, with_examples
from mmreward.errors import UserError
from mmreward.files import refuse_to_replace
from mmreward.images import to_pil

from .. import inputs
from . import RenoConfig, make_generator, reno

#: the embedded one-step model and its reward (used when ``--model`` / ``--rewards`` are not given)
EMBEDDED_MODEL = "assets/shapesworld-t2i"
EMBEDDED_REWARD = "clip:assets/shapesworld-clip"
#: for hub models, the reference's CLIP term (100 - logit_scale * cos, weight 0.01); the HPS, PickScore and
#: ImageReward terms of the reference combination join when their families land (issue #8)
HUB_REWARD = "0.01*hfclip:laion/CLIP-ViT-H-14-laion2B-s32B-b79K?mode=logit"
GRID_ROWS = 64  #: images shown in grid.png (initial | optimised, one row each)


def grid_cells(prompt: str, seed: int, initial, best, r0: float, r1: float) -> list:
    """The two labelled cells of one image in ``grid.png``: prompt, reward and, for a ShapesWorld prompt, the
    evaluator's verdict (:func:`mmreward.images.labelled_grid`)."""
    from mmreward.images import GREEN, GREY, RED
    from mmreward.shapes.evaluator import evaluate_image
    from mmreward.shapes.prompts import parse_prompt

    try:
        parse_prompt(prompt)
        verdicts = [evaluate_image(im, prompt) for im in (initial, best)]
    except ValueError:
        verdicts = [None, None]
    cells = []
    for name, im, r, v in (("initial", initial, r0, verdicts[0]), ("ReNO", best, r1, verdicts[1])):
        notes = [(f"{name}, seed {seed}: reward {r:.3f}", GREY)]
        if v is None:
            notes.append(("evaluator: none (not a ShapesWorld prompt)", GREY))
        else:
            notes.append(("evaluator: correct", GREEN) if v["correct"] else (f"evaluator: wrong ({v['reason']})", RED))
        cells.append((im, prompt.removeprefix("a photo of "), notes))
    return cells
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


#: what a run writes besides its images (``NNNN_S.png`` in ``--out`` and ``--out/initial``)
RUN_FILES = ("summary.json", "log.jsonl", "prompts.jsonl", "grid.png", "initial/prompts.jsonl")


def remove_run(out: Path) -> None:
    """Delete the files a reno run wrote to ``out`` (and nothing else)."""
    for image in [*out.glob("[0-9][0-9][0-9][0-9]_*.png"), *(out / "initial").glob("[0-9][0-9][0-9][0-9]_*.png")]:
        image.unlink()
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def read_prompts(args) -> list[str]:
    """``--prompt`` (repeatable) and ``--prompts`` (:func:`diffusion_align.inputs.read_prompts`)."""
    prompts = list(args.prompt or [])
    try:
        prompts += inputs.read_prompts(args.prompts) if args.prompts else []
        if not prompts:
            raise ValueError("no prompts: pass --prompt TEXT (repeatable) or --prompts FILE")
        for i, p in enumerate(prompts):
            if not p.strip():
                raise ValueError(f"prompt {i} is empty")
    except ValueError as e:
        if isinstance(e, UserError):
            raise
        raise UserError(str(e)) from e
    return prompts[: args.limit] if args.limit else prompts


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompts", help="prompt file (.txt one per line, .jsonl with 'prompt') or a ShapesWorld suite: eval, train")
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--model", default=None, help=f"diffusers pipeline, hub id or folder (default {EMBEDDED_MODEL})")
    p.add_argument("--rewards", default=None,
                   help=f"reward spec (default {EMBEDDED_REWARD} for the embedded model, {HUB_REWARD} otherwise)")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--lr", type=float, default=5.0)
    p.add_argument("--reg-weight", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="first seed; seeds are seed .. seed+n_seeds-1 per prompt")
    p.add_argument("--n-seeds", type=int, default=1)
    p.add_argument("--steps", type=int, default=1, help="sampling steps of the generator (1-4)")
    p.add_argument("--timesteps", type=int, nargs="+", default=None,
                   help="explicit sampling timesteps instead of --steps (PixArt-DMD: 400)")
    p.add_argument("--batch", type=int, default=8, help="images optimised together (results do not depend on it)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its images, logs, grid)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--no-progress", action="store_true")
    with_examples(p, 'reno --prompt "a photo of a red star" --out out/reno', 'reno --prompts prompts.txt --rewards "clip:assets/shapesworld-clip" --iters 20 --out out/reno')
    args = p.parse_args(argv)

    out = Path(args.out)
    previous = [f for f in RUN_FILES if (out / f).exists()]
    refuse_to_replace(out, previous, "a reno run", args.overwrite)
    if args.iters < 1 or args.n_seeds < 1 or args.batch < 1:
        raise UserError("--iters, --n-seeds and --batch must be at least 1")
    prompts = read_prompts(args)
    model = args.model or EMBEDDED_MODEL
    spec = args.rewards or (EMBEDDED_REWARD if args.model is None else HUB_REWARD)
    dtype = DTYPES[args.dtype]
    if dtype == torch.float16 and args.device == "cpu":
        raise UserError(f"--dtype {args.dtype} needs a GPU (--device cuda); use float32 or bf16 on the CPU")

    from mmreward import load_reward
    from mmreward.errors import RewardSpecError
    from mmreward.registry import parse_spec

    try:  # a bad spec fails before any model is loaded
        parse_spec(spec)
    except RewardSpecError as e:
        raise RewardSpecError(f"--rewards: {e}") from e
    pipe = inputs.load_pipeline(model, args.device, dtype)
    try:
        gen = make_generator(pipe, steps=args.steps, timesteps=args.timesteps,
                             gradient_checkpointing=args.gradient_checkpointing)
    except ValueError as e:
        raise UserError(f"--model {model}: {e}") from e
    reward = load_reward(spec, device=args.device, dtype=dtype)
    cfg = RenoConfig(iters=args.iters, lr=args.lr, reg_weight=args.reg_weight, grad_clip=args.grad_clip, seed=args.seed)

    if previous:  # --overwrite: the earlier run goes entirely, so no stale image stays beside the new index
        remove_run(out)
    (out / "initial").mkdir(parents=True, exist_ok=True)
    jobs = [(i, s) for i in range(len(prompts)) for s in range(args.seed, args.seed + args.n_seeds)]
    index, initial_index, grid_rows = [], [], []
    log = (out / "log.jsonl").open("w")
    summary = {"model": model, "rewards": spec, "config": vars(cfg), "steps": args.steps, "images": 0,
               "initial_reward": [], "best_reward": [], "interrupted": False}
    try:
        for k in range(0, len(jobs), args.batch):
            chunk = jobs[k : k + args.batch]
            ps = [prompts[i] for i, _ in chunk]
            noise = inputs.noise_for_seeds(gen.latent_shape(len(chunk)), [s for _, s in chunk], args.device)

            def write_log(rec, chunk=chunk):
                for j, (i, s) in enumerate(chunk):
                    line = {"prompt_index": i, "seed": s, "iter": rec["iter"], "reward": rec["reward"][j],
                            "reg": rec["reg"][j], "noise_norm": rec["noise_norm"][j], "time": rec["time"] / len(chunk)}
                    if "components" in rec:
                        line["components"] = {n: v[j] for n, v in rec["components"].items()}
                    log.write(json.dumps(line) + "\n")
                log.flush()

            # Ctrl-C inside reno() ends this batch early with its best so far
            res = reno(gen, reward, ps, noise, cfg, progress=not args.no_progress, on_iteration=write_log)
            for j, ((i, s), a, b) in enumerate(zip(chunk, map(to_pil, res.initial), map(to_pil, res.best))):
                name = f"{i:04d}_{s}.png"
                a.save(out / "initial" / name)
                b.save(out / name)
                index.append(json.dumps({"image": name, "prompt": prompts[i], "seed": s,
                                         "reward": res.best_reward[j].item(), "best_iter": int(res.best_iter[j])}))
                initial_index.append(json.dumps({"image": name, "prompt": prompts[i], "seed": s,
                                                 "reward": res.initial_reward[j].item()}))
                if len(grid_rows) < 2 * GRID_ROWS:
                    grid_rows += grid_cells(prompts[i], s, a, b, res.initial_reward[j].item(), res.best_reward[j].item())
                summary["initial_reward"].append(res.initial_reward[j].item())
                summary["best_reward"].append(res.best_reward[j].item())
            (out / "prompts.jsonl").write_text("\n".join(index) + "\n")
            (out / "initial" / "prompts.jsonl").write_text("\n".join(initial_index) + "\n")
            if len(res.log) < cfg.iters:
                summary["interrupted"] = True
                break
    except KeyboardInterrupt:
        summary["interrupted"] = True
    finally:
        log.close()
    summary["images"] = len(index)
    if grid_rows:
        from mmreward.images import labelled_grid

        labelled_grid(grid_rows, cols=2, legend=(
            f"Left: the one-step sample from the seed's noise; right: after {cfg.iters} ReNO iterations on the noise. "
            f"reward: {spec}. evaluator (ShapesWorld prompts only): the verdict read from the pixels.")).save(
            out / "grid.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if summary["images"]:
        n = summary["images"]
        print(f"reno: {n} images in {out}; mean reward {sum(summary['initial_reward']) / n:.4f} -> "
              f"{sum(summary['best_reward']) / n:.4f}" + (" (interrupted)" if summary["interrupted"] else ""))
    return summary


def cli(argv: list[str] | None = None) -> int:
    """The ``reno`` console script: exit status 0 after a run (the summary line goes to stdout), 2 with a
    one-line message for a user error."""
    return run_command(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
