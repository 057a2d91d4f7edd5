"""VLM-RM with the embedded scene CLIP: reward quality, agents trained on the VLM reward alone, throughput.

    python benchmarks/vlm_rl.py [--parts quality throughput cartpole kneeling] [--model clip:assets/vlm-rl-clip]

Parts (each adds its section to ``benchmarks/results/vlm_rl.json``; the others are kept):

- ``quality``: rollouts of CartPole and MountainCar (a balancing / energy-pumping controller mixed with
  random actions at several rates) and of the humanoid (random-policy physics rollouts, and scripted
  sweeps from standing into each task pose, set kinematically). Pearson correlation of the VLM reward with
  the ground truth (CartPole-v1's reward: 1 while the pole is upright) and with each task's success
  predicate; EPIC distance ``sqrt((1 - rho) / 2)`` for CartPole (as VLM-RM computes it).
- ``throughput``: humanoid environment steps per second with rendering and the VLM reward, batched over N
  envs (one reward forward per step) against the naive loop (one render and one reward call per env per
  step), measured in the same run, and set against bare simulation and bare rendering.
- ``cartpole``: DQN on the VLM reward alone (``configs/cartpole.yaml``), evaluated at every checkpoint on
  500-step episodes: CartPole-v1's return (steps before the pole first falls or the cart leaves the track).
- ``kneeling``: SAC on the kneeling prompt, the same budget on the baseline prompt alone, and the random
  policy; success rate (the predicate holds on >= 50% of an episode's steps) and a video.

Training runs checkpoint and resume: rerunning the command continues where a killed run stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

# this file shares its name with the package: keep its own folder off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
WORK = ROOT / "outputs" / "bench_vlm_rl"
PARTS = ("quality", "throughput", "cartpole", "kneeling")

from mmreward import load_projection_reward  # noqa: E402
from vlm_rl.config import RLConfig  # noqa: E402
from vlm_rl.envs import EnvSpec, make_env  # noqa: E402
from vlm_rl.poses import CANONICAL, set_pose  # noqa: E402
from vlm_rl.reward_wrapper import score_frames  # noqa: E402
from vlm_rl.tasks import TASKS, get_task  # noqa: E402

SIZE = (224, 224)  # the configs' frame size


def task_reward(model: str, task: str, alpha: float = 0.0, goal: str | None = None):
    t = get_task(task)
    r = load_projection_reward(model, goal or t.goal, t.baseline, alpha)
    r.backbone.preprocess.resize_mode = "squash"
    return r.eval()


def pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")


def epic(rho: float) -> float:
    """EPIC distance from the Pearson correlation of (canonicalised) rewards: ``sqrt((1 - rho) / 2)``."""
    return float(np.sqrt((1 - rho) / 2))


# ----------------------------------------------------------------------------------------------------
# rollouts
# ----------------------------------------------------------------------------------------------------
def rollouts_classic(env_name: str, eps_values: tuple[float, ...], episodes: int, length: int, seed: int = 0):
    """Frames ``[N,H,W,3]``, success ``[N]`` and the random-action rate of each row, from ``episodes`` per
    rate of a controller (CartPole: push towards the pole's lean; MountainCar: push along the velocity)
    that takes a random action with probability ``eps``."""
    env = make_env(EnvSpec(env_name, size=SIZE, episode_length=length), seed=seed)
    task = get_task(env_name)
    rng = np.random.default_rng(seed)
    frames, success, eps_of = [], [], []
    for e, eps in enumerate(eps_values):
        for ep in range(episodes):
            env.reset(seed=seed + 100 * e + ep)
            for _ in range(length):
                s = env.unwrapped.state
                if env_name == "cartpole":
                    a = int(s[2] + 0.5 * s[3] > 0) if rng.random() >= eps else int(rng.integers(2))
                else:
                    a = np.array([1.0 if s[1] >= 0 else -1.0]) if rng.random() >= eps else rng.uniform(-1, 1, 1)
                env.step(a)
                frames.append(env.render())
                success.append(task.success(env))
                eps_of.append(eps)
    env.close()
    return np.stack(frames), np.array(success, float), np.array(eps_of)


def rollouts_humanoid(seed: int = 0, random_episodes: int = 4, sweep_len: int = 20):
    """Humanoid frames with every task's predicate: random-policy physics rollouts (100 steps each, every
    2nd frame) and kinematic sweeps from standing into each task pose (and into lying), at three yaws."""
    env = make_env(EnvSpec("humanoid", size=SIZE, episode_length=100), seed=seed)
    tasks = [t for t in TASKS.values() if t.env == "humanoid"]
    frames, success, source = [], {t.name: [] for t in tasks}, []

    def record(kind: str) -> None:
        frames.append(env.render())
        for t in tasks:
            success[t.name].append(t.success(env))
        source.append(kind)

    for ep in range(random_episodes):
        env.reset(seed=seed + ep)
        for i in range(100):
            env.step(env.action_space.sample())
            if i % 2 == 0:
                record("random_policy")
    env.reset(seed=seed)
    targets = {k: (v, (0.0, 0.0)) for k, v in CANONICAL.items() if k != "standing"} | {"lying": ({}, (90.0, 0.0))}
    for name, (joints, tilt) in targets.items():
        for yaw in (-30.0, 0.0, 30.0):
            for i in range(sweep_len):
                f = min(1.0, i / (0.6 * sweep_len))  # into the pose over 60% of the sweep, then held
                set_pose(env, {j: f * v for j, v in joints.items()}, yaw, (f * tilt[0], f * tilt[1]))
                record(f"sweep_{name}")
    env.close()
    return np.stack(frames), {k: np.array(v, float) for k, v in success.items()}, np.array(source)


def quality(model: str, alpha: float, quick: bool = False) -> dict:
    out: dict = {"alpha": alpha}
    n, length = (1, 30) if quick else (3, 200)
    for env_name, eps in (("cartpole", (0.0, 0.2, 0.5, 1.0)), ("mountaincar", (0.0, 0.5, 1.0))):
        t0 = time.time()
        frames, gt, _ = rollouts_classic(env_name, eps, n, length)
        r = score_frames(task_reward(model, env_name, alpha), frames)
        rho = pearson(r, gt)
        out[env_name] = {"frames": len(frames), "goal_share": float(gt.mean()), "pearson_reward_gt": rho,
                         "epic_distance": epic(rho), "reward_goal_mean": float(r[gt > 0].mean()),
                         "reward_not_goal_mean": float(r[gt == 0].mean()), "seconds": time.time() - t0}
        print(env_name, json.dumps(out[env_name]))
    t0 = time.time()
    frames, success, source = rollouts_humanoid(random_episodes=1 if quick else 4, sweep_len=6 if quick else 20)
    hum: dict = {"frames": len(frames), "sources": {s: int((source == s).sum()) for s in np.unique(source)}, "tasks": {}}
    for name, y in success.items():
        r = score_frames(task_reward(model, name, alpha), frames)
        rho = pearson(r, y)
        hum["tasks"][name] = {"goal_share": float(y.mean()), "pearson_reward_success": rho, "epic_distance": epic(rho),
                              "pearson_on_random_policy_frames": pearson(r[source == "random_policy"], y[source == "random_policy"])}
    hum["seconds"] = time.time() - t0
    out["humanoid"] = hum
    print("humanoid", json.dumps(hum["tasks"]))
    return out


# ----------------------------------------------------------------------------------------------------
# throughput
# ----------------------------------------------------------------------------------------------------
def throughput(model: str, n_envs: int, steps: int) -> dict:
    """Env steps per second (all envs together) on the humanoid at the configs' frame size."""
    import torch
    from stable_baselines3.common.vec_env import DummyVecEnv

    from vlm_rl.reward_wrapper import RenderToInfo, VLMRewardVecEnv, frames_to_tensor

    reward = task_reward(model, "kneeling")
    spec = EnvSpec("humanoid", size=SIZE, episode_length=10_000)
    envs = [make_env(spec, seed=i) for i in range(n_envs)]
    for i, e in enumerate(envs):
        e.reset(seed=i)

    def rate(fn, n: int) -> float:
        fn()  # warm-up (first render builds the GL context)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return n * n_envs / (time.perf_counter() - t0)

    def sim():
        for e in envs:
            e.step(e.action_space.sample())

    def render():
        for e in envs:
            e.render()

    def naive():
        for e in envs:
            e.step(e.action_space.sample())
            with torch.no_grad():
                reward(frames_to_tensor([e.render()]))

    out = {"n_envs": n_envs, "frame_size": list(SIZE), "bare_sim_steps_per_s": rate(sim, steps),
           "bare_render_frames_per_s": rate(render, steps), "naive_steps_per_s": rate(naive, steps)}
    for e in envs:
        e.close()
    for every in (1, 4):
        fns = [lambda i=i, k=every: RenderToInfo(make_env(spec, seed=i), k) for i in range(n_envs)]
        venv = VLMRewardVecEnv(DummyVecEnv(fns), reward)
        venv.reset()
        acts = np.stack([venv.action_space.sample() for _ in range(n_envs)])
        key = "batched_steps_per_s" if every == 1 else f"batched_every_{every}_steps_per_s"
        out[key] = rate(lambda v=venv, a=acts: v.step(a), steps)
        venv.close()
    out["batched_over_naive"] = out["batched_steps_per_s"] / out["naive_steps_per_s"]
    out["batched_over_bare_render"] = out["batched_steps_per_s"] / out["bare_render_frames_per_s"]
    print(json.dumps(out))
    return out


