"""Synthetic studies against real tools (issue 3 "Done when"): dcm2niix, dciodvfy, pydicom, nibabel, SimpleITK."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import missing, require_tool
from incloud_kernel.synth import make_sites, make_study
from incloud_kernel.synth.cohort import StudyTruth
from incloud_kernel.synth.dwi import fsl_bvecs

DCM2NIIX = str(Path(sys.executable).with_name("dcm2niix"))
#: dciodvfy warnings we accept: the planted identities outside the MR/SC IODs, our private block, and the
#: vendor-style ImageType value 3.
KNOWN_WARNINGS = [
    r"Unrecognized tag - assuming explicit value representation OK",
    r"Attribute is not present in standard DICOM IOD",
    r"Dicom dataset contains attributes not present in standard DICOM IOD",
    r"Unrecognized defined term <(M|DIFFUSION)> for value 3 of attribute <Image Type>",
    r"Unrecognized defined term <NONE> for value 4 of attribute <Image Type>",
    r"Retired attribute",
]


def dcm2niix(src: Path, out: Path) -> Path:
    if not Path(DCM2NIIX).exists():
        missing("dcm2niix wheel binary not installed in the venv")
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([DCM2NIIX, "-z", "n", "-f", "%s_%d", "-o", str(out), str(src)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> StudyTruth:
    """A whole small study from a Siemens-like site, T1 in JPEG-LS lossless, the rest explicit VR LE."""
    site = make_sites(3, seed=0)[0]
    site.compress = "1.2.840.10008.1.2.4.80"
    return make_study(tmp_path_factory.mktemp("study"), seed=11, site=site, compress=True, labels=False)


@pytest.fixture(scope="module")
def converted(study: StudyTruth, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dcm2niix(Path(study.study_dir), tmp_path_factory.mktemp("nii"))


def _nifti(folder: Path, number: int) -> Path:
    hits = sorted(folder.glob(f"{number}_*.nii"))
    assert hits, f"dcm2niix produced nothing for series {number}"
    return hits[0]


def test_dcm2niix_converts_every_series(study: StudyTruth, converted: Path) -> None:
    assert [s.kind for s in study.series] == ["T1w", "bold", "dwi", "sc"]
    for s in study.series:
        img = nib.load(_nifti(converted, s.number))
        expected = [n for n in s.shape if n > 1]
        assert sorted(n for n in img.shape if n > 1) == sorted(expected)


def test_bold_slice_timing_in_headers_reaches_bids_sidecar(study: StudyTruth, converted: Path) -> None:
    bold = study.series_of("bold")[0]
    sidecar = json.loads(_nifti(converted, bold.number).with_suffix(".json").read_text())
    assert sidecar["RepetitionTime"] == pytest.approx(2.0)
    assert np.allclose(sidecar["SliceTiming"], study.bold["slice_timing_s"], atol=0.003)


def test_dwi_bval_bvec_equal_ground_truth(study: StudyTruth, converted: Path) -> None:
    dwi = study.series_of("dwi")[0]
    nii = _nifti(converted, dwi.number)
    bval = np.loadtxt(nii.with_suffix(".bval"))
    bvec = np.loadtxt(nii.with_suffix(".bvec")).T
    assert np.allclose(bval, study.dwi["bvals"])
    assert np.allclose(bvec, fsl_bvecs(np.array(study.dwi["bvecs_lps"]), nib.load(nii).affine), atol=1e-3)
    assert len(bval) >= 31 and (np.asarray(bval) == 1000).sum() >= 30


@pytest.mark.parametrize("site_index", [1, 2, 3], ids=["GE", "Philips", "Canon"])
def test_dwi_bvecs_other_vendors(site_index: int, tmp_path: Path) -> None:
    site = make_sites(4, seed=0)[site_index]
    truth = make_study(tmp_path / "s", seed=5, site=site, modalities=("dwi",), secondary_capture=False,
                       labels=False, compress=site.compress or False)
    nii = _nifti(dcm2niix(Path(truth.study_dir), tmp_path / "n"), truth.series[0].number)
    assert np.allclose(np.loadtxt(nii.with_suffix(".bval")), truth.dwi["bvals"])
    expected = fsl_bvecs(np.array(truth.dwi["bvecs_lps"]), nib.load(nii).affine, site.manufacturer)
    assert np.allclose(np.loadtxt(nii.with_suffix(".bvec")).T, expected, atol=1e-3)


@pytest.mark.filterwarnings("ignore:The DICOM readers are highly experimental")
def test_pydicom_and_nibabel_read_every_file(study: StudyTruth) -> None:
    for s in study.series:
        files = s.files
        assert len(files) == len(s.instance_uids)
        for f in files:
            ds = pydicom.dcmread(f)
            assert ds.pixel_array.shape[:2] == (ds.Rows, ds.Columns)
            assert str(ds.file_meta.TransferSyntaxUID) == s.transfer_syntax
            if s.transfer_syntax == "1.2.840.10008.1.2.1":
                from nibabel.nicom.dicomwrappers import wrapper_from_file

                assert wrapper_from_file(str(f)).get_data().shape[:2] == (ds.Rows, ds.Columns)
    assert {s.transfer_syntax for s in study.series} >= {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.80"}


def test_dciodvfy_reports_no_errors(study: StudyTruth) -> None:
    tool = require_tool("dciodvfy")
    unknown: set[str] = set()
    for s in study.series:
        for f in (s.files[0], s.files[-1]):
            run = subprocess.run([tool, str(f)], capture_output=True, text=True)
            for line in (run.stdout + run.stderr).splitlines():
                assert "Error" not in line, f"{s.kind}: {line}"
                if "Warning" in line and not any(re.search(p, line) for p in KNOWN_WARNINGS):
                    unknown.add(line.strip())
    assert not unknown, unknown


def test_planted_grey_matter_loss_is_in_the_pixels(tmp_path: Path) -> None:
    """Regional atrophy (both hippocampi, 20 % of their grey matter in template space) and cortical thinning
    (posterior cingulate, 1 mm) planted in an AD study are seen in its DICOM pixels: an intensity-only
    grey-matter count (one 3-class Gaussian mixture fitted on the control's brain, summed posteriors) inside
    each region drops, against the same person as a control, by the grey-matter change the truth reports at
    the same voxel centres (``percent_on_grid``, measured on the generator's noise-free output), within 2
    percentage points; each change is a real one
    (more than 5 %), and the thinning depth is the mean of the planted depth field over the region (full at its
    core, tapering off at its edge) times the head scale."""
    common = dict(seed=21, age=60, modalities=("T1w",), secondary_capture=False, labels=False, atrophy_percent=20.0,
                  small=True)
    ad = make_study(tmp_path / "ad", diagnosis="AD", thinning={"posterior_cingulate": 1.0}, **common)
    cn = make_study(tmp_path / "cn", diagnosis="CN", **common)
    assert cn.t1_effects == []
    img_ad, img_cn = _read_t1(ad), _read_t1(cn)
    truth = {e["region"]: e for e in ad.t1_effects}
    assert set(truth) == {"hippocampus_left", "hippocampus_right", "posterior_cingulate"}
    for region, e in truth.items():
        inside, brain = _region_on_grid(ad, img_ad, region)
        before, after = _gm_count(img_cn, img_ad, inside, brain)
        measured = (after / before - 1) * 100
        # the same sample points as the pixels (the anatomical "percent" is integrated at 0.5 mm: see synth docs)
        assert measured == pytest.approx(e["percent_on_grid"], abs=2.0), (region, measured, e)
        assert e["percent"] < -5.0 and e["gm_ml_after"] < e["gm_ml_before"], e
        if e["kind"] == "thinning":
            # the planted 1 mm at the region's core tapers to 0.5 mm on its ellipsoid (synth.atrophy.TAPER)
            assert 0.5 * ad.participant["scale"] < e["thinning_mm"] < 1.0 * ad.participant["scale"], e


def _read_t1(study: StudyTruth) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(study.series_of("T1w")[0].path))
    return sitk.Cast(reader.Execute(), sitk.sitkFloat32)


def _region_on_grid(study: StudyTruth, img: sitk.Image, region: str) -> tuple[np.ndarray, np.ndarray]:
    """Voxels of ``img`` (numpy z, y, x) in the region's ellipsoid as the generator places it (its MNI point
    through ``synth.atrophy.region_points_mni``: the person's anatomy), and in the brain (MNI152 brain fraction >= 0.5, dilated by one voxel): where the
    region and the brain are, not how much grey matter they hold."""
    from scipy import ndimage

    from incloud_kernel.synth import atrophy
    from incloud_kernel.synth.anatomy import load_templates
    from incloud_kernel.synth.deform import Participant, VolumeEffect, sample

    t = load_templates()
    person = Participant.from_truth(study.participant, [VolumeEffect(e["region"], e["factor"]) for e in study.effects])
    pts = person.points(img, to_mni=True)
    brain = (sample(t.gm, pts) + sample(t.wm, pts) + sample(t.csf, pts)) >= 0.5
    inside = atrophy.region_rho(region, atrophy.region_points_mni(person.points(img))) <= 1.0
    return inside, ndimage.binary_dilation(brain)


def _gm_count(control: sitk.Image, case: sitk.Image, inside: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    """Grey-matter voxels (summed posteriors) inside the region in the control and the case, from one 3-class
    Gaussian mixture of the control's brain intensities (classes ordered by mean: CSF, GM, WM), as a
    segmentation without priors would count them."""
    from sklearn.mixture import GaussianMixture

    a, b = sitk.GetArrayFromImage(control), sitk.GetArrayFromImage(case)
    gmm = GaussianMixture(3, random_state=0).fit(a[brain][::3, None])
    gm = int(np.argsort(gmm.means_.ravel())[1])
    return (float(gmm.predict_proba(a[inside][:, None])[:, gm].sum()),
            float(gmm.predict_proba(b[inside][:, None])[:, gm].sum()))


def test_bold_motion_recovered_by_registration(study: StudyTruth, converted: Path) -> None:
    bold = study.series_of("bold")[0]
    img = sitk.ReadImage(str(_nifti(converted, bold.number)), sitk.sitkFloat32)
    size = list(img.GetSize())
    extract = lambda v: sitk.Extract(img, size[:3] + [0], [0, 0, 0, v])  # noqa: E731
    fixed = extract(0)
    center = study.bold["motion_center_lps"]
    for v in range(1, size[3]):
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMeanSquares()
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-5, 300, relaxationFactor=0.6)
        reg.SetOptimizerScalesFromPhysicalShift()
        init = sitk.Euler3DTransform()
        init.SetCenter(center)
        reg.SetInitialTransform(init, inPlace=True)
        reg.Execute(fixed, extract(v))
        est = np.r_[np.rad2deg(init.GetParameters()[:3]), init.GetParameters()[3:]]
        true = np.asarray(study.bold["motion"][v])
        assert np.abs(est[:3] - true[:3]).max() < 0.2, (v, est, true)
        assert np.abs(est[3:] - true[3:]).max() < 0.2, (v, est, true)


@pytest.fixture(scope="module")
def enhanced_study(tmp_path_factory: pytest.TempPathFactory) -> StudyTruth:
    """BOLD and DWI as Enhanced MR multi-frame, from the Philips-like site (dcm2niix reads enhanced diffusion
    values for Philips; for Siemens and GE it looks for their private headers instead)."""
    site = make_sites(3, seed=0)[2]
    return make_study(tmp_path_factory.mktemp("enhanced"), seed=13, site=site, modalities=("bold", "dwi"),
                      enhanced=True, secondary_capture=False, labels=False, bold_volumes=6)


def test_enhanced_multiframe_converts_with_ground_truth_bvals(enhanced_study: StudyTruth, tmp_path: Path) -> None:
    converted = dcm2niix(Path(enhanced_study.study_dir), tmp_path)
    for s in enhanced_study.series:
        assert s.sop_class_uid == "1.2.840.10008.5.1.4.1.1.4.1" and len(s.files) == 1
        ds = pydicom.dcmread(s.files[0])
        assert ds.NumberOfFrames == s.shape[2] * s.shape[3]
        assert ds.pixel_array.shape == (ds.NumberOfFrames, ds.Rows, ds.Columns)
        img = nib.load(_nifti(converted, s.number))
        assert img.shape == tuple(s.shape)
    bold = enhanced_study.series_of("bold")[0]
    sidecar = json.loads(_nifti(converted, bold.number).with_suffix(".json").read_text())
    assert sidecar["RepetitionTime"] == pytest.approx(2.0)
    nii = _nifti(converted, enhanced_study.series_of("dwi")[0].number)
    assert np.allclose(np.loadtxt(nii.with_suffix(".bval")), enhanced_study.dwi["bvals"])
    expected = fsl_bvecs(np.array(enhanced_study.dwi["bvecs_lps"]), nib.load(nii).affine, "Philips")
    assert np.allclose(np.loadtxt(nii.with_suffix(".bvec")).T, expected, atol=1e-3)


@pytest.mark.parametrize("codec", ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80"], ids=["JPEG2000", "JPEG-LS"])
def test_dcm2niix_converts_lossless_compressed_series(codec: str, tmp_path: Path) -> None:
    """Every MR series in lossless JPEG 2000 / JPEG-LS converts, with the same voxels as the uncompressed study."""
    common = dict(seed=17, small=True, modalities=("T1w", "dwi"), secondary_capture=False, labels=False,
                  dwi_directions=6)
    packed = make_study(tmp_path / "c", compress=codec, **common)
    plain = make_study(tmp_path / "p", compress=False, **common)
    assert {s.transfer_syntax for s in packed.series} == {codec}
    a, b = dcm2niix(Path(packed.study_dir), tmp_path / "na"), dcm2niix(Path(plain.study_dir), tmp_path / "nb")
    for s in packed.series:
        assert np.array_equal(nib.load(_nifti(a, s.number)).get_fdata(), nib.load(_nifti(b, s.number)).get_fdata())
    nii = _nifti(a, packed.series_of("dwi")[0].number)
    assert np.allclose(np.loadtxt(nii.with_suffix(".bval")), packed.dwi["bvals"])


def test_enhanced_multiframe_dciodvfy_no_errors(enhanced_study: StudyTruth) -> None:
    tool = require_tool("dciodvfy")
    for s in enhanced_study.series:
        run = subprocess.run([tool, str(s.files[0])], capture_output=True, text=True)
        lines = (run.stdout + run.stderr).splitlines()
        assert not [line for line in lines if "Error" in line], s.kind
        unknown = [line for line in lines if "Warning" in line and not any(re.search(p, line) for p in KNOWN_WARNINGS)]
        assert not unknown, unknown


def test_enhanced_dwi_only_where_dcm2niix_reads_its_b_values(tmp_path: Path) -> None:
    """Enhanced DWI is written as Philips and Canon write it; asked for at a Siemens-like site it is refused
    with a one-line reason, and a cohort-wide ``enhanced=True`` keeps that site's DWI single-frame (with its
    b-values readable) while BOLD goes multi-frame."""
    from incloud_kernel.errors import ValidationError
    from incloud_kernel.synth.cohort import ENHANCED_DWI_MANUFACTURERS
    from incloud_kernel.synth.sites import make_sites

    siemens = next(s for s in make_sites(4, seed=1) if not s.manufacturer.startswith(ENHANCED_DWI_MANUFACTURERS))
    with pytest.raises(ValidationError, match="enhanced DWI"):
        make_study(tmp_path / "refused", seed=13, site=siemens, modalities=("dwi",), enhanced=["dwi"],
                   secondary_capture=False, labels=False)
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())
    truth = make_study(tmp_path / "cohort", seed=13, site=siemens, modalities=("bold", "dwi"), enhanced=True,
                       secondary_capture=False, labels=False, bold_volumes=4)
    assert truth.series_of("bold")[0].sop_class_uid == "1.2.840.10008.5.1.4.1.1.4.1"
    dwi = truth.series_of("dwi")[0]
    assert dwi.sop_class_uid == "1.2.840.10008.5.1.4.1.1.4"
    converted = dcm2niix(Path(truth.study_dir), tmp_path / "nii")
    assert np.allclose(np.loadtxt(_nifti(converted, dwi.number).with_suffix(".bval")), truth.dwi["bvals"])
