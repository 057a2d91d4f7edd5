"""Captioned frames of the RL scenes, for training the embedded CLIP of these environments: states are set
directly (humanoid poses from :mod:`vlm_rl.poses`, CartPole cart positions and pole angles), rendered
with the training camera, and captioned from geometric predicates (the tasks' own success predicates),
so every caption is true of its frame by construction.

    python -m vlm_rl.scene_data --env humanoid --n 20000 --out data/humanoid_frames
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from mmreward.command import run_command, with_examples

from .envs import EnvSpec, make_env
from .poses import CANONICAL, sample_pose
from .tasks import TASKS, torso_uprightness

LYING = "a humanoid robot lying on the ground"
CART_FALLEN = "a pole lying flat next to the cart"
CAR_VALLEY = "a car at the bottom of the valley"


#: captions beyond the tasks' own, each with the predicate that makes it true, per environment
EXTRA_CAPTIONS = {
    "humanoid": [(LYING, lambda env: torso_uprightness(env) < 0.35)],  # torso within ~70° of horizontal
    "cartpole": [(CART_FALLEN, lambda env: abs(env.unwrapped.state[2]) > np.deg2rad(70))],
    "mountaincar": [(CAR_VALLEY, lambda env: abs(env.unwrapped.state[0] + 0.52) < 0.15)],  # valley floor: -pi/6
}


def true_captions(env_name: str, env) -> list[str]:
    """Every caption true of the current state of ``env``: the environment's baseline prompt, the goal of
    each of its tasks whose predicate holds, and each extra caption whose predicate holds."""
    tasks = [t for t in TASKS.values() if t.env == env_name]
    return ([tasks[0].baseline] + [t.goal for t in tasks if t.success(env)]
            + [cap for cap, holds in EXTRA_CAPTIONS[env_name] if holds(env)])


def set_random_state(env_name: str, env, rng: np.random.Generator, i: int) -> None:
    """Humanoid: poses drawn evenly from the canonical task poses (with variations) and fully random ones.
    CartPole: half the pole angles within 15° of upright, half anywhere within ±90°, the cart anywhere on
    the track. MountainCar: a third at the flag (the absorbing goal), the rest anywhere left of it."""
    if env_name == "humanoid":
        kinds = [*CANONICAL, "random", "random"]
        sample_pose(env, rng, kinds[i % len(kinds)])
    elif env_name == "cartpole":
        theta = rng.uniform(-15, 15) if i % 2 == 0 else rng.uniform(-90, 90)
        env.unwrapped.state = np.array([rng.uniform(-2.3, 2.3), 0.0, np.deg2rad(theta), 0.0])
    else:
        x = 0.45 if i % 3 == 0 else rng.uniform(-1.2, 0.45)
        env.unwrapped.state = np.array([x, 0.0], dtype=np.float32)


def render_dataset(env_name: str, n: int, size: tuple[int, int] = (224, 224), seed: int = 0,
                   progress: bool = True, store_size: int | None = None) -> tuple[torch.Tensor, list[list[str]]]:
    """``n`` frames ``[n,H,W,3]`` uint8 and their true captions, states from :func:`set_random_state`.
    Frames are rendered at
    ``size`` (as in training) and, with ``store_size`` S, squashed to ``[S,S]`` as the reward's
    preprocessing does (bicubic, antialiased), so a small CLIP's data stays small."""
    rng = np.random.default_rng(seed)
    env = make_env(EnvSpec(env_name, size=size), seed=seed)
    env.reset(seed=seed)
    out_hw = size if store_size is None else (store_size, store_size)
    frames, captions = torch.empty((n, *out_hw, 3), dtype=torch.uint8), []
    for i in tqdm(range(n), desc=f"{env_name} frames", disable=not progress):
        set_random_state(env_name, env, rng, i)
        captions.append(true_captions(env_name, env))
        frames[i] = squash(env.render(), out_hw)
    env.close()
    return frames, captions


def squash(frame: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    """``[H,W,3]`` uint8 resized to ``hw`` like :class:`mmreward.preprocess.ClipPreprocess` (squash mode)."""
    x = torch.from_numpy(np.array(frame, dtype=np.uint8, copy=True))  # renderers may hand out read-only views
    if tuple(x.shape[:2]) == tuple(hw):
        return x
    y = F.interpolate(x.permute(2, 0, 1)[None].float() / 255, size=hw, mode="bicubic", align_corners=False, antialias=True)
    return (y[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8)


def save_dataset(folder: str | Path, frames: torch.Tensor, captions: list[list[str]]) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"frames": frames.contiguous()}, folder / "frames.safetensors")
    (folder / "captions.json").write_text(json.dumps(captions))


def load_dataset(folder: str | Path) -> tuple[torch.Tensor, list[list[str]]]:
    folder = Path(folder)
    frames = load_file(folder / "frames.safetensors")["frames"]
    captions = json.loads((folder / "captions.json").read_text())
    if len(captions) != len(frames):
        raise ValueError(f"{folder}: {len(frames)} frames but {len(captions)} caption lists")
    return frames, captions


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", choices=sorted(EXTRA_CAPTIONS), required=True)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--size", type=int, nargs=2, default=[224, 224], metavar=("H", "W"))
    p.add_argument("--store-size", type=int, default=None, help="store frames squashed to SxS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    with_examples(p, "mmalign rl scenes --env humanoid --n 2000 --out outputs/scenes")
    args = p.parse_args(argv)
    frames, captions = render_dataset(args.env, args.n, tuple(args.size), args.seed, store_size=args.store_size)
    save_dataset(args.out, frames, captions)
    counts: dict[str, int] = {}
    for caps in captions:
        for c in caps:
            counts[c] = counts.get(c, 0) + 1
    print(json.dumps({"frames": len(captions), "captions": counts}, indent=1))


if __name__ == "__main__":
    sys.exit(run_command(main))