# ----------------------------------------------------------------------------------------------------
# trained agents
# ----------------------------------------------------------------------------------------------------
def set_work(work: Path, results: Path) -> None:
    global WORK, RESULTS
    WORK, RESULTS = work, results


def train_and_curve(cfg: RLConfig, eval_over: dict, episodes: int) -> list[dict]:
    """Train ``cfg`` (resuming a killed run), then evaluate the policy of every checkpoint."""
    from vlm_rl.evaluate import evaluate
    from vlm_rl.train import train

    cfg.keep_snapshots = True
    ckpt = Path(cfg.output_dir) / "checkpoint"
    resume = (Path(cfg.output_dir) / "checkpoint" / "model.zip").is_file()  # a later chunk continues the run
    if train(cfg, resume=resume)["stopped_by"] == "interrupt":
        raise SystemExit(f"interrupted; checkpoint kept in {ckpt} (rerun the same command to continue)")
    curve_file = Path(cfg.output_dir) / "bench_curve.json"
    curve = json.loads(curve_file.read_text()) if curve_file.is_file() else []
    done = {c["steps"] for c in curve}
    eval_cfg = RLConfig.from_dict({**vars(cfg), **eval_over})
    for snap in sorted(ckpt.glob("policy_*.safetensors"), key=lambda p: int(p.stem.split("_")[1])):
        steps = int(snap.stem.split("_")[1])
        if steps in done:
            continue
        res = evaluate(eval_cfg, ckpt, episodes, weights=snap.name, write=False)
        curve.append({"steps": steps, **{k: v for k, v in res.items() if k != "episodes"}})
        curve.sort(key=lambda c: c["steps"])
        curve_file.write_text(json.dumps(curve, indent=1))
        print(json.dumps(curve[-1]))
    return curve


