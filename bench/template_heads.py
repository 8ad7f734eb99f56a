"""Heads with known anatomy for benchmarks and tests: the template head deformed by a known warp.

Lives in bench/ (not in the product package, which must never import it; not in tests/, which the benchmarks may
not import); the tests reach it through tests/heads.py.

Each head is the average head seen through a random affine (rotation, scaling, translation) and a smooth
local deformation of nose, mouth, chin, cheeks and ears plus a smooth random warp of the whole face (a
different face), with its own intensity scaling and a realistic noise level.
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
    front: np.ndarray  # true face tissue without the ears (what a front view shows)
    subject_to_template: np.ndarray  # the affine part of the true warp


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    angles = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_head(seed: int = 0, voxel_mm: float = 2.0, face_shift_mm: float = 14.0, warp_mm: float = 5.0) -> TestHead:
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
    # (template voxel centre, amplitude mm, width mm): nose, lips, chin, both cheeks, both brows, both ears;
    # each pushed in its own random direction by face_shift_mm x (0.7..1.3): a clearly different face.
    # Amplitude < 0.9 width (no folding).
    sites = [((88, 236, 88), 1.0, 15.0), ((88, 226, 58), 1.0, 15.0), ((88, 214, 28), 1.2, 18.0),
             ((52, 212, 70), 1.0, 15.0), ((124, 212, 70), 1.0, 15.0), ((8, 115, 95), 1.0, 12.0),
             ((168, 115, 95), 1.0, 12.0)]
    bumps = []
    for centre_vox, rel, sigma in sites:
        centre = (t.affine @ np.array([*centre_vox, 1.0]))[:3]
        amp = min(face_shift_mm * rel * rng.uniform(0.7, 1.3), 0.9 * sigma)
        bumps.append((centre, rng.normal(0, 1, 3), amp, sigma))
    for centre, direction, amp, sigma in bumps:
        direction = direction / np.linalg.norm(direction)
        g = np.exp(-((p - centre[:, None]) ** 2).sum(0) / (2 * sigma**2))
        disp += amp * g * direction[:, None]
    # plus a smooth random warp everywhere (control points 40 mm apart, SD warp_mm): no part of the face is
    # the template's own shape
    lo = t.affine[:3, 3]
    span = t.affine[:3, :3] @ np.array(t.data.shape, dtype=float)
    ctrl = np.array([int(np.ceil(abs(s_) / 40.0)) + 3 for s_ in span])
    coarse = rng.normal(0.0, warp_mm, (3, *ctrl))
    cidx = ((p - lo[:, None]) / span[:, None]) * (ctrl[:, None] - 3) + 1.0
    for ax in range(3):
        disp[ax] += ndimage.map_coordinates(coarse[ax], cidx, order=3, mode="nearest")
    # no deformation within 6 mm of the brain, full beyond 26 mm: the brain stays where the affine puts it
    from incloud_kernel.deface.blend import smoothstep
    from incloud_kernel.deface.brainmask import template_distances

    to_brain, grid, _, _ = template_distances(t)
    gv = np.linalg.inv(grid)
    dist = ndimage.map_coordinates(to_brain, gv[:3, :3] @ p + gv[:3, 3:4], order=1, cval=60.0)
    disp *= smoothstep((dist - 6.0) / 20.0)[None, :]
    q = p + disp
    qv = tvox[:3, :3] @ q + tvox[:3, 3:4]
    vals = ndimage.map_coordinates(t.data, qv, order=1, cval=0.0).reshape(shape)
    # the true brain is the template's core (the MNI152 brain on the average head, 2 mm slack): its older BRAIN bit
    # is 2.1 L and reaches into the orbits and cheeks
    brain = ndimage.map_coordinates(t.core.astype(np.float32), qv, order=0).reshape(shape) > 0.5
    face = ndimage.map_coordinates((t.features & t.head).astype(np.float32), qv, order=0).reshape(shape) > 0.5
    front = ndimage.map_coordinates((t.face & t.head).astype(np.float32), qv, order=0).reshape(shape) > 0.5
    # stored like a scanner's T1w: white matter (template ~430) at 1500-3000, Rician noise at a white-matter
    # SNR of 30-60 (typical 3D T1w); intensities of the template itself are too coarse for that
    wm = rng.uniform(1500.0, 3000.0)
    gain = wm / 430.0
    noise = wm / rng.uniform(30.0, 60.0)
    vals = np.sqrt((vals * gain + rng.normal(0, noise, shape)) ** 2 + rng.normal(0, noise, shape) ** 2)
    data = np.clip(np.rint(vals), 0, 32767).astype(np.int16)
    return TestHead(data=data, affine=affine, brain=brain, face=face & (data > 0), front=front & (data > 0),
                    subject_to_template=s2t)
