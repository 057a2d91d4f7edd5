"""Humanoid poses set directly (no physics): canonical poses for the tasks, random variations of them, and
grounding (the body lowered or raised until its lowest point touches the floor). Used to check that every
task's success predicate is reachable within the joint limits, and to render captioned training frames
for the embedded CLIP of these scenes.

Joint angles are in degrees, named as in gymnasium's ``humanoid.xml``. Of note: the hips abduct only 5°
(``hip_x`` range −25…5), so a "side split" is reached as a straddle sit, thighs flexed forward (``hip_y``)
and swung apart about the vertical axis (``hip_z``).
"""

from __future__ import annotations

import mujoco
import numpy as np

CANONICAL: dict[str, dict[str, float]] = {
    "standing": {},
    "kneeling": {"right_knee": -90, "left_knee": -90},
    "arms_raised": {"right_shoulder1": 60, "right_shoulder2": 60, "left_shoulder1": -60, "left_shoulder2": -60},
    "splits": {"right_hip_y": -90, "left_hip_y": -90, "right_hip_z": -60, "left_hip_z": -60,
               "right_knee": -2, "left_knee": -2},
    "lotus": {"right_hip_y": -100, "left_hip_y": -100, "right_hip_x": -25, "left_hip_x": -25,
              "right_hip_z": -60, "left_hip_z": -60, "right_knee": -150, "left_knee": -150},
}


def lowest_point(model, data) -> float:
    """Height (m) of the lowest point of the body's geoms (spheres and capsules), the floor excluded."""
    low = np.inf
    for g in range(model.ngeom):
        if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_PLANE:
            continue
        r, c = model.geom_size[g][0], data.geom_xpos[g]
        if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_CAPSULE:
            half = abs(data.geom_xmat[g].reshape(3, 3)[2, 2]) * model.geom_size[g][1]
            low = min(low, c[2] - half - r)
        else:
            low = min(low, c[2] - r)
    return float(low)


def set_pose(env, joints: dict[str, float], yaw_deg: float = 0.0, tilt_deg: tuple[float, float] = (0.0, 0.0)) -> None:
    """Put the humanoid of ``env`` in a pose: joint angles (degrees; others at rest), the root turned by
    ``yaw_deg`` about the vertical and tilted by ``tilt_deg`` (about x, then y), at rest, standing on the floor."""
    m, d = env.unwrapped.model, env.unwrapped.data
    d.qpos[:] = m.qpos0
    d.qvel[:] = 0
    quat = np.array([1.0, 0, 0, 0])
    for axis, deg in ((np.array([0, 0, 1.0]), yaw_deg), (np.array([1.0, 0, 0]), tilt_deg[0]), (np.array([0, 1.0, 0]), tilt_deg[1])):
        q = np.zeros(4)
        mujoco.mju_axisAngle2Quat(q, axis, np.deg2rad(deg))
        mujoco.mju_mulQuat(quat, quat.copy(), q)
    d.qpos[3:7] = quat
    for name, deg in joints.items():
        d.qpos[m.joint(name).qposadr[0]] = np.deg2rad(deg)
    mujoco.mj_forward(m, d)
    d.qpos[2] -= lowest_point(m, d)
    mujoco.mj_forward(m, d)


def joint_ranges(env) -> dict[str, tuple[float, float]]:
    """``{hinge joint: (low, high)}`` in degrees."""
    m = env.unwrapped.model
    return {m.joint(j).name: tuple(np.rad2deg(m.jnt_range[j])) for j in range(m.njnt)
            if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE}


def sample_pose(env, rng: np.random.Generator, kind: str, jitter_deg: float = 12.0) -> dict:
    """A random variation of a canonical pose (``kind`` in :data:`CANONICAL`, or ``"random"``: every joint
    uniform in its range, the body possibly lying), set on ``env``. Returns the joints and root angles."""
    ranges = joint_ranges(env)
    if kind == "random":
        joints = {n: float(rng.uniform(lo, hi)) for n, (lo, hi) in ranges.items()}
        tilt = (float(rng.choice([0.0, 90.0, -90.0])) + rng.normal(0, 10), float(rng.normal(0, 10)))
    else:
        base = CANONICAL[kind]
        joints = {n: float(np.clip(base.get(n, 0.0) + rng.normal(0, jitter_deg), lo, hi)) for n, (lo, hi) in ranges.items()}
        tilt = (float(rng.normal(0, 4)), float(rng.normal(0, 4)))
    yaw = float(rng.uniform(-40, 40))
    set_pose(env, joints, yaw, tilt)
    return {"joints": joints, "yaw": yaw, "tilt": tilt}
