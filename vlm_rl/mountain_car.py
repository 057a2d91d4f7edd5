"""MountainCarContinuous as VLM-RM uses it: the goal is absorbing (once the car reaches the flag it stays
there), nothing terminates, and frames are *textured* (the reference found that CLIP rewards fail on
gymnasium's line drawing and work on a textured one): a sky, a grassy mountain, a red car with wheels and a
yellow flag on the peak. Drawn with PIL at gymnasium's 400x600 and resized to the requested size.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
from PIL import Image, ImageDraw

SCREEN_HW = (400, 600)
GOAL_POSITION = 0.45


def height(x: np.ndarray | float) -> np.ndarray | float:
    """Track height at position ``x`` (gymnasium's ``sin(3x) * 0.45 + 0.55``)."""
    return np.sin(3 * np.asarray(x)) * 0.45 + 0.55


class AbsorbingGoal(gym.Wrapper):
    """Once the car reaches the goal it stays there, at zero velocity, for the rest of the episode (the
    reference clips the position at 0.45); the env's own termination is dropped. The ground-truth reward
    stays the env's: +100 on arrival (once), minus 0.1 * action^2 on every step."""

    def reset(self, **kwargs):
        self._arrived = False
        return self.env.reset(**kwargs)

    def step(self, action):
        env = self.env.unwrapped
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["terminated_by_env"] = bool(terminated)
        if self._arrived and terminated:
            reward -= 100.0  # the arrival bonus counts once
        if self._arrived or env.state[0] >= GOAL_POSITION:
            self._arrived = True
            env.state = np.array([GOAL_POSITION, 0.0], dtype=np.float32)
            obs = env.state.copy()
        return obs, reward, False, truncated, info


class TexturedRender(gym.Wrapper):
    """``render()`` returns the textured frame ``[H,W,3]`` uint8 of ``size`` ``(H, W)``."""

    def __init__(self, env: gym.Env, size: tuple[int, int] = SCREEN_HW) -> None:
        super().__init__(env)
        self.size = size
        u = env.unwrapped
        self.lo, self.hi = u.min_position, u.max_position
        self.scale = SCREEN_HW[1] / (self.hi - self.lo)  # pixels per unit, both axes (as gymnasium)
        self._background = self._draw_background()

    def _px(self, x: float, y: float) -> tuple[float, float]:
        """World ``(x, y)`` to image pixels (y down; gymnasium draws y up, then flips)."""
        return (x - self.lo) * self.scale, SCREEN_HW[0] - y * self.scale

    def _draw_background(self) -> Image.Image:
        h, w = SCREEN_HW
        sky = np.linspace([120, 180, 235], [225, 240, 252], h)[:, None, :].repeat(w, 1)
        img = Image.fromarray(sky.astype(np.uint8))
        d = ImageDraw.Draw(img)
        xs = np.linspace(self.lo, self.hi, 200)
        ridge = [self._px(x, height(x)) for x in xs]
        d.polygon(ridge + [(w, h), (0, h)], fill=(86, 150, 70))  # grass
        d.line(ridge, fill=(60, 110, 45), width=4)
        for k, dy in enumerate((18, 40, 70)):  # soil bands below the surface
            band = [(px, py + dy) for px, py in ridge]
            d.line(band, fill=(120 - 10 * k, 95 - 8 * k, 60 - 5 * k), width=6)
        fx, fy = self._px(GOAL_POSITION, height(GOAL_POSITION))
        d.line([(fx, fy), (fx, fy - 55)], fill=(70, 70, 70), width=3)
        d.polygon([(fx, fy - 55), (fx + 30, fy - 47), (fx, fy - 39)], fill=(250, 210, 20), outline=(200, 160, 0))
        return img

    def render(self):
        img = self._background.copy()
        d = ImageDraw.Draw(img)
        pos = float(self.env.unwrapped.state[0])
        ang = math.atan(1.35 * math.cos(3 * pos))  # the track's slope at pos (x and y share one scale)
        base_x, base_y = self._px(pos, height(pos))
        c, s = math.cos(ang), math.sin(ang)

        def at(u: float, v: float) -> tuple[float, float]:  # car frame (u along the slope, v up) to pixels
            return base_x + u * c - v * s, base_y - (u * s + v * c)

        body = [at(-24, 8), at(24, 8), at(24, 22), at(-24, 22)]
        cabin = [at(-12, 22), at(10, 22), at(6, 34), at(-8, 34)]
        d.polygon(body, fill=(210, 40, 40), outline=(120, 20, 20))
        d.polygon(cabin, fill=(170, 210, 240), outline=(120, 20, 20))
        for u in (-14, 14):
            wx, wy = at(u, 7)
            d.ellipse([wx - 7, wy - 7, wx + 7, wy + 7], fill=(30, 30, 30))
        if self.size != SCREEN_HW:
            img = img.resize(self.size[::-1], Image.BILINEAR)
        return np.asarray(img)


def make_mountain_car(size: tuple[int, int], episode_length: int, textured: bool = True) -> gym.Env:
    """MountainCarContinuous-v0 with an absorbing goal, no termination, a time limit of ``episode_length``
    and frames ``[H,W,3]`` of ``size``: textured, or gymnasium's own drawing when ``textured`` is False."""
    base = gym.make("MountainCarContinuous-v0", render_mode="rgb_array").unwrapped
    env = gym.wrappers.TimeLimit(AbsorbingGoal(base), episode_length)
    if textured:
        return TexturedRender(env, size)
    from .envs import ResizeFrames

    return ResizeFrames(env, size)
