"""Environments of VLM-RM, rendered offscreen: the MuJoCo humanoid with the reference's camera and visual
changes, CartPole and (textured) MountainCarContinuous, without termination, fixed episode lengths.

Rendering needs no display: MuJoCo uses EGL (``MUJOCO_GL=egl``, Mesa software rendering on a CPU
machine), set here before MuJoCo is imported unless the caller chose a backend. Render cost on 2 CPU
cores: about 10 frames/s with MuJoCo's default shadows (shadowsize 4096) and multisampling, about 90
frames/s with shadows, reflections and multisampling off (``fast_render``, the default here); the frame
size barely matters.
"""

from __future__ import annotations

import os
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

try:  # triton bundles its own LLVM; loaded after Mesa's (software EGL) it segfaults, loaded first it is fine.
    import triton  # noqa: F401  (torch imports it lazily, e.g. from torchvision.ops, long after a render)
except ImportError:
    pass

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

ENV_NAMES = ("humanoid", "cartpole", "mountaincar")

#: the reference's humanoid camera (``kube/job.yaml``): track the torso from 3.5 m, in front, slightly above
HUMANOID_CAMERA = {"trackbodyid": 1, "distance": 3.5, "lookat": [0.0, 0.0, 1.0], "elevation": -10.0, "azimuth": 180.0}


@dataclass
class EnvSpec:
    """What :func:`make_env` builds: ``name`` (humanoid, cartpole, mountaincar), frame ``size`` ``(H, W)``
    in pixels, ``episode_length`` in steps (fixed: termination is removed, as in the reference),
    ``textured`` (the reference's visual changes for the humanoid and MountainCar; for CartPole a thicker
    pole that a small CLIP can see, see :mod:`vlm_rl.classic_control`), ``fast_render`` (shadows, reflections and
    multisampling off), ``camera`` (humanoid only; default :data:`HUMANOID_CAMERA`)."""

    name: str = "humanoid"
    size: tuple[int, int] = (224, 224)
    episode_length: int = 100
    textured: bool = True
    fast_render: bool = True
    camera: dict = field(default_factory=lambda: dict(HUMANOID_CAMERA))

    def __post_init__(self) -> None:
        if self.name not in ENV_NAMES:
            raise ValueError(f"unknown environment {self.name!r}; choose one of {ENV_NAMES}")
        if len(self.size) != 2 or min(self.size) < 16:
            raise ValueError(f"size must be (height, width) of at least 16 pixels, got {self.size}")
        if self.episode_length < 1:
            raise ValueError(f"episode_length must be >= 1, got {self.episode_length}")
        self.size = (int(self.size[0]), int(self.size[1]))


class NoTermination(gym.Wrapper):
    """Drop the environment's own termination: episodes end only at the time limit (the reference removes
    it for CartPole and the humanoid, so the VLM reward, not a fall, decides what is good)."""

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["terminated_by_env"] = bool(terminated)
        if hasattr(self.env.unwrapped, "steps_beyond_terminated"):  # CartPole: it warns on steps past the end
            self.env.unwrapped.steps_beyond_terminated = None
        return obs, reward, False, truncated, info


def humanoid_xml(textured: bool, fast_render: bool) -> str:
    """Path of a humanoid model: gymnasium's ``humanoid.xml`` (same body and physics) with a light sky,
    a tiled floor and a white robot when ``textured`` (the reference's change that raised kneeling success
    from 36% to 91%), and no shadows, floor reflection or multisampling when ``fast_render``."""
    import gymnasium.envs.mujoco as gym_mujoco

    src = Path(gym_mujoco.__file__).parent / "assets" / "humanoid.xml"
    root = ET.parse(src).getroot()
    if fast_render:
        visual = root.find("visual")
        if visual is None:
            visual = ET.SubElement(root, "visual")
        quality = visual.find("quality")
        if quality is None:
            quality = ET.SubElement(visual, "quality")
        quality.set("shadowsize", "0")
        quality.set("offsamples", "0")
        for mat in root.iter("material"):
            mat.set("reflectance", "0")
    if textured:
        asset = root.find("asset")
        for tex in asset.findall("texture"):
            if tex.get("type") == "skybox":
                tex.attrib.update({"builtin": "gradient", "rgb1": "0.75 0.85 1", "rgb2": "0.95 0.97 1"})
            if tex.get("name") == "texplane":
                tex.attrib.update({"builtin": "checker", "rgb1": "0.55 0.45 0.35", "rgb2": "0.8 0.72 0.6"})
            if tex.get("name") == "texgeom":
                tex.attrib.update({"rgb1": "1 1 1", "rgb2": "1 1 1", "markrgb": "1 1 1"})
        for mat in root.iter("material"):
            if mat.get("name") == "MatPlane":
                mat.set("texrepeat", "20 20")
        default_geom = root.find("default").find("geom")
        default_geom.set("rgba", "0.95 0.95 0.95 1")
        for geom in root.iter("geom"):
            if geom.get("name") == "floor":
                geom.set("rgba", "1 1 1 1")
    tag = f"humanoid_{'tex' if textured else 'plain'}_{'fast' if fast_render else 'full'}.xml"
    out = Path(tempfile.gettempdir()) / "mmalign_vlm_rl" / tag
    out.parent.mkdir(parents=True, exist_ok=True)
    text = ET.tostring(root, encoding="unicode")
    if not out.is_file() or out.read_text() != text:
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(out)  # atomic: parallel workers never read a half-written file
    return str(out)


def make_env(spec: EnvSpec, seed: int | None = None) -> gym.Env:
    """A gymnasium env that renders ``rgb_array`` frames ``[H,W,3]`` uint8 of ``spec.size``, with no
    termination and a time limit of ``spec.episode_length``. The ground-truth reward stays the env's own."""
    h, w = spec.size
    if spec.name == "humanoid":
        cam = dict(spec.camera)
        cam["lookat"] = np.asarray(cam.get("lookat", [0, 0, 1]), dtype=np.float64)
        env = gym.make("Humanoid-v5", render_mode="rgb_array", width=w, height=h, camera_id=-1,
                       xml_file=humanoid_xml(spec.textured, spec.fast_render), default_camera_config=cam,
                       terminate_when_unhealthy=False, max_episode_steps=None)
        env = gym.wrappers.TimeLimit(env.unwrapped, spec.episode_length)
    elif spec.name == "mountaincar":
        from .classic_control import make_mountain_car

        env = make_mountain_car(spec.size, spec.episode_length, spec.textured)
    else:  # cartpole: pygame (or the textured drawing) renders 400x600 (the reference's RENDER_DIM), resized
        from .classic_control import ResizeFrames, TexturedCartPole

        env = gym.make("CartPole-v1", render_mode="rgb_array").unwrapped
        env = gym.wrappers.TimeLimit(NoTermination(env), spec.episode_length)
        env = TexturedCartPole(env, spec.size) if spec.textured else ResizeFrames(env, spec.size)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env
