"""Tasks: the goal and baseline prompts of VLM-RM and a success predicate on the simulator state, so runs
are judged without a person (the reference had one author rate the videos).

Humanoid predicates read MuJoCo's world positions (metres; z up). Reference heights of gymnasium's
humanoid standing at rest: head centre 1.59, torso 1.39, pelvis 0.97, knees (shin origins) 0.52, feet
0.07. A trajectory succeeds when its predicate holds on at least half of its steps (the reference's
protocol: "the goal held for at least 50% of the episode").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BASELINE = "a humanoid robot"


@dataclass(frozen=True)
class Task:
    name: str
    env: str
    goal: str
    baseline: str
    #: ``success(env) -> bool`` on the current state of the (unwrapped) environment
    success: Callable[[object], bool]
    #: the ground-truth reward of a step from the env's own reward and the state; default: the env's own
    gt_reward: Callable[[float, object], float] | None = None


def _body(env, name: str) -> np.ndarray:
    return env.unwrapped.data.body(name).xpos


def _geom(env, name: str) -> np.ndarray:
    return env.unwrapped.data.geom(name).xpos


def torso_uprightness(env) -> float:
    """Cosine between the torso's up axis and world up (1: upright, 0: lying)."""
    return float(env.unwrapped.data.body("torso").xmat.reshape(3, 3)[2, 2])


def standing(env) -> bool:
    """Head above 1.3 m, torso within about 35° of vertical, both feet below 0.3 m."""
    feet = max(_body(env, "left_foot")[2], _body(env, "right_foot")[2])
    return bool(_geom(env, "head")[2] > 1.3 and torso_uprightness(env) > 0.8 and feet < 0.3)


def kneeling(env) -> bool:
    """Both knees (shin origins) below 0.25 m, torso within about 45° of vertical, head above 0.8 m."""
    knees = max(_body(env, "left_shin")[2], _body(env, "right_shin")[2])
    return bool(knees < 0.25 and torso_uprightness(env) > 0.7 and _geom(env, "head")[2] > 0.8)


def arms_raised(env) -> bool:
    """Standing with both hands above the head."""
    head = _geom(env, "head")[2]
    return bool(standing(env) and min(_geom(env, "left_hand")[2], _geom(env, "right_hand")[2]) > head)


def splits(env) -> bool:
    """Pelvis below 0.45 m, feet more than 1.0 m apart on the floor, torso within about 45° of vertical."""
    lf, rf = _body(env, "left_foot"), _body(env, "right_foot")
    return bool(_body(env, "pelvis")[2] < 0.45 and np.linalg.norm((lf - rf)[:2]) > 1.0
                and max(lf[2], rf[2]) < 0.3 and torso_uprightness(env) > 0.7)


def lotus(env) -> bool:
    """Seated: pelvis below 0.35 m, torso within about 35° of vertical, both feet on the floor within
    0.45 m of the pelvis horizontally, knees more than 0.4 m apart (crossed legs)."""
    pelvis = _body(env, "pelvis")
    lf, rf = _body(env, "left_foot"), _body(env, "right_foot")
    ls, rs = _body(env, "left_shin"), _body(env, "right_shin")
    near = max(np.linalg.norm((lf - pelvis)[:2]), np.linalg.norm((rf - pelvis)[:2]))
    return bool(pelvis[2] < 0.35 and torso_uprightness(env) > 0.8 and max(lf[2], rf[2]) < 0.3 and near < 0.45
                and np.linalg.norm((ls - rs)[:2]) > 0.4)


def pole_upright(env) -> bool:
    """CartPole: pole within 12° of vertical and the cart within the track (the env's own failure bounds)."""
    x, _, theta, _ = env.unwrapped.state
    return bool(abs(theta) < 12 * np.pi / 180 and abs(x) < 2.4)


def at_flag(env) -> bool:
    """MountainCar: the car is at the flag (position >= 0.45; the goal is absorbing)."""
    from .classic_control import GOAL_POSITION

    return bool(env.unwrapped.state[0] >= GOAL_POSITION - 1e-6)  # the held state is float32(0.45)


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("kneeling", "humanoid", "a humanoid robot kneeling", BASELINE, kneeling),
    Task("standing", "humanoid", "a humanoid robot standing up", BASELINE, standing),
    Task("arms_raised", "humanoid", "a humanoid robot standing up, with both arms raised", BASELINE, arms_raised),
    Task("splits", "humanoid", "a humanoid robot practicing gymnastics, doing the side splits", BASELINE, splits),
    Task("lotus", "humanoid", "a humanoid robot seated down, meditating in the lotus position", BASELINE, lotus),
    # with termination removed CartPole pays 1 on every step; its ground truth is CartPole-v1's: 1 while upright
    Task("cartpole", "cartpole", "pole vertically upright on top of the cart", "pole and cart", pole_upright,
         gt_reward=lambda r, env: float(pole_upright(env))),
    Task("mountaincar", "mountaincar", "a car at the peak of the mountain, next to the yellow flag",
         "a car in the mountain", at_flag),
]}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]
