"""ReNO on ShapesWorld: the exact evaluator's score of the embedded one-step model before and after
noise optimisation, against best-of-N sampling at the same number of generator+reward evaluations,
with the reward-hacking check and the speed ratios.

    python benchmarks/reno_shapes.py [--per-category 36] [--seeds 2] [--iters 50] [--batch 16]

Writes ``benchmarks/results/reno_shapes.json`` and ``.md``, ``reno_shapes_samples.png`` (prompt |
initial | ReNO | best-of-N; green = correct by the evaluator, red = wrong) and ``reno_shapes_position.png``
(position prompts, those ReNO turned into the inverse relation first). The generated images are kept
(``--images``), so the judging can be run again without generating.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from diffusion_align.inputs import noise_for_seeds
from diffusion_align.reno import RenoConfig, chi_regulariser, make_generator, reno
from diffusion_align.reno.cli import EMBEDDED_MODEL, EMBEDDED_REWARD
from mmreward import load_reward
from mmreward.images import image_grid, text_tile, to_uint8, verdict_tile
from mmreward.shapes import load_suite
from mmreward.shapes.evaluator import category_table, suite_scores
from mmreward.shapes.generate import repeat_counts
from mmreward.shapes.prompts import CATEGORIES

RESULTS = Path(__file__).parent / "results"


@torch.no_grad()
def best_of_n(gen, reward, prompts: list[str], seeds: list[int], n: int, batch: int) -> tuple[list, list]:
    """For each (prompt, seed): ``n`` candidates (the seed's own noise first, then seeds ``seed*100000 + k``),
    the one the reward ranks best. Returns the chosen images and their rewards."""
    images, rewards = [], []
    for p, s in tqdm(list(zip(prompts, seeds)), desc=f"best-of-{n}"):
        cond = gen.encode([p])
        best_r, best_im = -float("inf"), None
        cand = [s] + [s * 100000 + k for k in range(1, n)]
        for k in range(0, n, batch):
            chunk = cand[k : k + batch]
            z = noise_for_seeds(gen.latent_shape(len(chunk)), chunk, str(gen.device))
            c = {key: _repeat(v, len(chunk)) for key, v in cond.items()}
            ims = gen(z, c)
            r = reward(ims, [p] * len(chunk))
            j = int(r.argmax())
            if r[j].item() > best_r:
                best_r, best_im = r[j].item(), ims[j : j + 1]
        images.extend(to_uint8(best_im))
        rewards.append(best_r)
    return images, rewards


def _repeat(v, n: int):
    if isinstance(v, dict):
        return {k: _repeat(x, n) for k, x in v.items()}
    if isinstance(v, torch.Tensor):
        return v.expand(n, *v.shape[1:]) if v.shape[0] == 1 else v
    return v


def forward_backward_time(gen, reward, prompts: list[str], seeds: list[int], reps: int = 5) -> float:
    """Seconds of one plain forward+backward pass (generator, decoder, reward) at this batch size."""
    cond = gen.encode(prompts)
    times = []
    for _ in range(reps + 1):
        z = noise_for_seeds(gen.latent_shape(len(prompts)), seeds, str(gen.device)).requires_grad_(True)
        t = time.perf_counter()
        loss = -reward(gen(z, cond), prompts).sum() + 0.01 * chi_regulariser(z).sum()
        loss.backward()
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:]))


def sample_grid(rows: list[tuple]) -> Image.Image:
    """Rows ``(prompt, initial, ok, reno, ok, best_of_n, ok)``: the prompt, then each image on green/red."""
    tiles = []
    for prompt, *cells in rows:
        tiles.append(text_tile(prompt.removeprefix("a photo of ")))
        tiles += [verdict_tile(cells[k], cells[k + 1]) for k in range(0, len(cells), 2)]
    header = [text_tile("")] + [text_tile(name, y=60) for name in ("initial (one step)", "ReNO", "best-of-N")]
    return image_grid(header + tiles, cols=4)


def generate(args, jobs: list[tuple[dict, int]]) -> dict:
    """ReNO and best-of-N images for every (row, seed) job, their rewards and the timings (no judging)."""
    from diffusers import DiffusionPipeline

    metas = [m for m, _ in jobs]
    gen = make_generator(DiffusionPipeline.from_pretrained(args.model))
    reward = load_reward(args.rewards)
    cfg = RenoConfig(iters=args.iters, lr=args.lr, reg_weight=args.reg_weight, grad_clip=args.grad_clip)
    init_imgs, reno_imgs, r0, r1, iter_times, best_iters = [], [], [], [], [], []
    t_start = time.time()
    for k in tqdm(range(0, len(jobs), args.batch), desc="reno batches"):
        chunk = jobs[k : k + args.batch]
        prompts, seeds = [m["prompt"] for m, _ in chunk], [s for _, s in chunk]
        res = reno(gen, reward, prompts, noise_for_seeds(gen.latent_shape(len(chunk)), seeds, "cpu"), cfg, progress=False)
        init_imgs += list(to_uint8(res.initial))
        reno_imgs += list(to_uint8(res.best))
        r0 += res.initial_reward.tolist()
        r1 += res.best_reward.tolist()
        best_iters += res.best_iter.tolist()
        iter_times += [rec["time"] for rec in res.log[:-1]]  # iterations with an update
    reno_wall = time.time() - t_start
    t = time.time()
    bon_imgs, bon_r = best_of_n(gen, reward, [m["prompt"] for m in metas], [s for _, s in jobs], args.iters, args.batch)
    bon_wall = time.time() - t
    # speed: a ReNO iteration against one plain forward+backward at the same batch size; and per prompt
    fb = forward_backward_time(gen, reward, [m["prompt"] for m in metas[: args.batch]], [s for _, s in jobs[: args.batch]])
    t = time.time()
    reno(gen, reward, [metas[0]["prompt"]], noise_for_seeds(gen.latent_shape(1), [0], "cpu"), cfg, progress=False)
    one_prompt = time.time() - t
    return {"initial": np.stack(init_imgs), "reno": np.stack(reno_imgs), "best_of_n": np.stack(bon_imgs),
            "r0": np.array(r0), "r1": np.array(r1), "bon_r": np.array(bon_r), "best_iters": np.array(best_iters),
            "iter_times": np.array(iter_times), "walls": np.array([reno_wall, bon_wall, fb, one_prompt]), "config": vars(cfg)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-category", type=int, default=36, help="prompts of each category (suite order)")
    p.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES,
                   help="only these categories' rows (e.g. position, to measure a remedy for relation hacking)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--model", default=EMBEDDED_MODEL)
    p.add_argument("--rewards", default=EMBEDDED_REWARD)
    p.add_argument("--lr", type=float, default=5.0)
    p.add_argument("--reg-weight", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "reno_shapes.json"))
    p.add_argument("--images", default=None, help="where the generated images and timings are kept (default: "
                   "outputs/<out stem>_images.npz); an existing file is judged again instead of regenerated")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    suite = load_suite("eval")
    metas = [m for tag in CATEGORIES if tag in args.categories for m in [x for x in suite if x["tag"] == tag][: args.per_category]]
    # seeds 0..n-1 per prompt; a prompt that repeats in the suite continues with new seeds (as
    # shapes.generate.sample_pipeline does), so repeated rows are distinct samples
    repeat = repeat_counts([m["prompt"] for m in metas])
    jobs = [(m, k * args.seeds + s) for m, k in zip(metas, repeat) for s in range(args.seeds)]
    out = Path(args.out)
    store = Path(args.images or f"outputs/{out.stem}_images.npz")
    key = {k: getattr(args, k) for k in ("per_category", "seeds", "iters", "batch", "model", "rewards", "lr", "reg_weight", "grad_clip")}
    if set(args.categories) != set(CATEGORIES):  # the key of a full run stays as it was, so kept images still match
        key["categories"] = sorted(args.categories)
    key = json.dumps(key, sort_keys=True)
    if store.is_file() and str(np.load(store)["key"]) == key:
        tqdm.write(f"judging the images kept in {store}")
        g = dict(np.load(store, allow_pickle=False))
        g["config"] = json.loads(str(g["config"]))
    else:
        g = generate(args, jobs)
        store.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(store, key=key, **{k: v for k, v in g.items() if k != "config"}, config=json.dumps(g["config"]))
    init_imgs, reno_imgs, bon_imgs = list(g["initial"]), list(g["reno"]), list(g["best_of_n"])
    reno_wall, bon_wall, fb, one_prompt = g["walls"].tolist()

    rows = [m for m, _ in jobs]
    result = {
        "model": args.model, "rewards": args.rewards, "config": g["config"], "prompts": len(metas), "seeds": args.seeds,
        "images": len(jobs), "threads": args.threads,
        "evaluator": {"initial": suite_scores(init_imgs, rows), "reno": suite_scores(reno_imgs, rows),
                      f"best_of_{args.iters}": suite_scores(bon_imgs, rows)},
        "reward": {"initial": float(g["r0"].mean()), "reno": float(g["r1"].mean()), f"best_of_{args.iters}": float(g["bon_r"].mean())},
        "best_iter_mean": float(g["best_iters"].mean()),
        "wall_time_s": {"reno": reno_wall, f"best_of_{args.iters}": bon_wall},
    }
    ev = result["evaluator"]
    c0, c1 = np.array(ev["initial"]["correct"]), np.array(ev["reno"]["correct"])
    result["reward_hacking"] = {
        "reward_rise": result["reward"]["reno"] - result["reward"]["initial"],
        "evaluator_rise": ev["reno"]["overall"] - ev["initial"]["overall"],
        "fixed": int((~c0 & c1).sum()), "broken": int((c0 & ~c1).sum()),
        "reward_rose_but_wrong": int(((g["r1"] > g["r0"]) & ~c1).sum()),
    }
    per_iter = float(np.median(g["iter_times"])) if len(g["iter_times"]) else float("nan")
    result["speed"] = {"batch": args.batch, "iteration_s": per_iter, "forward_backward_s": fb,
                       "iteration_over_forward_backward": per_iter / fb,
                       f"{args.iters}_iterations_one_prompt_s": one_prompt}

    out.parent.mkdir(parents=True, exist_ok=True)
    picks = [i for tag in CATEGORIES for i in [j for j, (m, _) in enumerate(jobs) if m["tag"] == tag][: 12 // len(args.categories)]]
    bon_ok = np.array(ev[f"best_of_{args.iters}"]["correct"])
    sample_grid([(rows[i]["prompt"], init_imgs[i], c0[i], reno_imgs[i], c1[i], bon_imgs[i], bon_ok[i]) for i in picks]).save(
        out.with_name(out.stem + "_samples.png"))
    # relations: position rows, the images ReNO turned into the inverse relation first
    inv0, inv1 = ev["initial"]["inverse"], ev["reno"]["inverse"]
    pos = [i for i, (m, _) in enumerate(jobs) if m["tag"] == "position"]
    pos = sorted(pos, key=lambda i: (not (inv1[i] and not inv0[i]), i))[:8]
    sample_grid([(rows[i]["prompt"], init_imgs[i], c0[i], reno_imgs[i], c1[i], bon_imgs[i], bon_ok[i]) for i in pos]).save(
        out.with_name(out.stem + "_position.png"))
    for v in ev.values():
        v.pop("correct")
        v.pop("inverse")
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    ev, names = r["evaluator"], list(r["evaluator"])
    lines = ["## ReNO on ShapesWorld", "",
             f"`{r['model']}` optimised for `{r['rewards']}`: {r['prompts']} evaluation-suite prompts × {r['seeds']} seeds "
             f"= {r['images']} images, {r['config']['iters']} iterations (lr {r['config']['lr']}, λ {r['config']['reg_weight']}, "
             f"clip {r['config']['grad_clip']}); best-of-N draws as many samples as ReNO evaluates the generator.", "",
             *category_table(ev)]
    lines += ["| inverse relation (position rows) | " + " | ".join(f"{ev[k]['inverse_relation']:.3f}" for k in names) + " |",
              "| mean reward | " + " | ".join(f"{r['reward'][k]:.4f}" for k in names) + " |",
              "| wall time (s) | – | " + " | ".join(f"{v:.0f}" for v in r["wall_time_s"].values()) + " |", ""]
    h, s = r["reward_hacking"], r["speed"]
    lines += [f"Reward hacking: reward +{h['reward_rise']:.4f}, evaluator {h['evaluator_rise']:+.3f}; {h['fixed']} images "
              f"fixed, {h['broken']} broken; {h['reward_rose_but_wrong']} images whose reward rose are still wrong.", "",
              f"Speed ({r['threads']} CPU threads, batch {s['batch']}): one ReNO iteration {s['iteration_s']:.3f} s vs one plain "
              f"forward+backward {s['forward_backward_s']:.3f} s → ratio **{s['iteration_over_forward_backward']:.2f}**; "
              f"{r['config']['iters']} iterations for one prompt: {list(s.values())[-1]:.1f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