def cartpole(model: str, total_steps: int, episodes: int) -> dict:
    cfg = RLConfig.from_yaml(ROOT / "configs" / "cartpole.yaml")
    cfg = RLConfig.from_dict({**vars(cfg), "reward_model": model, "total_steps": total_steps,
                              "output_dir": str(WORK / "cartpole"), "video_episodes": 0})
    t0 = time.time()
    curve = train_and_curve(cfg, {"episode_length": 500, "reward_source": "ground_truth"}, episodes)
    first = next((c["steps"] for c in curve if c["held_from_start"] >= 400), None)
    return {"algo": cfg.algo, "total_steps": total_steps, "curve": curve, "final_cartpole_v1_return": curve[-1]["held_from_start"],
            "first_steps_at_400": first, "wall_s_this_run": time.time() - t0, "eval_episodes": episodes,
            "episode_length_train": cfg.episode_length, "episode_length_eval": 500}


def random_policy_success(task: str, episodes: int, length: int) -> float:
    env = make_env(EnvSpec(get_task(task).env, size=(32, 32), episode_length=length), seed=0)
    wins = []
    for ep in range(episodes):
        env.reset(seed=10_000 + ep)
        env.action_space.seed(ep)
        held = []
        for _ in range(length):
            env.step(env.action_space.sample())
            held.append(get_task(task).success(env))
        wins.append(np.mean(held) >= 0.5)
    return float(np.mean(wins))


