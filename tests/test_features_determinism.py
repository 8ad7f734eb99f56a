"""The same T1w gives the same T1w features, bit for bit (issue 15: a neuroimaging platform must give the same
numbers for the same input). Two fits of one small synthetic head (3 mm, short demons, coarse N4), the second
with SimpleITK's process-wide default set to one thread, as on a host with another core count or
``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``: the affine, the fields, every map and every table value must be equal.
Before session 7's fix the affine differed by 1e-3 mm between two runs (ITK's multi-threaded Mattes metric) and
regional volumes by up to 12 mL on this image."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from incloud_kernel.features.t1 import T1Features

#: Small and fast: the determinism does not depend on the grid.
FAST = {"demons_iterations": (10, 5), "hmrf_iterations": 5, "n4_shrink_mm": 8.0}


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import SimpleITK as sitk

    from incloud_kernel.synth.deform import Participant
    from incloud_kernel.synth.sites import make_sites
    from incloud_kernel.synth.structural import render_t1

    participant = Participant.random(np.random.default_rng([0, 2]), [])
    t1 = render_t1(participant, make_sites(1, 0)[0], 3.0, np.random.default_rng(5))
    path = tmp_path_factory.mktemp("determinism") / "t1w.nii.gz"
    sitk.WriteImage(t1, str(path))
    return path


def _arrays(fx: T1Features) -> dict[str, np.ndarray]:
    import SimpleITK as sitk

    out = {k: np.asarray(getattr(fx, k).dataobj) for k in ("preproc_", "brain_mask_", "thickness_", "labels_")}
    out.update({f"probseg_{k}": np.asarray(v.dataobj) for k, v in fx.probseg_.items()})
    out["mni_to_t1w"] = fx.warp_.mni_to_t1w
    out["field"] = sitk.GetArrayFromImage(fx.warp_.field)
    out["inverse_field"] = sitk.GetArrayFromImage(fx.warp_.inverse_field)
    return out


def test_t1_features_are_bit_identical_across_runs_and_thread_settings(head: Path) -> None:
    import SimpleITK as sitk

    first = T1Features(**FAST).fit(head)
    old = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        second = T1Features(**FAST).fit(head)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(old)
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == old  # the fit restores the caller's setting
    a, b = _arrays(first), _arrays(second)
    differ = [k for k in a if not np.array_equal(a[k], b[k], equal_nan=True)]
    assert not differ, differ
    ta, tb = first.transform(), second.transform()
    assert ta[["atlas", "region", "feature"]].equals(tb[["atlas", "region", "feature"]])
    np.testing.assert_array_equal(ta.value.to_numpy(), tb.value.to_numpy())


def test_bold_features_are_bit_identical_across_runs_and_thread_settings(tmp_path: Path) -> None:
    """The BOLD route (realignment, EPI -> MNI registration, measures) on a small 4 mm run, fitted with
    SimpleITK's process default at 2 threads and then at 1: every value and the motion estimates must be equal.
    Before session 8 the registrations set one thread on the registration method only; its metric and pyramid
    filters followed the process default, and two fits differed in every regional value (connectivity by up to
    7.8 in Fisher z) and 1 and 2 threads in the motion estimates."""
    import SimpleITK as sitk
    from bold_features_data import template_bold

    from incloud_kernel.features.bold import BoldFeatures

    path, sidecar = template_bold(tmp_path, "Precuneus_L", volumes=24)
    old = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    runs = []
    try:
        for threads in (2, 1):
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
            est = BoldFeatures(atlas="aal")
            runs.append((est.fit(path, sidecar=sidecar).transform(path, sidecar=sidecar), est.motion_.params))
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(old)
    (first, motion_a), (second, motion_b) = runs
    np.testing.assert_array_equal(motion_a, motion_b)
    assert first[["atlas", "region", "feature"]].equals(second[["atlas", "region", "feature"]])
    np.testing.assert_array_equal(first.value.to_numpy(), second.value.to_numpy())


def test_dwi_features_are_bit_identical_across_thread_settings() -> None:
    """The DWI route (motion/eddy correction, tensor, MNI registration) on a small 4 mm series fitted with
    SimpleITK's process default at 2 threads and then at 1: every value must be equal (before session 8 they
    differed by about 2e-6, and two 2-thread fits differed from each other too)."""
    import sys

    import SimpleITK as sitk

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from dwi_inputs import synthetic_dwi

    from incloud_kernel.features.dwi import DwiFeatures

    img, bvals, bvecs, _ = synthetic_dwi(n_dirs=12)
    old = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    tables = []
    try:
        for threads in (2, 1):
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
            tables.append(DwiFeatures().fit_transform(img, bvals=bvals, bvecs=bvecs))
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(old)
    first, second = tables
    assert first[["atlas", "region", "feature"]].equals(second[["atlas", "region", "feature"]])
    np.testing.assert_array_equal(first.value.to_numpy(), second.value.to_numpy())
