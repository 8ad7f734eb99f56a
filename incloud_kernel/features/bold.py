"""Resting-state BOLD features per atlas region: ALFF, fALFF, ReHo and an ROI-to-ROI connectivity matrix.

``BoldFeatures`` is a scikit-learn-style transformer (parameters in ``__init__`` stored unchanged; ``fit``
learns slice timing, realignment, coregistration and normalisation; ``transform`` resamples every volume once
into MNI space, removes nuisance signals, measures and returns long-format rows). ``BoldStage`` runs it on one
archived BOLD series after the same session's T1 stage (``session_after``), reading the T1w's brain mask,
tissue maps and T1w->MNI transform from the T1 stage's outputs; without a T1w it registers the EPI to the MNI152
template directly and records that route. The formulas are in ``bold_measures``, the geometry in
``bold_preproc``; conventions and references in docs/features.md. Never imports a heavy library at import,
never writes outside the stage's folder, never puts a header value into an error message.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from incloud_kernel.errors import ValidationError
from incloud_kernel.features.estimator import FeatureEstimator, StepClock
from incloud_kernel.pipeline.stage import Stage, StageInput

#: The space of every output map: nilearn's packaged MNI152 template (ICBM 2009a symmetric).
SPACE = "MNI152NLin2009aSym"
ROUTE_T1W = "coregistered to the session's T1w, normalised through the T1w's transform"
ROUTE_EPI = "no T1w in the session: mean EPI registered to the MNI152 template directly (affine, mutual information)"
MEASURES = ("alff", "falff", "reho")
UNITS = {"alff": "a.u.", "falff": "ratio", "reho": "W", "connectivity": "Fisher z"}
MIN_VOLUMES = 16
MIN_VOXELS = 27
#: Brain voxels whose mean EPI is below this fraction of the median over the mask are not measured.
EPI_FLOOR = 0.6


@dataclass(frozen=True)
class Anatomy:
    """The same session's T1w as the T1 stage left it: bias-corrected T1w, brain mask, GM/WM/CSF probability
    maps (all in T1w space) and the T1w->MNI transform file in ITK's resampling direction (it maps an MNI point
    to the matching T1w point, as ``SimpleITK.ReadTransform`` returns a registration with fixed = MNI)."""

    t1w: Path
    brain_mask: Path
    gm: Path
    wm: Path
    csf: Path
    to_mni: Path

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, Path]) -> "Anatomy | None":
        """Find the files among a T1 stage's outputs by their BIDS names; None when any is missing."""
        def one(*endings: str) -> Path | None:
            for name, path in sorted(outputs.items()):
                if any(name.endswith(e) for e in endings):
                    return Path(path)
            return None

        found = dict(
            t1w=one("desc-preproc_T1w.nii.gz"), brain_mask=one("desc-brain_mask.nii.gz"),
            gm=one("label-GM_probseg.nii.gz"), wm=one("label-WM_probseg.nii.gz"), csf=one("label-CSF_probseg.nii.gz"),
            to_mni=one("from-T1w_to-MNI152_mode-image_xfm.h5", "from-T1w_to-MNI152_mode-image_xfm.txt",
                       "from-T1w_to-MNI152_mode-image_xfm.tfm"))
        return None if any(v is None for v in found.values()) else cls(**found)  # type: ignore[arg-type]


def _load4d(img: Any) -> Any:
    from nilearn.image import check_niimg

    try:
        return check_niimg(img, ensure_ndim=4)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"BOLD input is not a 4-D image ({type(exc).__name__})") from None


def _head(img: Any) -> Any:
    """A loose head mask of an EPI volume (above a fifth of its 98th percentile) for the registration metric."""
    import SimpleITK as sitk

    arr = sitk.GetArrayViewFromImage(img)
    mask = sitk.Cast(img > float(0.2 * np.percentile(arr, 98)), sitk.sitkUInt8)
    return mask


