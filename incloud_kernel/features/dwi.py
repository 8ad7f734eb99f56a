"""DWI features: FA and MD per white-matter tract, from one diffusion series, in minutes.

Steps: motion/eddy-current correction to the mean b=0 with gradient rotation (``dwi_correct``), diffusion
tensor by weighted least squares (dipy ``TensorModel(fit_method="WLS")``), FA and MD maps, registration to
MNI (``dwi_mni``: through the session's T1w when the T1 stage ran, else b=0 -> MNI template affine), and the
mean FA and MD inside each label of a white-matter atlas (JHU by default) as long-format rows.
``DwiFeatures`` is the scikit-learn-style extractor; ``DwiStage`` runs it on one archived series.
Heavy libraries are imported when used; nothing downloads; no header value goes into a name or message.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from incloud_kernel.features.estimator import FeatureEstimator, StepClock
from incloud_kernel.pipeline.stage import Stage, StageInput

#: Feature name -> unit of the long-format rows.
UNITS = {"fa": "1", "md": "mm2/s"}
#: The rows' ``pipeline`` column by normalisation route (``docs/features.md``: a stage may qualify it).
PIPELINE_BY_ROUTE = {"t1": "features", "direct": "features+direct-mni", "none": "features+no-mni"}


def load_series(img: Any, bvals: Any = None, bvecs: Any = None) -> tuple[Any, np.ndarray, np.ndarray]:
    """(4D nibabel image, bvals (n,), bvecs (n, 3) FSL convention) from a path or nibabel image
    (nilearn's ``check_niimg``); gradients given as arrays or paths, or else read from the ``.bval``/``.bvec``
    beside a path. Raises ``ValueError`` (one line) when they are missing or do not match the volumes."""
    from nilearn.image import check_niimg

    from incloud_kernel.qc.diffusion import read_gradients

    image = check_niimg(img, ensure_ndim=4)
    if bvals is None or bvecs is None:
        if not isinstance(img, (str, Path)):
            raise ValueError("a DWI given as an image needs bvals and bvecs")
        bvals, bvecs = read_gradients(img)
    bvals = np.loadtxt(bvals, ndmin=1).ravel() if isinstance(bvals, (str, Path)) else np.asarray(bvals, float).ravel()
    bvecs = np.loadtxt(bvecs, ndmin=2) if isinstance(bvecs, (str, Path)) else np.asarray(bvecs, float)
    if bvecs.shape[0] == 3 and bvecs.shape[1] != 3:
        bvecs = bvecs.T
    if len(bvals) != image.shape[3] or bvecs.shape != (len(bvals), 3):
        raise ValueError(f"{image.shape[3]} volumes but {len(bvals)} b-values and {bvecs.shape[0]} b-vectors")
    return image, bvals, bvecs


def fit_tensor(data: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, mask: np.ndarray,
               fit_method: str = "WLS", threshold: float = 50.0) -> tuple[np.ndarray, np.ndarray]:
    """(FA, MD in mm2/s) of the diffusion tensor fitted voxel by voxel inside ``mask`` (0 outside); FA clipped
    to [0, 1] and non-finite values (a failed voxel fit) set to 0."""
    from dipy.reconst.dti import TensorModel

    from incloud_kernel.features.dwi_correct import gradient_table_of

    fit = TensorModel(gradient_table_of(bvals, bvecs, threshold), fit_method=fit_method).fit(np.clip(data, 1e-3, None), mask=mask)
    fa = np.nan_to_num(np.clip(fit.fa, 0.0, 1.0)) * mask
    md = np.nan_to_num(fit.md) * mask
    return fa.astype(np.float32), md.astype(np.float32)


class DwiFeatures(FeatureEstimator):
    """Regional FA and MD of one DWI series (scikit-learn transformer contract).

    Parameters (stored unchanged): ``atlas`` (a name for ``features.atlases.load_atlas``), ``correct_motion``
    (affine motion/eddy correction with gradient rotation), ``fit_method`` (dipy TensorModel: "WLS", "OLS",
    "NLLS"...), ``b0_threshold`` (s/mm2), ``resolution`` (mm of the MNI grid the maps are resampled to),
    ``iterations`` (optimizer steps per level of each volume's registration), ``eddy_axis`` (voxel axis of
    phase encoding for the linear eddy-current fit, None = rigid motion only: see ``dwi_correct``).

    ``fit(img, bvals=None, bvecs=None, t1=None)`` learns ``fa_``/``md_`` (native nibabel images), ``mask_``,
    ``corrected_`` (``dwi_correct.Corrected``), ``to_mni_`` (SimpleITK transform MNI -> DWI), ``route_``
    ("t1", "direct", or "none" for a field of view under 12 voxels a side, which gets maps but no rows),
    ``fa_mni_``/``md_mni_``/``mask_mni_``/``b0_mni_`` (the mean b=0, for the QC picture), ``timings_`` (seconds per step); ``t1`` is the session T1 stage's
    outputs ({derivative name: path}) or None. ``transform(img)`` returns the long-format rows (atlas, region,
    feature, value, unit) for the fitted series (fitting ``img`` first when it is another one).
    """

    def __init__(self, atlas: str = "jhu-wm", correct_motion: bool = True, fit_method: str = "WLS",
                 b0_threshold: float = 50.0, resolution: int = 2, iterations: int = 60,
                 eddy_axis: int | None = None) -> None:
        self.atlas = atlas
        self.correct_motion = correct_motion
        self.fit_method = fit_method
        self.b0_threshold = b0_threshold
        self.resolution = resolution
        self.iterations = iterations
        self.eddy_axis = eddy_axis

    def fit(self, img: Any, y: Any = None, *, bvals: Any = None, bvecs: Any = None,
            t1: Mapping[str, Path] | None = None) -> "DwiFeatures":
        """Correct, fit the tensor, register to MNI. SimpleITK runs with its process default at
        ``dwi_correct.REGISTRATION_THREADS`` whatever the host says: one thread set on each registration method
        left its metric and pyramid filters on the default, and two 2-thread fits of the same series differed
        (by 2e-6 in FA/MD, different again with 1 thread); now they are bit-identical
        (tests/test_features_determinism.py)."""
        from incloud_kernel.features.dwi_correct import REGISTRATION_THREADS
        from incloud_kernel.features.registration import sitk_threads

        with sitk_threads(REGISTRATION_THREADS):
            return self._fit(img, bvals=bvals, bvecs=bvecs, t1=t1)

    def _fit(self, img: Any, *, bvals: Any, bvecs: Any, t1: Mapping[str, Path] | None) -> "DwiFeatures":
        import nibabel as nib

        from incloud_kernel.features import dwi_correct, dwi_mni
        from incloud_kernel.qc.masks import epi_mask
        from incloud_kernel.qc.motion import can_realign

        clock = StepClock()
        lap = clock.lap
        image, bvals, bvecs = load_series(img, bvals, bvecs)
        data = np.asarray(image.dataobj, dtype=np.float32)
        affine = image.affine
        b0 = dwi_correct.b0_mask(bvals, self.b0_threshold)
        if not b0.any():
            raise ValueError("the series has no b=0 volume")
        lap("load")
        if self.correct_motion:
            corrected = dwi_correct.correct(data, affine, bvals, bvecs, threshold=self.b0_threshold,
                                            iterations=self.iterations, phase_axis=self.eddy_axis)
        else:
            mean_b0 = data[..., b0].mean(axis=3)
            corrected = dwi_correct.Corrected(data, bvals, bvecs, np.repeat(np.eye(4)[None], len(bvals), 0),
                                              mean_b0, epi_mask(mean_b0))
        lap("motion_eddy")
        fa, md = fit_tensor(corrected.data, bvals, corrected.bvecs, corrected.mask, self.fit_method,
                            self.b0_threshold)
        lap("tensor")
        self.source_ = img
        self.corrected_ = corrected
        self.mask_ = nib.Nifti1Image(corrected.mask.astype(np.uint8), affine)
        self.fa_ = nib.Nifti1Image(fa, affine)
        self.md_ = nib.Nifti1Image(md, affine)
        self.to_mni_ = self.fa_mni_ = self.md_mni_ = self.mask_mni_ = self.b0_mni_ = None
        files = dwi_mni.t1_files(t1) if t1 else None
        if not can_realign(data.shape[:3]):
            # a few-voxel field of view (dipy's test sets) has no anatomy to register: maps, no regional rows
            self.route_ = "none"
        else:
            self.route_ = "t1" if files else "direct"
            self.to_mni_ = (dwi_mni.via_t1(corrected.mean_b0, affine, corrected.mask, files) if files
                            else dwi_mni.direct(corrected.mean_b0, affine, corrected.mask, self.resolution))
            lap("register_mni")
            self.fa_mni_ = dwi_mni.resample(fa, affine, self.to_mni_, self.resolution)
            self.md_mni_ = dwi_mni.resample(md, affine, self.to_mni_, self.resolution)
            self.b0_mni_ = dwi_mni.resample(corrected.mean_b0, affine, self.to_mni_, self.resolution)
            inside = dwi_mni.resample(corrected.mask.astype(np.float32), affine, self.to_mni_, self.resolution)
            self.mask_mni_ = nib.Nifti1Image((np.asarray(inside.dataobj) > 0.5).astype(np.uint8), inside.affine)
            lap("resample_mni")
        self.timings_ = clock.laps
        return self

    def transform(self, img: Any = None):
        """Long-format rows: mean FA and MD inside each atlas region (MNI space, voxels inside the DWI's
        brain mask); regions the series does not cover are left out."""
        import pandas as pd

        from incloud_kernel.features import rows
        from incloud_kernel.features.atlases import load_atlas

        if not hasattr(self, "fa_") or (img is not None and img is not self.source_):
            if img is None:
                raise ValueError("DwiFeatures: fit a series before transform")
            self.fit(img)
        if self.fa_mni_ is None:
            return rows.feature_table({}, atlas=self.atlas, feature="fa", unit=UNITS["fa"])
        atlas = load_atlas(self.atlas)
        mask = np.asarray(self.mask_mni_.dataobj) > 0
        frames = [rows.feature_table(rows.regional(image, atlas, reduce="mean", mask=mask), atlas=atlas.name,
                                     feature=feature, unit=UNITS[feature])
                  for feature, image in (("fa", self.fa_mni_), ("md", self.md_mni_))]
        return pd.concat(frames, ignore_index=True)

    def fit_transform(self, img: Any, y: Any = None, **fit_params: Any):
        return self.fit(img, y, **fit_params).transform()


class DwiStage(Stage):
    """Regional FA/MD of one DWI series: BIDS-derivative FA and MD maps (native and MNI), the brain mask, the
    rotated b-vectors, the per-volume motion, the ``desc-features`` TSV in the long format and the QC pictures
    (``dwi_qc``: ``desc-tracts``, ``desc-registration``, ``desc-motion`` PNGs). Waits for the
    session's T1 stage (its T1w->MNI transform); without a T1w in the session it registers to MNI directly and
    says so in the TSV's ``pipeline`` column (``features+direct-mni`` instead of ``features``)."""

    name = "dwifeatures"
    #: 2: the fit on one thread, bit-reproducible (session 8). A new stage version is a new provenance key: it
    #: computes beside the old derivatives instead of reusing them.
    version = "2"
    datatypes = ("dwi",)
    suffixes = ("dwi",)
    libraries = ("dipy", "SimpleITK", "nilearn", "pandas")
    defaults: ClassVar[Mapping[str, Any]] = {"atlas": "jhu-wm", "correct_motion": True, "fit_method": "WLS",
                                             "b0_threshold": 50.0, "resolution": 2, "iterations": 60,
                                             "eddy_axis": None}
    session_after: ClassVar[tuple[tuple[str, str], ...]] = (("t1features", "T1w"),)

    def _name(self, inputs: StageInput, tail: str) -> str:
        """``dwi/<entities>_<tail>`` (the engine prefixes ``sub-``/``ses-``)."""
        from incloud_kernel.archive.records import ENTITY_ORDER

        parts = [f"{k}-{inputs.entities[k]}" for k in ENTITY_ORDER if k in inputs.entities and k != "desc"]
        return f"{inputs.datatype}/{'_'.join(parts + [tail])}"

    def compute(self, inputs: StageInput, out_dir: Path) -> dict[str, Path]:
        import nibabel as nib

        from incloud_kernel.features import rows
        from incloud_kernel.features.dwi_mni import TEMPLATE_SPACE

        upstream = inputs.session_upstream
        est = DwiFeatures(**self.parameters)
        est.fit(inputs.image, bvals=inputs.files.get("bval"), bvecs=inputs.files.get("bvec"),
                t1=upstream.get("t1features"))
        out_dir = Path(out_dir)
        outputs: dict[str, Path] = {}

        def put(tail: str, write) -> None:
            name = self._name(inputs, tail)
            path = out_dir / name.replace("/", "__")
            write(path)
            outputs[name] = path

        space = f"space-{TEMPLATE_SPACE}_"
        for tail, image in (("model-tensor_param-FA_dwimap.nii.gz", est.fa_),
                            ("model-tensor_param-MD_dwimap.nii.gz", est.md_),
                            ("desc-brain_mask.nii.gz", est.mask_),
                            (f"{space}model-tensor_param-FA_dwimap.nii.gz", est.fa_mni_),
                            (f"{space}model-tensor_param-MD_dwimap.nii.gz", est.md_mni_)):
            if image is not None:  # no MNI maps for a field of view too small to register (route "none")
                put(tail, lambda p, im=image: nib.save(im, p))
        c = est.corrected_
        put("desc-preproc_dwi.bvec", lambda p: np.savetxt(p, c.bvecs.T, fmt="%.6f"))
        motion = "\n".join(["volume\tbval\tdisplacement_mm"] + [f"{i}\t{b:g}\t{d:.4f}" for i, (b, d) in
                                                                  enumerate(zip(c.bvals, c.displacement_mm))])
        put("desc-motion_timeseries.tsv", lambda p: p.write_text(motion + "\n"))
        frame = rows.with_context(est.transform(), participant=inputs.participant, session=inputs.session,
                                  series=inputs.series_id,
                                  pipeline=PIPELINE_BY_ROUTE[est.route_],
                                  version=self.version)
        put("desc-features_dwi.tsv", lambda p: rows.write_rows(frame, p))
        self._qc_pictures(est, put)
        return outputs

    @staticmethod
    def _qc_pictures(est: DwiFeatures, put) -> None:  # type: ignore[no-untyped-def]
        """The review pictures (``dwi_qc``): FA with the tract outlines and the b=0 registration in MNI (or FA
        in native space for a field of view too small to register), and the per-volume correction."""
        from incloud_kernel.features import dwi_qc, rows
        from incloud_kernel.features.atlases import load_atlas

        c = est.corrected_
        if est.fa_mni_ is not None:
            atlas = load_atlas(est.atlas)
            put("desc-tracts_dwi.png",
                lambda p: dwi_qc.tracts_png(p, est.fa_mni_, rows.atlas_on(est.fa_mni_, atlas), atlas.name))
            put("desc-registration_dwi.png", lambda p: dwi_qc.registration_png(p, est.b0_mni_, est.route_))
        else:
            put("desc-fa_dwi.png", lambda p: dwi_qc.native_png(p, est.fa_, c.mask))
        put("desc-motion_dwi.png", lambda p: dwi_qc.motion_png(p, c.bvals, c.matrices, c.displacement_mm,
                                                               est.b0_threshold))


__all__ = ["DwiFeatures", "DwiStage", "UNITS", "fit_tensor", "load_series"]
