"""Fingerprints of every trainer at fixed step counts, to check that a refactor changes no result.

Each run drives trainers through their command lines only (subprocesses with cwd and ``PYTHONPATH`` set to
the checkout holding this script, one CPU thread, no GPU, the hub offline), in a fresh folder, with tiny
settings, and records:

* ``metrics``: the rows of its log files (``{file: [rows]}``), without wall-clock keys (``time``,
  ``elapsed*``, ``*_s``, ``*_per_s``, ...); the run folder and the checkout are written ``{work}`` / ``{root}``;
* ``weights``: a sha256 per ``.safetensors`` file over its tensors sorted by name (name, dtype, shape, raw
  bytes; the metadata header, which holds timings, is left out), and ``tensors``: a short digest per tensor;
* ``images``: a sha256 per PNG / GIF over its decoded RGBA pixels.

    python benchmarks/regression_fingerprint.py record --out before.json [--work DIR] [--only d3po,reno]
    python benchmarks/regression_fingerprint.py compare before.json after.json   # exit status 1 on a difference

``record`` exits non-zero when a run fails (the failure is recorded as the run's ``error``); ``compare``
prints ``identical`` or each difference per run, and fails when anything differs or a run is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON, WORK = "{python}", "{work}"  # placeholders in the recorded commands
#: the subprocesses' environment: the measured checkout first on the path, deterministic and CPU-only
ENV = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0"}
VERSIONED = ("torch", "numpy", "diffusers", "transformers", "accelerate", "peft", "open_clip_torch", "safetensors",
             "stable_baselines3", "gymnasium", "mujoco", "pillow", "scipy")
IMAGE_SUFFIXES = (".png", ".gif")
MAX_LINES = 25  #: differences printed per run


@dataclass(frozen=True)
class Run:
    name: str
    cmds: tuple[tuple[str, ...], ...]
    #: glob patterns (in the run folder) of the JSON / JSONL files whose rows are recorded
    logs: tuple[str, ...]


def py(*args: str) -> tuple[str, ...]:
    return (PYTHON, *args)


def sets(**overrides: Any) -> tuple[str, ...]:
    """``--set key=value`` pairs, values written as YAML scalars."""
    def yaml(v: Any) -> str:
        return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

    return tuple(a for k, v in overrides.items() for a in ("--set", f"{k}={yaml(v)}"))


# ------------------------------------------------------------------------------------------- the runs
SHAPES_CLIP = "clip:assets/shapesworld-clip"
D3PO_TINY = dict(output_dir=f"{WORK}/run", num_epochs=3, max_minutes=None, sample_batch_size=2, samples_per_prompt=3,
                 sample_steps=4, train_first_steps=2, train_batch_size=3, checkpoint_every=2, grid_every=1,
                 check_weight_sync=True)
T2I_TINY = ("--tiny", "--batch", "4", "--ckpt-every", "2", "--threads", "1", "--work", f"{WORK}/work")
CLIP_TINY = ("--tiny", "--steps", "4", "--batch", "16", "--eval-every", "2", "--ckpt-every", "2", "--threads", "1",
             "--work", f"{WORK}/work", "--out", f"{WORK}/model")
RL_TINY = dict(n_envs=2, frame_height=64, frame_width=64, episode_length=32, eval_episodes=1, video_episodes=1)
PPO_TINY = "{n_steps: 32, batch_size: 32, n_epochs: 2, gamma: 0.98, gae_lambda: 0.8, learning_rate: 1.0e-3, clip_range: 0.2}"
SAC_TINY = "{learning_rate: 6.0e-4, batch_size: 32, tau: 0.005, gamma: 0.95, learning_starts: 32, buffer_size: 1000, " \
           "train_freq: 16, gradient_steps: 4, policy_kwargs: {net_arch: [64, 64]}}"
RL_LOGS = ("metrics.jsonl", "eval.json", "checkpoint/state.json")


def preferences(folder: str, pairs: int, seed: int, split: str = "train") -> tuple[str, ...]:
    return py("-m", "mmreward.shapes.preferences", "--out", folder, "--pairs", str(pairs), "--seed", str(seed),
              "--split", split)


def reward_run(name: str, config: str, **overrides: Any) -> Run:
    prefs = (preferences(f"{WORK}/prefs/train", 48, 0), preferences(f"{WORK}/prefs/val", 16, 1, "any"))
    train = py("-m", "mmreward.train_reward", "--config", config, "--no-progress",
               *sets(data=f"{WORK}/prefs/train/preferences.jsonl", val_data=f"{WORK}/prefs/val/preferences.jsonl",
                     output_dir=f"{WORK}/run", batch_size=16, checkpoint_every=2, **overrides))
    return Run(name, (*prefs, train), ("prefs/*/preferences.jsonl", "run/metrics.jsonl", "run/model/*.json"))


RUNS = (
    Run("d3po", (py("diffusion_align/train.py", "--config", "configs/d3po_shapes.yaml", "--no-progress",
                    *sets(**D3PO_TINY, feedback=SHAPES_CLIP)),), ("run/metrics.jsonl",)),
    Run("ddpo", (py("diffusion_align/train.py", "--config", "configs/ddpo_shapes.yaml", "--no-progress",
                    *sets(**D3PO_TINY, feedback="evaluator:graded", stat_min_count=2)),), ("run/metrics.jsonl",)),
    # D3PO's human-feedback path: sample pairs, label them (a reward stands in for the person), train on them
    Run("d3po_labels", (
        py("-m", "diffusion_align.label", "sample", "--config", "configs/d3po_shapes.yaml", "--out", f"{WORK}/labels",
           "--prompts", "2", "--per-prompt", "3"),
        py("-m", "diffusion_align.label", "annotate", "--dir", f"{WORK}/labels", "--auto", SHAPES_CLIP),
        py("diffusion_align/train.py", "--config", "configs/d3po_shapes.yaml", "--no-progress",
           *sets(output_dir=f"{WORK}/run", feedback="labels", labels_dir=f"{WORK}/labels", num_epochs=2, max_minutes=None,
                 train_batch_size=3, checkpoint_every=1, grid_every=1)),
    ), ("labels/pairs.jsonl", "labels/labels.jsonl", "run/metrics.jsonl")),
    Run("drakes", (py("diffusion_align/train.py", "--config", "configs/drakes_dna.yaml", "--no-progress",
                      *sets(output_dir=f"{WORK}/run", num_epochs=4, max_minutes=None, sample_steps=8, truncate_steps=3,
                            early_kl_samples=2, batch_size=4, num_accum_steps=2, checkpoint_every=2)),),
        ("run/metrics.jsonl", "run/model/config.json")),
    Run("reno", (py("-m", "diffusion_align.reno", "--prompt", "a photo of a red circle left of a blue square",
                    "--prompt", "a photo of two stars", "--n-seeds", "2", "--batch", "3", "--iters", "5",
                    "--device", "cpu", "--out", f"{WORK}/out", "--no-progress"),),
        ("out/log.jsonl", "out/prompts.jsonl", "out/initial/prompts.jsonl", "out/summary.json")),
    reward_run("reward_head", "configs/reward_head_shapes.yaml", epochs=3),
    reward_run("reward_clip", "configs/reward_clip_shapes.yaml", epochs=2),
    reward_run("reward_lora", "configs/reward_clip_shapes.yaml", mode="lora", epochs=2, learning_rate=1.0e-3),
    Run("shapes_t2i", (
        py("-m", "diffusion_align.embedded.train_shapes_t2i", "vae", "--steps", "3", *T2I_TINY),
        py("-m", "diffusion_align.embedded.train_shapes_t2i", "teacher", "--steps", "3", "--out", f"{WORK}/teacher",
           "--fp16", *T2I_TINY),
        py("-m", "diffusion_align.embedded.train_shapes_t2i", "distill", "--steps", "3", "--trajectories", "4",
           "--out", f"{WORK}/student", "--fp16", *T2I_TINY),
    ), ("work/*/log.jsonl", "work/vae/summary.json", "work/distill/trajectory_prompts.json", "*/training.json")),
    Run("shapes_clip", (py("-m", "mmreward.shapes.train_clip", *CLIP_TINY),), ("work/log.jsonl", "model/training.json")),
    Run("shape_net", (py("-m", "mmreward.shapes.train_shape_net", "--steps", "6", "--batch", "16", "--pool", "64",
                         "--width", "8", "--ckpt-every", "3", "--real", "benchmarks/audit", "--real-batch", "4",
                         "--threads", "1", "--work", f"{WORK}/work", "--out", f"{WORK}/model"),),
        ("work/log.jsonl", "model/config.json")),
    Run("dna_pretrain", (py("-m", "diffusion_align.dna.pretrain", "--out", f"{WORK}/model", "--steps", "10", "--batch",
                            "16", "--channels", "16", "--eval-every", "5", "--checkpoint-every", "4", "--threads", "1"),),
        ("model/metrics.jsonl", "model/config.json")),
    Run("dna_oracle", (py("-m", "diffusion_align.dna.oracle", "--out", f"{WORK}/oracle", "--n", "1200", "--epochs", "2",
                          "--threads", "1"),), ("oracle/metrics.json", "oracle/oracle.json")),
    Run("vlm_rl_clip", (py("-m", "vlm_rl.train_clip", *CLIP_TINY, "--frames-scale", "0.004"),),
        ("work/log.jsonl", "work/data/*/captions.json", "model/training.json")),
    Run("vlm_rl_cartpole", (py("-m", "vlm_rl.train", "--config", "configs/cartpole.yaml",
                               *sets(output_dir=f"{WORK}/run", **RL_TINY, total_steps=256, checkpoint_every=128,
                                     keep_snapshots=True, algo_kwargs=PPO_TINY)),),
        tuple(f"run/{f}" for f in RL_LOGS)),
    Run("vlm_rl_mountaincar", (py("-m", "vlm_rl.train", "--config", "configs/mountaincar.yaml",
                                  *sets(output_dir=f"{WORK}/run", **RL_TINY, total_steps=192, checkpoint_every=128,
                                        algo_kwargs=SAC_TINY)),),
        tuple(f"run/{f}" for f in RL_LOGS)),
    Run("vlm_rl_humanoid", (py("-m", "vlm_rl.train", "--config", "configs/humanoid_kneeling.yaml",
                               *sets(output_dir=f"{WORK}/run", **RL_TINY, total_steps=128, checkpoint_every=64,
                                     algo_kwargs=SAC_TINY)),),
        tuple(f"run/{f}" for f in RL_LOGS)),
)


# ------------------------------------------------------------------------------------------ fingerprints
def is_clock_key(key: str) -> bool:
    """Whether a metric key holds wall-clock time (or a rate per second)."""
    k = key.lower()
    return k in ("time", "timestamp", "seconds") or k.startswith("elapsed") or k.endswith(("_s", "_time", "_seconds"))


def sanitise(value: Any, paths: dict[str, str]) -> Any:
    """``value`` without wall-clock keys (at any depth), with the ``paths`` in its strings replaced."""
    if isinstance(value, dict):
        return {k: sanitise(v, paths) for k, v in value.items() if not is_clock_key(k)}
    if isinstance(value, list):
        return [sanitise(v, paths) for v in value]
    if isinstance(value, str):
        for path, name in paths.items():
            value = value.replace(path, name)
    return value


def read_rows(path: Path) -> list:
    """The rows of a JSONL file, or of a JSON file (a list, or one object)."""
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    data = json.loads(path.read_text())
    return data if isinstance(data, list) else [data]


def safetensors_digest(path: Path) -> tuple[str, dict[str, str]]:
    """sha256 over the tensors of a safetensors file (by name: name, dtype, shape, bytes) and 16-hex-digit
    digests per tensor; read from the file's layout (8-byte header size, JSON header, data)."""
    total, per = hashlib.sha256(), {}
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        for key in sorted(k for k in header if k != "__metadata__"):
            info = header[key]
            start, end = info["data_offsets"]
            f.seek(8 + size + start)
            data = f.read(end - start)
            h = hashlib.sha256(json.dumps([key, info["dtype"], info["shape"], len(data)]).encode())
            h.update(data)
            per[key] = h.hexdigest()[:16]
            total.update(h.digest())
    return total.hexdigest(), per


