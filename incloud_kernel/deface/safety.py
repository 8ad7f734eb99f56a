"""Decide whether a volume may be refaced, and quarantine it with a one-line reason when it may not.

Checks run before registration (input shape and header) and after it (registration score, face in view).
A scan is never passed on with its face intact by accident: every refusal raises :class:`DefaceQuarantine`.
Reasons name the check and numbers, never a header value.
"""
from __future__ import annotations

import numpy as np

from incloud_kernel.errors import IncloudError

#: Smallest matrix edge (voxels) and field of view (mm) a head volume can have.
MIN_MATRIX = 24
MIN_FOV_MM = 120.0
MAX_VOXEL_MM = 8.0
#: Minimal fraction of the field of view that is head tissue.
MIN_HEAD_FRACTION = 0.05
#: Minimal ratio of median tissue to median background intensity.
MIN_CONTRAST = 3.0


class DefaceQuarantine(IncloudError):
    """The series cannot be refaced safely; it goes to quarantine for review. ``reason`` is a short code."""

    exit_code = 5

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"quarantined ({reason}): {message}")
        self.reason = reason


def check_volume(shape: tuple[int, ...], affine: np.ndarray) -> None:
    """Refuse 4D data, 2D localizers, tiny matrices and unusable orientation headers."""
    if len(shape) > 3 and int(np.prod(shape[3:])) > 1:
        raise DefaceQuarantine("4d", f"a {len(shape)}D series with {int(np.prod(shape[3:]))} volumes is not a structural head volume")
    if len(shape) < 3:
        raise DefaceQuarantine("2d", "a 2D image has no face to replace in 3D")
    dims = np.array(shape[:3])
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-6:
        raise DefaceQuarantine("orientation", "the orientation header is missing or singular")
    vox = np.linalg.norm(a[:3, :3], axis=0)
    direction = a[:3, :3] / vox
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-2):
        raise DefaceQuarantine("orientation", "the orientation header has shear")
    if (dims <= 3).any():
        raise DefaceQuarantine("2d", f"matrix {tuple(int(d) for d in dims)} is a localizer or a few slices")
    if (dims < MIN_MATRIX).any():
        raise DefaceQuarantine("tiny", f"matrix {tuple(int(d) for d in dims)} is too small for a head volume")
    if (vox > MAX_VOXEL_MM).any() or (vox < 0.05).any():
        raise DefaceQuarantine("orientation", f"voxel size {tuple(round(float(v), 2) for v in vox)} mm is implausible")
    fov = dims * vox
    if (fov < MIN_FOV_MM).sum() >= 2:
        raise DefaceQuarantine("tiny", f"field of view {tuple(int(f) for f in fov)} mm cannot hold a head")


def check_head(head_fraction: float, contrast: float = float("inf")) -> None:
    """Refuse a volume with (almost) no head tissue: empty, noise, a small phantom.

    ``head_fraction``: fraction of the field of view in the head mask; ``contrast``: median intensity inside
    the head mask over the median outside it (air); pure noise gives about 1.5, any MR head well over 5.
    """
    if head_fraction < MIN_HEAD_FRACTION:
        raise DefaceQuarantine("no-head", f"only {head_fraction:.1%} of the field of view is tissue")
    if not contrast >= MIN_CONTRAST:
        raise DefaceQuarantine("no-head", f"tissue is only {contrast:.1f}x brighter than the background (noise?)")


def check_registration(score: float, min_score: float, face_in_view: float, face_tissue: float,
                       *, min_face_in_view: float = 0.25, min_face_tissue: float = 0.3) -> None:
    """Refuse a fit below the score threshold, or a face outside the field of view or without tissue."""
    if not np.isfinite(score) or score < min_score:
        raise DefaceQuarantine("registration", f"registration score {score:.2f} is below {min_score:.2f}")
    if face_in_view < min_face_in_view:
        raise DefaceQuarantine("no-face", f"only {face_in_view:.0%} of the face region is in the field of view")
    if face_tissue < min_face_tissue:
        raise DefaceQuarantine("no-face", f"only {face_tissue:.0%} of the expected face tissue is present (brain-only or cropped image?)")


def check_orientation(found: float, turned: float) -> None:
    """Refuse a fit that a 180-degree turned or mirrored template matches better: the header's orientation is
    wrong (or the image is not a head), so the face could be looked for in the wrong place."""
    if not np.isfinite(found) or turned >= found:
        raise DefaceQuarantine("orientation", f"the fitted template matches worse ({found:.2f}) than a turned one ({turned:.2f}): implausible orientation header")


#: Plausible head size relative to the template (stretch of the subject -> template matrix) and tilt.
MIN_SCALE, MAX_SCALE, MAX_ANISOTROPY, MAX_TILT_DEG = 0.7, 1.4, 1.35, 40.0


def check_transform(subject_to_template: np.ndarray) -> None:
    """Refuse a fit that needs an implausible head: size outside 0.7-1.4x the template, strongly anisotropic
    scaling (a limb or a phantom squeezed into a head), or more than 40 degrees of tilt from the orientation
    the header claims (a wrong orientation header)."""
    lin = np.asarray(subject_to_template, dtype=float)[:3, :3]
    u, sv, vt = np.linalg.svd(lin)
    if sv.min() < MIN_SCALE or sv.max() > MAX_SCALE or sv.max() / sv.min() > MAX_ANISOTROPY:
        raise DefaceQuarantine("registration", f"the fit needs scalings {tuple(round(float(v), 2) for v in sv)}: not a head of plausible size/shape")
    rot = u @ vt
    if np.linalg.det(rot) < 0:
        raise DefaceQuarantine("orientation", "the fit mirrors the head: implausible orientation header")
    angle = float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0))))
    if angle > MAX_TILT_DEG:
        raise DefaceQuarantine("orientation", f"the head is tilted {angle:.0f} degrees from its header orientation")