def kneeling(model: str, total_steps: int, episodes: int) -> dict:
    base = RLConfig.from_yaml(ROOT / "configs" / "humanoid_kneeling.yaml")
    out: dict = {"total_steps": total_steps, "eval_episodes": episodes}
    for arm, goal in (("kneeling_prompt", None), ("baseline_prompt_only", get_task("kneeling").baseline)):
        cfg = RLConfig.from_dict({**vars(base), "reward_model": model, "total_steps": total_steps, "goal": goal,
                                  "output_dir": str(WORK / arm), "video_episodes": 1})
        t0 = time.time()
        curve = train_and_curve(cfg, {"reward_source": "ground_truth"}, episodes)
        from vlm_rl.evaluate import evaluate

        evaluate(RLConfig.from_dict({**vars(cfg), "reward_source": "ground_truth"}), Path(cfg.output_dir) / "checkpoint", 1)
        out[arm] = {"curve": curve, "final_success_rate": curve[-1]["success_rate"],
                    "best_success_rate": max(c["success_rate"] for c in curve), "wall_s_this_run": time.time() - t0}
    out["random_policy"] = {"success_rate": random_policy_success("kneeling", episodes, base.episode_length)}
    return out


def shrink_gif(src: Path, dst: Path, size: int = 128, every: int = 2) -> None:
    """A smaller copy of a GIF for the repository: ``size`` pixels high, every ``every``-th frame."""
    from PIL import Image, ImageSequence

    with Image.open(src) as im:
        frames = [f.convert("RGB") for f in ImageSequence.Iterator(im)][::every]
        duration = im.info.get("duration", 50) * every
    w = round(frames[0].width * size / frames[0].height)
    frames = [f.resize((w, size), Image.BILINEAR) for f in frames]
    frames[0].save(dst, save_all=True, append_images=frames[1:], duration=duration, loop=0)