def image_digest(path: Path) -> str:
    """sha256 of the decoded frames (RGBA) of an image file."""
    from PIL import Image, ImageSequence

    h = hashlib.sha256()
    with Image.open(path) as im:
        for frame in ImageSequence.Iterator(im):
            rgba = frame.convert("RGBA")
            h.update(json.dumps(rgba.size).encode())
            h.update(rgba.tobytes())
    return h.hexdigest()


def fingerprint(run: Run, folder: Path) -> dict:
    """Metrics, weight and image digests of a finished run folder."""
    paths = {str(folder): WORK, str(ROOT): "{root}"}
    out: dict[str, Any] = {"metrics": {}, "weights": {}, "tensors": {}, "images": {}}
    for pattern in run.logs:
        files = sorted(folder.glob(pattern))
        if not files:
            out.setdefault("error", "")
            out["error"] += f"no file matches the log pattern {pattern!r}\n"
        for f in files:
            out["metrics"][f.relative_to(folder).as_posix()] = sanitise(read_rows(f), paths)
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f.relative_to(folder).as_posix()
        if f.suffix == ".safetensors":
            out["weights"][rel], out["tensors"][rel] = safetensors_digest(f)
        elif f.suffix.lower() in IMAGE_SUFFIXES:
            out["images"][rel] = image_digest(f)
    return out


