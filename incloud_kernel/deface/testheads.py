"""Heads with known anatomy for tests and benchmarks: the template head deformed by a known warp.

Each head is the average head seen through a random affine (rotation, scaling, translation) and a smooth
local deformation of nose, mouth, chin and ears (a different face), with its own intensity scaling and noise.
The true brain and face masks come with it. It must never be used as patient data or written to an archive.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from incloud_kernel.deface.template import load_template


@dataclass
class TestHead:
    data: np.ndarray  # int16
    affine: np.ndarray  # RAS, subject grid
    brain: np.ndarray  # true brain mask (bool)
    face: np.ndarray  # true face tissue (eyes, nose, mouth, chin) and ears tissue (bool)
    subject_to_template: np.ndarray  # the affine part of the true warp


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    angles = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_head(seed: int = 0, voxel_mm: float = 2.0, face_shift_mm: float = 9.0) -> TestHead:
    """A deformed copy of the template on a ``voxel_mm`` grid (2 mm: 88x128x128, fast in tests)."""
    t = load_template()
    rng = np.random.default_rng(seed)
    shape = tuple(int(round(n / voxel_mm)) for n in t.data.shape)
    lin = _rotation(rng, 6.0) @ np.diag(rng.uniform(0.94, 1.06, 3))
    centre_t = t.affine[:3, :3] @ (np.array(t.data.shape) / 2.0) + t.affine[:3, 3]
    affine = np.eye(4)
    affine[:3, :3] = np.diag([voxel_mm] * 3)
    affine[:3, 3] = -np.array(shape) * voxel_mm / 2.0 + rng.uniform(-8, 8, 3)
    s2t = np.eye(4)
    s2t[:3, :3] = lin
    s2t[:3, 3] = centre_t  # subject grid centre ~ origin -> template centre
    # template points of every subject voxel
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    p = s2t[:3, :3] @ world + s2t[:3, 3:4]
    # local face and ear deformation (pull-back displacement, template mm), far from the brain
    tvox = np.linalg.inv(t.affine)
    disp = np.zeros_like(p)
    face_c = t.affine @ np.array([88, 225, 80, 1.0])
    bumps = [(face_c[:3], rng.normal(0, 1, 3), face_shift_mm, 14.0)]
    for side in (8, 168):
        bumps.append(((t.affine @ np.array([side, 115, 95, 1.0]))[:3], rng.normal(0, 1, 3), face_shift_mm, 12.0))
    for centre, direction, amp, sigma in bumps:
        direction = direction / np.linalg.norm(direction)
        g = np.exp(-((p - centre[:, None]) ** 2).sum(0) / (2 * sigma**2))
        disp += amp * g * direction[:, None]
    q = p + disp
    qv = tvox[:3, :3] @ q + tvox[:3, 3:4]
    vals = ndimage.map_coordinates(t.data, qv, order=1, cval=0.0).reshape(shape)
    brain = ndimage.map_coordinates(t.brain.astype(np.float32), qv, order=0).reshape(shape) > 0.5
    face = ndimage.map_coordinates((t.replace & t.head).astype(np.float32), qv, order=0).reshape(shape) > 0.5
    gain = rng.uniform(0.7, 1.4)
    noise = rng.uniform(2.0, 5.0)
    vals = np.sqrt((vals * gain + rng.normal(0, noise, shape)) ** 2 + rng.normal(0, noise, shape) ** 2)
    data = np.clip(np.rint(vals), 0, 32767).astype(np.int16)
    return TestHead(data=data, affine=affine, brain=brain, face=face & (data > 0), subject_to_template=s2t)