def _slice_axis(sidecar: Mapping[str, Any]) -> tuple[int, bool]:
    """(array axis, reversed) of BIDS SliceEncodingDirection (default k; "k-": the first time is the last slice)."""
    code = str(sidecar.get("SliceEncodingDirection", "k"))
    if code.rstrip("-") not in ("i", "j", "k"):
        raise ValidationError("SliceEncodingDirection must be i, j or k (optionally with -)")
    return "ijk".index(code.rstrip("-")), code.endswith("-")


class BoldFeatures(FeatureEstimator):
    """ALFF, fALFF, ReHo and ROI-to-ROI connectivity of one resting BOLD run, per region of ``atlas``.

    Parameters (scikit-learn rule: stored unchanged, validated in ``fit``): ``atlas`` name
    (``features.atlases``); ``band`` low-frequency band in Hz; ``alff_method`` ``dpabi`` (mean amplitude) or
    ``cpac`` (standard deviation); ``global_signal`` adds the global mean to the nuisance regressors;
    ``slice_timing`` corrects from the sidecar's SliceTiming when present; ``voxel_mm`` the MNI output grid
    (whole mm, nilearn's template resolutions; None: the EPI's voxel size rounded, 2-4 mm); ``reference`` the realignment target volume (None: the
    middle one, as MCFLIRT); ``tr`` overrides the repetition time; ``connectivity_rows`` puts every region
    pair of the connectivity matrix in the rows too (feature ``connectivity``, region ``A__B``).
    """

    def __init__(self, atlas: str = "aal", band: tuple[float, float] = (0.01, 0.08), alff_method: str = "dpabi",
                 global_signal: bool = False, slice_timing: bool = True, voxel_mm: float | None = None,
                 reference: int | None = None, tr: float | None = None, connectivity_rows: bool = True) -> None:
        self.atlas = atlas
        self.band = band
        self.alff_method = alff_method
        self.global_signal = global_signal
        self.slice_timing = slice_timing
        self.voxel_mm = voxel_mm
        self.reference = reference
        self.tr = tr
        self.connectivity_rows = connectivity_rows

    # -- scikit-learn protocol (without importing scikit-learn at import) ----------------------------------------
    def _check(self) -> None:
        from incloud_kernel.features.bold_measures import ALFF_METHODS

        lo, hi = (float(v) for v in self.band)
        if not 0 <= lo < hi:
            raise ValidationError("band must be (low, high) Hz with 0 <= low < high")
        if self.alff_method not in ALFF_METHODS:
            raise ValidationError(f"alff_method must be one of {', '.join(ALFF_METHODS)}")
        if self.voxel_mm is not None and not 1.0 <= float(self.voxel_mm) <= 8.0:
            raise ValidationError("voxel_mm must be between 1 and 8")

    # -- fit: timing, motion, registration ----------------------------------------------------------------------
    def _series(self, img: Any, sidecar: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, float, bool]:
        """(float32 data x, y, z, t after slice timing, affine, TR s, slice timing applied). The run ``fit``
        just read is kept until ``transform`` of the same path/image object takes it (fit_transform reads and
        corrects once)."""
        import os

        key = (os.fspath(img) if isinstance(img, (str, os.PathLike)) else id(img), json.dumps(dict(sidecar),
                                                                                             default=str))
        cached = self.__dict__.pop("_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        out = self._read_series(img, sidecar)
        self._cache = (key, out)
        return out

    def _read_series(self, img: Any, sidecar: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, float, bool]:
        from incloud_kernel.features.bold_preproc import slice_time_correct

        nimg = _load4d(img)
        data = np.asarray(nimg.dataobj, dtype=np.float32)
        if data.shape[-1] < MIN_VOLUMES:
            raise ValidationError(f"BOLD run has {data.shape[-1]} volumes; the spectral measures need at least "
                                  f"{MIN_VOLUMES}")
        tr = float(self.tr or sidecar.get("RepetitionTime") or nimg.header.get_zooms()[3])
        if not 0.1 <= tr <= 10.0:
            raise ValidationError("repetition time must be 0.1-10 s (give tr= or a sidecar RepetitionTime)")
        times = sidecar.get("SliceTiming") if self.slice_timing else None
        applied = False
        if times:
            axis, reverse = _slice_axis(sidecar)
            times = list(times)[::-1] if reverse else list(times)
            if len(times) != data.shape[axis] or max(times) >= tr:
                raise ValidationError("SliceTiming does not match the slices or exceeds the repetition time")
            data = slice_time_correct(data, tr, times, axis)
            applied = True
        return data, nimg.affine, tr, applied

    def _grid(self, epi_zooms: np.ndarray) -> tuple[Any, np.ndarray]:
        """The MNI output grid (nilearn's packaged brain mask at ``voxel_mm``, cropped to the brain + 1 voxel)."""
        import nibabel as nib
        from nilearn.datasets import load_mni152_brain_mask

        res = int(round(float(self.voxel_mm or min(4.0, max(2.0, float(np.mean(epi_zooms[:3])))))))
        mask_img = load_mni152_brain_mask(resolution=res)
        m = np.asarray(mask_img.dataobj) > 0
        nz = np.argwhere(m)
        lo = np.maximum(nz.min(0) - 1, 0)
        hi = np.minimum(nz.max(0) + 2, m.shape)
        affine = mask_img.affine.copy()
        affine[:3, 3] = mask_img.affine[:3, :3] @ lo + mask_img.affine[:3, 3]
        crop = m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        return nib.Nifti1Image(crop.astype(np.uint8), affine), crop

    def fit(self, img: Any, y: Any = None, *, sidecar: Mapping[str, Any] | None = None,
            anatomy: Anatomy | None = None) -> "BoldFeatures":
        """Learn where every MNI output voxel lies in every volume of ``img`` (path or nibabel 4-D image).

        Sets ``tr_``, ``slice_timing_applied_``, ``motion_`` (``bold_preproc.Motion``), ``fd_`` (Power FD, mm),
        ``route_`` (how the EPI reached MNI), ``grid_`` (the MNI output grid), ``mask_`` (brain voxels of the
        grid), ``points_`` (their LPS positions in the reference volume), ``wm_``/``csf_`` (eroded nuisance
        masks over ``mask_``'s voxels).
        """
        import SimpleITK as sitk

        from incloud_kernel.features.bold_preproc import (
            affine_parts, realign, register, sample, to_sitk, transform_grid)

        self._check()
        sidecar = dict(sidecar or {})
        clock = StepClock()
        data, affine, tr, applied = self._series(img, sidecar)
        clock.lap("load_slice_timing")
        n = data.shape[-1]
        ref_index = n // 2 if self.reference is None else int(self.reference)
        if not 0 <= ref_index < n:
            raise ValidationError("reference volume out of range")
        self.tr_, self.slice_timing_applied_, self.affine_ = tr, applied, affine
        self.motion_ = realign(data, affine, ref_index)
        self.fd_ = self.motion_.framewise_displacement()
        clock.lap("realignment")
        ref = data[..., ref_index]
        epi = to_sitk(ref, affine)
        zooms = np.linalg.norm(affine[:3, :3], axis=0)
        self.grid_, grid_mask = self._grid(zooms)
        if anatomy is not None:
            import nibabel as nib

            t1 = nib.load(anatomy.t1w)
            brain = nib.load(anatomy.brain_mask)
            t1_brain = to_sitk(np.asarray(t1.dataobj, np.float32) * (np.asarray(brain.dataobj) > 0), t1.affine)
            epi_to_t1 = register(epi, t1_brain, "rigid")  # maps an EPI point to the T1w point
            to_mni = sitk.ReadTransform(str(anatomy.to_mni))
            p_t1_all = transform_grid(to_mni, grid_mask.shape, self.grid_.affine)
            m, o = affine_parts(epi_to_t1)
            points_all = (p_t1_all - o) @ np.linalg.inv(m).T  # T1w point -> EPI point
            p_t1 = p_t1_all[grid_mask]
            self.points_ = points_all[grid_mask]
            tissue = {k: sample(np.asarray(nib.load(getattr(anatomy, k)).dataobj, np.float32),
                                nib.load(getattr(anatomy, k)).affine, p_t1)[0] for k in ("gm", "wm", "csf")}
            in_brain = sample(np.asarray(brain.dataobj, np.float32), brain.affine, p_t1, order=0)[0] > 0
            self.route_ = ROUTE_T1W
        else:
            from nilearn.datasets import load_mni152_gm_template, load_mni152_template, load_mni152_wm_template
            from nilearn.image import resample_to_img

            template = load_mni152_template(resolution=2)
            mni = to_sitk(np.asarray(template.dataobj, np.float32), template.affine)
            # the small EPI as the fixed image (metric points are fixed-image voxels), the affine inverted
            mni_to_epi = register(epi, mni, "affine", fixed_mask=_head(epi)).GetInverse()
            points_all = transform_grid(mni_to_epi, grid_mask.shape, self.grid_.affine)
            self.points_ = points_all[grid_mask]
            on_grid = {k: np.asarray(resample_to_img(f(resolution=2), self.grid_, interpolation="continuous",
                                                     force_resample=True, copy_header=True).dataobj,
                                     np.float32)[grid_mask]
                       for k, f in (("gm", load_mni152_gm_template), ("wm", load_mni152_wm_template))}
            tissue = {**on_grid, "csf": np.clip(1.0 - on_grid["gm"] - on_grid["wm"], 0.0, 1.0)}
            in_brain = np.ones(len(self.points_), bool)
            self.route_ = ROUTE_EPI
        self.registration_ = {"epi_to_t1w_rigid": list(epi_to_t1.GetParameters())} if anatomy is not None else \
            {"mni_to_epi_affine": list(mni_to_epi.GetParameters())}
        import nibabel as nib

        flat = sample(ref, affine, points_all.reshape(-1, 3))[0].reshape(grid_mask.shape)
        self.reference_image_ = nib.Nifti1Image(flat, self.grid_.affine)  # the whole grid, for QC pictures
        self.mask_ = grid_mask.copy()
        self.mask_[grid_mask] = in_brain
        self.points_ = self.points_[in_brain]
        self.tissue_ = {k: v[in_brain] for k, v in tissue.items()}
        self._nuisance_masks()
        clock.lap("registration")
        self.timings_ = clock.laps
        return self

    def _nuisance_masks(self) -> None:
        """WM and CSF masks (eroded, on ``mask_``'s voxels) for their mean signals."""
        from incloud_kernel.features.bold_preproc import eroded_mask

        for key in ("wm", "csf"):
            vol = np.zeros(self.mask_.shape, np.float32)
            vol[self.mask_] = self.tissue_[key]
            setattr(self, f"{key}_", eroded_mask(vol)[self.mask_])

    # -- transform: resample once, clean, measure ---------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "points_"):
            raise ValidationError("BoldFeatures is not fitted: call fit(img) first")

    def timeseries(self, img: Any, sidecar: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(voxels x time in MNI, voxels covered by every volume): each volume sampled once, trilinearly, at
        its own realignment of the reference points (the whole chain composed per point)."""
        from incloud_kernel.features.bold_preproc import sample

        self._check_fitted()
        data, affine, _, _ = self._series(img, dict(sidecar or {}))
        if data.shape[-1] != len(self.motion_.params):
            raise ValidationError("transform() needs the run fit() saw (volume counts differ)")
        out = np.empty((len(self.points_), data.shape[-1]), np.float32)
        covered = np.ones(len(self.points_), bool)
        for v, (m, o) in enumerate(self.motion_.matrices()):
            out[:, v], inside = sample(data[..., v], affine, self.points_ @ m.T + o)
            covered &= inside
        return out, covered

    def transform(self, img: Any, sidecar: Mapping[str, Any] | None = None) -> Any:
        """Long-format rows (atlas, region, feature, value, unit) of ``img``; also sets ``maps_`` (nibabel
        images on ``grid_``: alff, falff, reho and their z/m forms), ``confounds_`` (pandas, one row per
        volume), ``connectivity_`` (pandas square matrix of Fisher z, region names on both axes)."""
        import pandas as pd

        from incloud_kernel.features import rows
        from incloud_kernel.features.atlases import load_atlas
        from incloud_kernel.features.bold_measures import alff_falff, bandpass, normalised, reho
        from incloud_kernel.features.bold_preproc import design, friston24, regress_out

        clock = StepClock()
        ts, covered = self.timeseries(img, sidecar)
        clock.lap("resample_once")
        # voxels of the template's mask that the EPI shows as non-brain (scalp, air, signal dropout) are left
        # out: their ALFF is motion at the brain's edge, not brain fluctuation
        mean = ts.mean(1)
        if covered.sum() < MIN_VOXELS:
            raise ValidationError(f"the EPI covers fewer than {MIN_VOXELS} brain voxels of the MNI grid")
        covered &= mean > EPI_FLOOR * np.median(mean[covered])
        ts, mask = ts[covered], self.mask_.copy()
        mask[self.mask_] = covered
        wm, csf = self.wm_[covered], self.csf_[covered]
        names = ["rot_x", "rot_y", "rot_z", "trans_x", "trans_y", "trans_z"]
        columns = names + [f"{c}_derivative1" for c in names] + [f"{c}_power2" for c in names] + \
            [f"{c}_derivative1_power2" for c in names]
        conf = pd.DataFrame(friston24(self.motion_.params), columns=columns)
        conf["white_matter"] = ts[wm].mean(0) if wm.any() else 0.0
        conf["csf"] = ts[csf].mean(0) if csf.any() else 0.0
        if self.global_signal:
            conf["global_signal"] = ts.mean(0)
        conf["framewise_displacement"] = self.fd_
        x = conf.drop(columns=["framewise_displacement"]).to_numpy(np.float64)
        x = x[:, x.std(0) > 0]
        cleaned = regress_out(ts, design(x)).astype(np.float32)
        alff, falff = alff_falff(cleaned, self.tr_, tuple(self.band), self.alff_method)
        clock.lap("nuisance_alff")
        # ReHo and connectivity: data and regressors band-passed alike, then regressed (one projection, so the
        # regression cannot put back frequencies the filter removed: Hallquist 2013, Lindquist 2019)
        filtered = regress_out(bandpass(ts, self.tr_, tuple(self.band)),
                               bandpass(x.T, self.tr_, tuple(self.band)).T if x.size else np.zeros((ts.shape[1], 0)))
        filtered = filtered.astype(np.float32)
        w = reho(filtered, mask)
        clock.lap("bandpass_reho")
        self.maps_ = {}
        values = {}
        atlas = load_atlas(self.atlas)
        for name, vals in (("alff", alff), ("falff", falff), ("reho", w)):
            z, m = normalised(vals)
            for key, arr in ((name, vals), (f"z{name}", z), (f"m{name}", m)):
                self.maps_[key] = self._image(arr, mask)
                values[key] = rows.regional(self.maps_[key], atlas, mask=mask)
        units = {k: ("z" if k.startswith("z") and k[1:] in MEASURES else
                     "ratio to mean" if k.startswith("m") and k[1:] in MEASURES else UNITS[k]) for k in values}
        frame = rows.feature_table(values, atlas=atlas.name, unit=units)
        self.mask_final_ = mask
        self.mean_image_ = self._image(ts.mean(1), mask)
        self.confounds_ = conf
        clock.lap("regional_rows")
        self.connectivity_ = self._connectivity(filtered, mask, atlas)
        clock.lap("connectivity")
        self.timings_ = {**getattr(self, "timings_", {}), **clock.laps}
        self.__dict__.pop("_cache", None)
        if self.connectivity_rows and len(self.connectivity_):
            frame = pd.concat([frame, self._pair_rows(atlas.name)], ignore_index=True)
        return frame

    def fit_transform(self, img: Any, y: Any = None, **fit_params: Any) -> Any:
        sidecar = fit_params.get("sidecar")
        return self.fit(img, y, **fit_params).transform(img, sidecar=sidecar)

    def _image(self, values: np.ndarray, mask: np.ndarray, dtype: Any = np.float32) -> Any:
        import nibabel as nib

        vol = np.zeros(mask.shape + np.shape(values)[1:], dtype)
        vol[mask] = values
        img = nib.Nifti1Image(vol, self.grid_.affine)
        img.header.set_xyzt_units("mm", "sec")
        return img

    def _connectivity(self, filtered: np.ndarray, mask: np.ndarray, atlas: Any) -> Any:
        """Pearson correlation of the regions' mean band-passed series (nilearn ``NiftiLabelsMasker`` inside
        the brain mask, ``ConnectivityMeasure(kind="correlation")``), as Fisher z; regions with no voxel in
        the mask are left out."""
        import warnings

        import nibabel as nib
        import pandas as pd
        from nilearn.connectome import ConnectivityMeasure
        from nilearn.maskers import NiftiLabelsMasker

        from incloud_kernel.features.bold_measures import fisher_z
        from incloud_kernel.features.rows import atlas_on

        labels = atlas_on(self.grid_, atlas).astype(np.int32) * mask
        present = [v for v in sorted(atlas.labels) if np.any(labels == v)]
        if len(present) < 2:
            return pd.DataFrame()
        masker = NiftiLabelsMasker(nib.Nifti1Image(labels, self.grid_.affine), standardize=False,
                                   resampling_target=None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            series = masker.fit_transform(self._image(filtered, mask))
            r = ConnectivityMeasure(kind="correlation", standardize=False).fit_transform([series])[0]
        ids = [int(v) for v in getattr(masker, "region_ids_", {}).values() if str(v) != "background" and v != 0]
        ids = ids if len(ids) == r.shape[0] else present
        region_names = [atlas.labels[i] for i in ids]
        return pd.DataFrame(fisher_z(r), index=region_names, columns=region_names)

    def _pair_rows(self, atlas_name: str) -> Any:
        """Upper triangle of ``connectivity_`` as rows: region ``A__B`` (A before B in label order)."""
        import pandas as pd

        c = self.connectivity_
        i, j = np.triu_indices(len(c), k=1)
        names = list(c.index)
        return pd.DataFrame({"atlas": atlas_name, "region": [f"{names[a]}__{names[b]}" for a, b in zip(i, j)],
                             "feature": "connectivity", "value": c.to_numpy()[i, j], "unit": UNITS["connectivity"]})

    def provenance(self) -> dict[str, Any]:
        """What was done, for the stage's JSON (numbers and fixed phrases only, no header value)."""
        self._check_fitted()
        return {
            "route": self.route_, "space": SPACE, "tr_s": self.tr_, "volumes": int(len(self.motion_.params)),
            "slice_timing_applied": bool(self.slice_timing_applied_),
            "fd_mean_mm": float(np.mean(self.fd_)), "fd_max_mm": float(np.max(self.fd_)),
            "max_translation_mm": float(np.abs(self.motion_.params[:, 3:]).max()),
            "max_rotation_deg": float(np.degrees(np.abs(self.motion_.params[:, :3]).max())),
            "voxel_mm": float(abs(self.grid_.affine[0, 0])), "brain_voxels": int(getattr(self, "mask_final_",
                                                                                        self.mask_).sum()),
            "wm_voxels": int(self.wm_.sum()), "csf_voxels": int(self.csf_.sum()),
            "parameters": {k: list(v) if isinstance(v, tuple) else v for k, v in self.get_params().items()},
            "registration": self.registration_, "seconds": dict(getattr(self, "timings_", {})),
        }


def pipeline_label(route: str) -> str:
    """The rows' ``pipeline``: ``features`` through the session's T1w, ``features+epi2mni`` without one (the two
    normalisations differ, so a feature library can keep them apart)."""
    return "features" if route == ROUTE_T1W else "features+epi2mni"


class BoldStage(Stage):
    """Runs ``BoldFeatures`` on one archived BOLD series after the session's T1 stage; writes the MNI maps,
    confounds, the connectivity matrix, the rows (``desc-features`` TSV) and a provenance JSON."""

    name = "boldfeatures"
    #: 2: registrations on one thread, bit-reproducible (session 8). A new stage version is a new provenance key: it
    #: computes beside the old derivatives instead of reusing them.
    version = "2"
    datatypes = ("func",)
    suffixes = ("bold",)
    session_after: ClassVar[tuple[tuple[str, str], ...]] = (("t1features", "T1w"),)
    libraries = ("SimpleITK", "nilearn", "scipy")
    defaults: ClassVar[Mapping[str, Any]] = {"atlas": "aal", "band": [0.01, 0.08], "alff_method": "dpabi",
                                             "global_signal": False, "slice_timing": True, "voxel_mm": None,
                                             "connectivity_rows": True}

    def _name(self, inputs: StageInput, desc: str, suffix: str, extension: str, space: bool = True) -> str:
        from incloud_kernel.archive.records import ENTITY_ORDER

        parts = [f"{k}-{inputs.entities[k]}" for k in ENTITY_ORDER if k in inputs.entities and k != "desc"]
        if space:
            parts.append(f"space-{SPACE}")
        parts.append(f"desc-{desc}")
        return f"{inputs.datatype}/{'_'.join(parts)}_{suffix}.{extension}"

    def compute(self, inputs: StageInput, out_dir: Path) -> dict[str, Path]:
        from incloud_kernel.features import rows

        out_dir = Path(out_dir)
        sidecar = json.loads(Path(inputs.files["json"]).read_text()) if "json" in inputs.files else {}
        upstream = inputs.session_upstream or {}
        anatomy = Anatomy.from_outputs(upstream.get("t1features", {}))
        params = dict(self.parameters)
        params["band"] = tuple(params["band"])
        est = BoldFeatures(**params)
        frame = est.fit(inputs.image, sidecar=sidecar, anatomy=anatomy).transform(inputs.image, sidecar=sidecar)
        outputs: dict[str, Path] = {}

        def put(name: str) -> Path:
            path = out_dir / name.replace("/", "__")
            outputs[name] = path
            return path

        for key, img in est.maps_.items():
            img.to_filename(put(self._name(inputs, key, "boldmap", "nii.gz")))
        est.confounds_.to_csv(put(self._name(inputs, "confounds", "timeseries", "tsv", space=False)), sep="\t",
                              index=False, float_format="%.6g")
        if len(est.connectivity_):
            est.connectivity_.to_csv(put(self._name(inputs, f"{est.atlas}Fisherz", "relmat", "tsv")), sep="\t",
                                     float_format="%.6g", index_label="region")
        frame = rows.with_context(frame, participant=inputs.participant, session=inputs.session,
                                  series=inputs.series_id, pipeline=pipeline_label(est.route_),
                                  version=self.version)
        rows.write_rows(frame, put(self._name(inputs, "features", "bold", "tsv", space=False)))
        put(self._name(inputs, self.name, "bold", "json", space=False)).write_text(
            json.dumps(est.provenance(), indent=2, sort_keys=True, default=float))
        self._qc_picture(est, put(self._name(inputs, "normalisation", "bold", "png")))
        return outputs

    @staticmethod
    def _qc_picture(est: BoldFeatures, path: Path) -> None:
        """The reference EPI volume normalised (the whole grid, scalp included) under the MNI template's brain
        outline: a reviewer sees at once whether the normalisation landed."""
        import matplotlib

        matplotlib.use("Agg")
        from nilearn import plotting
        from nilearn.datasets import load_mni152_brain_mask

        display = plotting.plot_anat(est.reference_image_, display_mode="ortho", cut_coords=(0, -20, 10),
                                     title=f"reference BOLD in {SPACE} ({'T1w route' if est.route_ == ROUTE_T1W else 'EPI->MNI route'})",
                                     draw_cross=False, annotate=False)
        display.add_contours(load_mni152_brain_mask(resolution=2), levels=[0.5], colors="r", linewidths=1.0)
        display.savefig(str(path), dpi=80)
        display.close()


__all__ = ["BoldFeatures", "BoldStage", "Anatomy", "SPACE", "ROUTE_T1W", "ROUTE_EPI"]