# ------------------------------------------------------------------------------------------------ record
def subprocess_env() -> dict[str, str]:
    return {**os.environ, **ENV}


def expand(cmd: tuple[str, ...], folder: Path) -> list[str]:
    return [a.replace(PYTHON, sys.executable).replace(WORK, str(folder)) for a in cmd]


def check_imports() -> dict[str, str]:
    """Where the subprocesses import the packages from; each must be inside this checkout."""
    code = "import json, diffusion_align, mmreward, vlm_rl; print(json.dumps({m.__name__: m.__file__ for m in " \
           "(diffusion_align, mmreward, vlm_rl)}))"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                         check=True)
    found = json.loads(res.stdout)
    outside = {k: v for k, v in found.items() if not Path(v).resolve().is_relative_to(ROOT)}
    if outside:
        raise SystemExit(f"the subprocesses import {outside}, not the checkout {ROOT}")
    return {k: str(Path(v).resolve().relative_to(ROOT)) for k, v in found.items()}


def record_run(run: Run, folder: Path, log: Path, timeout: float) -> dict:
    """Run the commands of ``run`` in ``folder`` (their output to ``log``), then fingerprint it."""
    folder.mkdir(parents=True)
    entry: dict[str, Any] = {"cmd": [list(c) for c in run.cmds]}
    with log.open("w") as out:
        for cmd in run.cmds:
            argv = expand(cmd, folder)
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            try:
                code = subprocess.run(argv, cwd=ROOT, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT,
                                      timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                code = f"timeout after {timeout:.0f} s"
            if code != 0:
                tail = log.read_text(errors="replace").splitlines()[-15:]
                entry["error"] = f"{' '.join(cmd)}: exit {code}\n" + "\n".join(tail)
                return entry
    return {**entry, **fingerprint(run, folder)}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "HEAD")
    if not commit:  # not a git checkout
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def record(out: Path, work: Path | None, only: list[str] | None, timeout: float) -> int:
    known = {r.name: r for r in RUNS}
    unknown = sorted(set(only or []) - set(known))
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; known: {', '.join(known)}")
    runs = [r for r in RUNS if only is None or r.name in only]
    scratch = work is None
    work = Path(tempfile.mkdtemp(prefix="regression_fingerprint_")) if work is None else work.resolve()
    taken = [str(work / r.name) for r in runs if (work / r.name).exists()]
    if taken:
        raise SystemExit(f"{', '.join(taken)} already exist: choose a fresh --work")
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"versions": versions(), "git": git_state(), "imports": check_imports(), "env": ENV,
                              "seconds": {}, "runs": {}}
    t_all, failed = time.time(), []
    for i, run in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {run.name} ...", end=" ", flush=True)
        t0 = time.time()
        entry = record_run(run, work / run.name, work / f"{run.name}.log", timeout)
        result["seconds"][run.name] = round(time.time() - t0, 1)
        result["runs"][run.name] = entry
        if "error" in entry:
            failed.append(run.name)
        print(f"{'FAILED' if 'error' in entry else 'ok'} ({result['seconds'][run.name]:.0f} s)", flush=True)
        if "error" in entry:
            print("    " + entry["error"].replace("\n", "\n    "))
    result["seconds"]["total"] = round(time.time() - t_all, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} ({len(runs)} runs, {result['seconds']['total']:.0f} s)"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    if scratch and not failed:
        shutil.rmtree(work)
    elif failed:
        print(f"run folders and logs kept in {work}")
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------- compare
MISSING = object()


