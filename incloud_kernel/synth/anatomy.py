"""Real head and brain templates that ship inside installed packages, and the named regions defined on them.

The head (with its face) is pydeface's average head ``data/mean_reg2mean.nii.gz``; tissue fractions (grey
matter, white matter, brain mask) are nilearn's packaged MNI152 2009c maps. Both are read from the installed
wheels; nothing is downloaded and nothing is copied into this repository. Coordinates follow SimpleITK/DICOM:
physical points are LPS millimetres. This module must never write files.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
import importlib.util
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from incloud_kernel.errors import IncloudError
from incloud_kernel.head_to_mni import HEAD_TO_MNI, head_to_mni_transform  # noqa: F401 (HEAD_TO_MNI: re-export)


class TemplateMissing(IncloudError):
    """A packaged template image is not installed."""


@dataclass(frozen=True)
class Region:
    """A named region in MNI space: an ellipsoid (``center`` RAS mm, ``radii`` mm) intersected with a tissue.

    ``tissue`` is ``gm``, ``wm`` or ``csf``; a voxel belongs to the region with the fraction of that tissue.
    """

    name: str
    center_ras: tuple[float, float, float]
    radii: tuple[float, float, float]
    tissue: str

    @property
    def center_lps(self) -> np.ndarray:
        x, y, z = self.center_ras
        return np.array([-x, -y, z], dtype=float)


REGIONS: dict[str, Region] = {r.name: r for r in [
    Region("hippocampus_left", (-26.0, -22.0, -13.0), (7.0, 15.0, 7.0), "gm"),
    Region("hippocampus_right", (26.0, -22.0, -13.0), (7.0, 15.0, 7.0), "gm"),
    Region("posterior_cingulate", (0.0, -52.0, 28.0), (9.0, 10.0, 10.0), "gm"),
    Region("medial_prefrontal", (0.0, 50.0, 0.0), (9.0, 10.0, 10.0), "gm"),
    Region("visual_cortex", (0.0, -88.0, 4.0), (14.0, 8.0, 12.0), "gm"),
    Region("ventricles", (0.0, -8.0, 16.0), (18.0, 30.0, 11.0), "csf"),
    Region("corpus_callosum", (0.0, -8.0, 22.0), (12.0, 30.0, 4.0), "wm"),
]}


def _package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing it (nilearn.datasets takes seconds)."""
    top, *sub = package.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise TemplateMissing(f"package {top} is not installed (it ships the synthetic heads)")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*sub, *parts)
    if not path.exists():
        raise TemplateMissing(f"template {'/'.join(parts)} missing from package {package}")
    return path


def head_path() -> Path:
    """pydeface's average head with face (1 mm, 176 x 256 x 256)."""
    return _package_file("pydeface", "data", "mean_reg2mean.nii.gz")


def mni_path(kind: str) -> Path:
    """nilearn's packaged MNI152 2009c image: ``kind`` is ``t1``, ``gm`` or ``wm`` (1 mm, brain only)."""
    return _package_file("nilearn.datasets", "data", f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz")


@dataclass
class Templates:
    """The loaded images (float32 SimpleITK images in their own LPS physical space).

    ``head``: T1 intensities of the average head, about 0-650. ``gm``, ``wm``, ``brain``: fractions 0-1 in MNI
    space; ``csf`` = brain - gm - wm clipped at 0. ``head_to_mni``: the package's one head-to-MNI transform
    (``incloud_kernel.head_to_mni``), mapping head points to MNI points (the direction SimpleITK resampling
    needs to pull MNI values into head space).
    """

    head: sitk.Image
    gm: sitk.Image
    wm: sitk.Image
    csf: sitk.Image
    head_to_mni: sitk.AffineTransform

    def region(self, name: str) -> sitk.Image:
        return _region_image(name)


def _read(path: Path, scale: float = 1.0) -> sitk.Image:
    img = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)
    return img * scale if scale != 1.0 else img


@functools.lru_cache(maxsize=1)
def load_templates() -> Templates:
    """Read the packaged templates once per process (about 1 s)."""
    head = _read(head_path())
    gm = _read(mni_path("gm"), 1.0 / 255.0)
    wm = _read(mni_path("wm"), 1.0 / 255.0)
    brain = sitk.Cast(_read(mni_path("t1")) > 0, sitk.sitkFloat32)
    csf = sitk.Clamp(brain - gm - wm, sitk.sitkFloat32, 0.0, 1.0)
    return Templates(head=head, gm=gm, wm=wm, csf=csf, head_to_mni=head_to_mni_transform())


def physical_grid(img: sitk.Image) -> np.ndarray:
    """LPS mm coordinates of every voxel of ``img`` as an array (z, y, x, 3) (numpy order of SimpleITK)."""
    size = img.GetSize()
    idx = np.stack(np.meshgrid(np.arange(size[0]), np.arange(size[1]), np.arange(size[2]), indexing="ij"), -1)
    direction = np.array(img.GetDirection()).reshape(3, 3)
    pts = np.asarray(img.GetOrigin()) + (idx * np.asarray(img.GetSpacing())) @ direction.T
    return np.transpose(pts, (2, 1, 0, 3))


@functools.lru_cache(maxsize=None)
def _region_image(name: str) -> sitk.Image:
    """Region fraction (0-1) on a crop of the MNI grid around the region's ellipsoid (0 outside the crop)."""
    if name not in REGIONS:
        raise IncloudError(f"unknown region {name!r}; known: {', '.join(REGIONS)}")
    r = REGIONS[name]
    tissue = getattr(load_templates(), r.tissue)
    corners = [tissue.TransformPhysicalPointToIndex((r.center_lps + np.array(c) * (np.asarray(r.radii) + 3)).tolist())
               for c in np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T]
    lo = np.clip(np.min(corners, 0), 0, None)
    hi = np.minimum(np.max(corners, 0) + 1, np.asarray(tissue.GetSize()))
    crop = sitk.RegionOfInterest(tissue, (hi - lo).tolist(), lo.tolist())
    pts = physical_grid(crop)
    rho = np.sqrt((((pts - r.center_lps) / np.asarray(r.radii)) ** 2).sum(-1))
    out = sitk.GetImageFromArray((sitk.GetArrayFromImage(crop) * (rho <= 1.0)).astype(np.float32))
    out.CopyInformation(crop)
    return out