# ----------------------------------------------------------------------------------------------------
def write_markdown(res: dict) -> None:
    lines = ["# VLM-RM with the embedded scene CLIP (`benchmarks/vlm_rl.py`)", ""]
    if "quality" in res:
        q = res["quality"]
        lines += [f"## Reward quality (rollouts; alpha {q['alpha']:.1f})", "",
                  "| rollouts | frames | goal share | Pearson(VLM reward, ground truth) | EPIC distance |", "|---|---|---|---|---|"]
        for env_name in ("cartpole", "mountaincar"):
            r = q[env_name]
            lines.append(f"| {env_name} | {r['frames']} | {r['goal_share']:.2f} | {r['pearson_reward_gt']:.3f} | {r['epic_distance']:.3f} |")
        for name, r in q["humanoid"]["tasks"].items():
            lines.append(f"| humanoid: {name} | {q['humanoid']['frames']} | {r['goal_share']:.2f} | "
                         f"{r['pearson_reward_success']:.3f} | {r['epic_distance']:.3f} |")
        lines.append("")
    if "throughput" in res:
        t = res["throughput"]
        lines += [f"## Throughput (humanoid, {t['n_envs']} envs, {t['frame_size'][0]}x{t['frame_size'][1]} frames; env steps/s)", "",
                  "| bare simulation | bare rendering | naive loop | batched | batched, reward every 4 | batched / naive |",
                  "|---|---|---|---|---|---|",
                  f"| {t['bare_sim_steps_per_s']:.0f} | {t['bare_render_frames_per_s']:.1f} | {t['naive_steps_per_s']:.1f} | "
                  f"{t['batched_steps_per_s']:.1f} | {t['batched_every_4_steps_per_s']:.1f} | {t['batched_over_naive']:.2f}x |", ""]
    if "cartpole" in res:
        c = res["cartpole"]
        lines += [f"## CartPole on the VLM reward alone ({c.get('algo', 'ppo').upper()})", "",
                  "| env steps | CartPole-v1 return (500-step episodes) | success rate |", "|---|---|---|"]
        lines += [f"| {p['steps']} | {p['held_from_start']:.1f} | {p['success_rate']:.2f} |" for p in c["curve"]]
        lines.append("")
    if "kneeling" in res:
        k = res["kneeling"]
        arms = [a for a in ("kneeling_prompt", "baseline_prompt_only") if a in k]
        lines += ["## Humanoid kneeling (SAC)", "",
                  f"Success rate of the deterministic policy ({k['eval_episodes']} episodes; the kneeling predicate "
                  "holds on >= 50% of an episode's steps) at each snapshot; random policy: "
                  f"{k['random_policy']['success_rate']:.2f}.", "",
                  "| env steps | " + " | ".join(a.replace("_", " ") for a in arms) + " |", "|---|" + "---|" * len(arms)]
        steps = sorted({c["steps"] for a in arms for c in k[a]["curve"]})
        for st in steps:
            cells = [next((f"{c['success_rate']:.2f}" for c in k[a]["curve"] if c["steps"] == st), "") for a in arms]
            lines.append(f"| {st} | " + " | ".join(cells) + " |")
        lines += ["", " ".join(f"![{a}](vlm_rl_{a}.gif)" for a in arms), ""]
    (RESULTS / "vlm_rl.md").write_text("\n".join(lines))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--model", default="clip:assets/vlm-rl-clip", help="reward model spec (a CLIP)")
    p.add_argument("--alpha", type=float, default=0.0)
    p.add_argument("--n-envs", type=int, default=4)
    p.add_argument("--throughput-steps", type=int, default=50)
    p.add_argument("--cartpole-steps", type=int, default=150_000)
    p.add_argument("--kneeling-steps", type=int, default=100_000)
    p.add_argument("--episodes", type=int, default=10, help="evaluation episodes per checkpoint")
    p.add_argument("--quick", action="store_true", help="tiny rollouts (a dry run of the script)")
    p.add_argument("--work", default=str(WORK), help="training runs")
    p.add_argument("--results", default=str(RESULTS), help="where vlm_rl.{json,md} go")
    args = p.parse_args(argv)
    set_work(Path(args.work), Path(args.results))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "vlm_rl.json"
    res = json.loads(path.read_text()) if path.is_file() else {}
    res["model"] = args.model
    for part in args.parts:
        if part == "quality":
            res["quality"] = quality(args.model, args.alpha, args.quick)
        elif part == "throughput":
            res["throughput"] = throughput(args.model, args.n_envs, args.throughput_steps)
        elif part == "cartpole":
            res["cartpole"] = cartpole(args.model, args.cartpole_steps, args.episodes)
        else:
            res["kneeling"] = kneeling(args.model, args.kneeling_steps, args.episodes)
            for arm in ("kneeling_prompt", "baseline_prompt_only"):
                gif = WORK / arm / "videos" / "episode_0.gif"
                if gif.is_file():
                    shrink_gif(gif, RESULTS / f"vlm_rl_{arm}.gif")
        path.write_text(json.dumps(res, indent=1))
        write_markdown(res)
    print((RESULTS / "vlm_rl.md").read_text())


if __name__ == "__main__":
    main()
