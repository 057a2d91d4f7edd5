"""Textured classic-control scenes, drawn with PIL at gymnasium's 400x600 and resized to the requested size.

- MountainCarContinuous as VLM-RM uses it: the goal is absorbing (once the car reaches the flag it stays
  there), nothing terminates, and frames are *textured* (the reference found that CLIP rewards fail on
  gymnasium's line drawing and work on a textured one): a sky, a grassy mountain, a red car with wheels
  and a yellow flag on the peak.
- CartPole (termination removed elsewhere): the reference renders gymnasium's drawing, whose 10-pixel pole
  is about one pixel wide once a 600-pixel-wide frame is squashed to a small CLIP's 64x64 input; the
  embedded CLIP could not learn the pole's angle from it (every frame embedded alike). The textured
  variant draws a 26-pixel dark pole, a larger cart and a sky and ground; same geometry and scale.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
from PIL import Image, ImageDraw

SCREEN_HW = (400, 600)
GOAL_POSITION = 0.45


def sky(top=(120, 180, 235), bottom=(225, 240, 252)) -> Image.Image:
    """A vertical gradient of gymnasium's screen size."""
    h, w = SCREEN_HW
    return Image.fromarray(np.linspace(top, bottom, h)[:, None, :].repeat(w, 1).astype(np.uint8))


class TexturedFrames(gym.Wrapper):
    """``render()`` returns a textured frame ``[H,W,3]`` uint8 of ``size`` ``(H, W)``: a static background
    drawn once, then the moving parts of the current state (subclasses)."""

    def __init__(self, env: gym.Env, size: tuple[int, int] = SCREEN_HW) -> None:
        super().__init__(env)
        self.size = size
        self._background = self.draw_background()

    def draw_background(self) -> Image.Image:
        raise NotImplementedError

    def draw_state(self, draw: ImageDraw.ImageDraw) -> None:
        raise NotImplementedError

    def render(self):
        img = self._background.copy()
        self.draw_state(ImageDraw.Draw(img))
        if self.size != SCREEN_HW:
            img = img.resize(self.size[::-1], Image.BILINEAR)
        return np.asarray(img)


def rotated(cx: float, cy: float, angle: float):
    """Maps ``(u, v)`` in a frame turned by ``angle`` (radians, counter-clockwise; v up) at pixel ``(cx, cy)``
    to image pixels (y down)."""
    c, s = math.cos(angle), math.sin(angle)
    return lambda u, v: (cx + u * c - v * s, cy - (u * s + v * c))


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


class TexturedMountainCar(TexturedFrames):
    def __init__(self, env: gym.Env, size: tuple[int, int] = SCREEN_HW) -> None:
        u = env.unwrapped
        self.lo, self.hi = u.min_position, u.max_position
        self.scale = SCREEN_HW[1] / (self.hi - self.lo)  # pixels per unit, both axes (as gymnasium)
        super().__init__(env, size)

    def _px(self, x: float, y: float) -> tuple[float, float]:
        """World ``(x, y)`` to image pixels (y down; gymnasium draws y up, then flips)."""
        return (x - self.lo) * self.scale, SCREEN_HW[0] - y * self.scale

    def draw_background(self) -> Image.Image:
        h, w = SCREEN_HW
        img = sky()
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

    def draw_state(self, d: ImageDraw.ImageDraw) -> None:
        pos = float(self.env.unwrapped.state[0])
        # car frame: u along the track's slope at pos (x and y share one scale), v up
        at = rotated(*self._px(pos, height(pos)), math.atan(1.35 * math.cos(3 * pos)))

        body = [at(-24, 8), at(24, 8), at(24, 22), at(-24, 22)]
        cabin = [at(-12, 22), at(10, 22), at(6, 34), at(-8, 34)]
        d.polygon(body, fill=(210, 40, 40), outline=(120, 20, 20))
        d.polygon(cabin, fill=(170, 210, 240), outline=(120, 20, 20))
        for u in (-14, 14):
            wx, wy = at(u, 7)
            d.ellipse([wx - 7, wy - 7, wx + 7, wy + 7], fill=(30, 30, 30))


class TexturedCartPole(TexturedFrames):
    """Gymnasium's CartPole geometry (track 100 px above the bottom, 125 px per metre, pole 1 m) with a
    26-px dark pole, a 70x40 cart on wheels, a sky and a ground."""

    TRACK_Y = SCREEN_HW[0] - 100  # pixels from the top

    def draw_background(self) -> Image.Image:
        h, w = SCREEN_HW
        img = sky((170, 205, 240), (235, 244, 252))
        d = ImageDraw.Draw(img)
        d.rectangle([0, self.TRACK_Y, w, h], fill=(150, 140, 120))
        d.line([(0, self.TRACK_Y), (w, self.TRACK_Y)], fill=(60, 55, 50), width=4)
        return img

    def draw_state(self, d: ImageDraw.ImageDraw) -> None:
        u = self.env.unwrapped
        x, theta = float(u.state[0]), float(u.state[2])
        scale = SCREEN_HW[1] / (2 * u.x_threshold)
        cx = x * scale + SCREEN_HW[1] / 2
        d.rectangle([cx - 35, self.TRACK_Y - 48, cx + 35, self.TRACK_Y - 10], fill=(40, 60, 110))
        for wx in (cx - 22, cx + 22):
            d.ellipse([wx - 10, self.TRACK_Y - 20, wx + 10, self.TRACK_Y], fill=(25, 25, 25))
        at = rotated(cx, self.TRACK_Y - 40, -theta)  # gymnasium's theta: positive leans right
        length = scale * 2 * u.length
        d.polygon([at(-13, 0), at(13, 0), at(13, length), at(-13, length)], fill=(190, 90, 20), outline=(110, 50, 10))
        d.ellipse([cx - 9, self.TRACK_Y - 49, cx + 9, self.TRACK_Y - 31], fill=(230, 230, 235))


def make_mountain_car(size: tuple[int, int], episode_length: int, textured: bool = True) -> gym.Env:
    """MountainCarContinuous-v0 with an absorbing goal, no termination, a time limit of ``episode_length``
    and frames ``[H,W,3]`` of ``size``: textured, or gymnasium's own drawing when ``textured`` is False."""
    base = gym.make("MountainCarContinuous-v0", render_mode="rgb_array").unwrapped
    env = gym.wrappers.TimeLimit(AbsorbingGoal(base), episode_length)
    if textured:
        return TexturedMountainCar(env, size)
    return ResizeFrames(env, size)


class ResizeFrames(gym.Wrapper):
    """Render at ``size`` ``(H,W)``: frames from renderers with their own fixed size (pygame's 400x600)
    are resized with PIL (bilinear); frames already of that size pass through unchanged."""

    def __init__(self, env: gym.Env, size: tuple[int, int]) -> None:
        super().__init__(env)
        self.size = size

    def render(self):
        frame = self.env.render()
        if frame is None or frame.shape[:2] == self.size:
            return frame
        from PIL import Image

        return np.asarray(Image.fromarray(frame).resize(self.size[::-1], Image.BILINEAR))