def show(v: Any) -> str:
    return "<missing>" if v is MISSING else json.dumps(v)


def canonical(v: Any) -> str:
    """JSON text of ``v`` with sorted keys: equal iff the values are (1 and 1.0 differ, NaN equals NaN)."""
    return json.dumps(v, sort_keys=True)


def value_diffs(a: Any, b: Any, path: str = "") -> Iterator[str]:
    """``path: a != b`` for every differing leaf (compared as :func:`canonical` JSON)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*a, *(k for k in b if k not in a)]:
            yield from value_diffs(a.get(k, MISSING), b.get(k, MISSING), f"{path}.{k}" if path else k)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from value_diffs(x, y, f"{path}[{i}]")
    elif a is MISSING or b is MISSING or canonical(a) != canonical(b):
        yield f"{path or 'value'}: {show(a)} != {show(b)}"


def file_diffs(a: dict, b: dict) -> Iterator[tuple[str, str]]:
    """``(file, what)`` for the files only one side has, and those whose entries differ."""
    for f in [*a, *(f for f in b if f not in a)]:
        if f not in b or f not in a:
            yield f, f"only in {'A' if f in a else 'B'}"
        elif canonical(a[f]) != canonical(b[f]):
            yield f, "differs"


def run_diffs(a: dict, b: dict) -> Iterator[str]:
    """What differs between two records of one run."""
    if a["cmd"] != b["cmd"]:
        yield f"cmd: {show(a['cmd'])} != {show(b['cmd'])}"
    for side, entry in (("A", a), ("B", b)):
        if "error" in entry:
            yield f"error in {side}: {entry['error']}"
    if "error" in a or "error" in b:
        return
    for f, what in file_diffs(a["metrics"], b["metrics"]):
        if what != "differs":
            yield f"metrics {f}: {what}"
            continue
        ra, rb = a["metrics"][f], b["metrics"][f]
        if len(ra) != len(rb):
            yield f"metrics {f}: {len(ra)} rows != {len(rb)} rows"
        for i, (x, y) in enumerate(zip(ra, rb)):
            for d in value_diffs(x, y):
                yield f"metrics {f} row {i}: {d}"
    for f, what in file_diffs(a["weights"], b["weights"]):
        if what == "differs":
            ta, tb = a["tensors"][f], b["tensors"][f]
            names = [k for k in [*ta, *(k for k in tb if k not in ta)] if ta.get(k) != tb.get(k)]
            what = f"differs in {len(names)} of {len(ta)} tensors: {', '.join(names[:6])}" + (", ..." if len(names) > 6 else "")
        yield f"weights {f}: {what}"
    for f, what in file_diffs(a["images"], b["images"]):
        yield f"image {f}: {what}"


def compare(path_a: Path, path_b: Path, markdown: Path | None = None) -> int:
    """Print the differences run by run; with ``markdown``, also write them as a table there."""
    a, b = (json.loads(p.read_text()) for p in (path_a, path_b))
    table: list[tuple[str, str]] = []
    for side, path, rec in (("A", path_a, a), ("B", path_b, b)):
        print(f"{side}: {path} (commit {(rec['git']['commit'] or 'unknown')[:10]})")
    for d in value_diffs(a["versions"], b["versions"]):
        print(f"note: versions differ: {d}")
    runs_a, runs_b = a["runs"], b["runs"]
    bad = 0
    for name in [*runs_a, *(n for n in runs_b if n not in runs_a)]:
        if name not in runs_a or name not in runs_b:
            print(f"{name}: missing in {'B' if name in runs_a else 'A'}")
            table.append((name, f"missing in {'B' if name in runs_a else 'A'}"))
            bad += 1
            continue
        diffs = list(run_diffs(runs_a[name], runs_b[name]))
        table.append((name, "identical" if not diffs else "; ".join(d.splitlines()[0] for d in diffs[:3])))
        if not diffs:
            print(f"{name}: identical")
            continue
        bad += 1
        print(f"{name}: {len(diffs)} difference(s)")
        for d in diffs[:MAX_LINES]:
            print("    " + d.replace("\n", "\n    "))
        if len(diffs) > MAX_LINES:
            print(f"    ... and {len(diffs) - MAX_LINES} more")
    total = len(set(runs_a) | set(runs_b))
    verdict = f"{total - bad} of {total} runs identical" if bad else f"all {total} runs identical"
    print(verdict)
    if markdown is not None:
        commits = [(r["git"]["commit"] or "unknown")[:10] for r in (a, b)]
        rows = "".join(f"| `{n}` | {what.replace('|', '/')} |\n" for n, what in table)
        markdown.write_text(f"# Regression fingerprints: `{commits[0]}` against `{commits[1]}`\n\n"
                            f"`python benchmarks/regression_fingerprint.py compare {path_a} {path_b}`: {verdict}.\n\n"
                            f"| run | metrics, weights and images |\n|---|---|\n{rows}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="run every trainer and write their fingerprints")
    r.add_argument("--out", type=Path, required=True, help="JSON file to write")
    r.add_argument("--work", type=Path, default=None,
                   help="folder for the runs (kept; default: a temp folder, removed when every run succeeded)")
    r.add_argument("--only", default=None, help=f"comma-separated runs (default all: {', '.join(x.name for x in RUNS)})")
    r.add_argument("--timeout", type=float, default=600, help="seconds per command")
    c = sub.add_parser("compare", help="compare two records; exit status 1 when anything differs")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.add_argument("--markdown", type=Path, default=None, help="also write the result as a Markdown table")
    args = p.parse_args(argv)
    if args.cmd == "record":
        only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
        return record(args.out, args.work, only, args.timeout)
    return compare(args.a, args.b, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
