"""T1w features (issue 15 item 1): intracranial volume, regional grey-matter volume and cortical thickness per
atlas region, with the images BOLD and DWI features reuse (brain mask, bias-corrected T1w, tissue maps, the
T1w -> MNI transform) and QC pictures.

Steps (each documented in docs/features.md with its reference):

1. N4 bias correction (SimpleITK, Tustison 2010) on a copy shrunk to ``n4_shrink_mm``, inside the head mask;
2. registration to MNI152 2009c (``features.registration``: affine head -> brain, then diffeomorphic demons);
3. brain extraction: the template's brain mask pulled through the warp onto the T1w grid (> 0.5, the *core*),
   grown by ``BRAIN_MARGIN_MM``, within the head, holes filled;
4. tissue segmentation (``features.segmentation``): a Gaussian mixture of the intensities fitted on the core
   and a ``CLASS_SHELL_MM`` shell around it, evaluated on the grown mask, grey and white matter kept where they connect to the core's tissue, so the
   margin's skull and scalp neither move the classes nor count as brain (CSF/GM/WM probability maps);
5. intracranial volume = brain-mask volume; tissue volumes = probability x voxel volume, summed;
6. regional grey-matter volume in *native* space: GM probability x voxel volume summed over each atlas region,
   the atlas warped back to the T1w by nearest neighbour (no Jacobian modulation is needed: nothing is
   resampled but the labels);
7. cortical thickness (``features.thickness``: Laplace + streamlines, Jones 2000) and its regional mean over
   each region's grey-matter voxels.

``T1Features`` is the scikit-learn-style extractor, ``T1Stage`` runs it on one archived T1w series. This module
must never download anything (templates and atlases come from installed packages) nor write outside the folder
a stage is given; errors name the file, never a header value.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import numpy as np

from incloud_kernel.features.atlases import DEFAULT_ATLAS
from incloud_kernel.features.estimator import FeatureEstimator, StepClock
from incloud_kernel.pipeline.stage import Stage, StageInput

if TYPE_CHECKING:  # pragma: no cover
    import nibabel as nib
    import pandas as pd

    from incloud_kernel.features.atlases import Atlas
    from incloud_kernel.features.registration import MniWarp

#: SimpleITK threads of a fit (see ``T1Features.fit``): this platform's Slurm jobs get 2 cores.
FIT_THREADS = 2
#: Margin (mm) added around the template's brain mask pulled back to the T1w: the template mask hugs the pial
#: surface, so a registration error of a millimetre cuts cortex off and a thinning planted at the pial surface
#: disappears outside the mask; the margin lets the segmentation classify the sulcal and surface CSF. Since
#: session 8 the tissue classes are fitted on a fixed shell (``CLASS_SHELL_MM``) and tissue not connected to the
#: unmargined mask is dropped, so the regional figures no longer depend on this value (docs/features_t1.md:
#: margins 0-6 mm compared); the ICV (this mask's volume) still does.
BRAIN_MARGIN_MM = 2.0
#: Shell (mm) of the T1w around the template's brain mask whose intensities, with the brain's, the tissue
#: classes are fitted on, whatever ``BRAIN_MARGIN_MM`` is: the CSF class needs the CSF over the cortex (without
#: it the mixture splits grey matter), and every further millimetre brings darker skull into the CSF class and
#: moves the CSF/grey boundary down (by about 40 intensity units per mm on the 1 mm synthetic head, where the
#: classes are 360 apart, docs/features_t1.md). 2 mm: the margin sessions 6-7 segmented in, kept (not tuned).
CLASS_SHELL_MM = 2.0
#: Where whole-brain rows go (``atlas`` and ``region`` columns of the feature table).
GLOBAL_ATLAS, GLOBAL_REGION = "global", "brain"


class T1Features(FeatureEstimator):
    """Regional T1w features of one image (path or nibabel image, nilearn's ``check_niimg`` contract).

    Parameters (stored unchanged, scikit-learn's rule): ``atlas`` (a name from
    ``features.atlases.available_atlases`` or an ``Atlas``), ``n4_shrink_mm`` (N4's working grid),
    ``demons_iterations`` (per level, coarse to fine; empty: affine only), ``hmrf_beta`` / ``hmrf_iterations``
    (0, the default: the Gaussian mixture; above 0: dipy's HMRF with that Potts weight and ICM iterations, see
    ``features.segmentation``), ``thickness_step_mm`` (streamline step), ``cut_sulci`` (cut
    buried sulci at their medial surface before the Laplace solve, ``thickness.sulcal_cut``: closer to DiReCT's
    levels on real heads, but off by default because it hides planted thinning on the synthetic head, see
    docs/features_t1.md), ``seed`` (the registration's metric sampling).

    ``fit`` keeps, on the T1w's own grid (closest-canonical RAS): ``preproc_`` (bias corrected),
    ``brain_mask_``, ``probseg_`` ({"CSF", "GM", "WM"} images), ``thickness_`` (mm, NaN off the grey matter),
    ``labels_`` (the atlas on the T1w), ``warp_`` (``registration.MniWarp``), ``atlas_``, ``skull_stripped_``
    and ``timings_`` (seconds per step). ``transform`` returns the long-format table (atlas, region, feature,
    value, unit).
    """

    def __init__(self, atlas: "str | Atlas" = DEFAULT_ATLAS["T1w"], n4_shrink_mm: float = 4.0,
                 demons_iterations: tuple[int, ...] = (40, 20), hmrf_beta: float = 0.0, hmrf_iterations: int = 10,
                 thickness_step_mm: float = 0.25, cut_sulci: bool = False, seed: int = 0) -> None:
        self.atlas = atlas
        self.n4_shrink_mm = n4_shrink_mm
        self.demons_iterations = demons_iterations
        self.hmrf_beta = hmrf_beta
        self.hmrf_iterations = hmrf_iterations
        self.thickness_step_mm = thickness_step_mm
        self.cut_sulci = cut_sulci
        self.seed = seed

    # -- fit -----------------------------------------------------------------------------------------------------
    def fit(self, img: Any, y: Any = None) -> "T1Features":
        """Bias-correct, register, extract the brain, segment and measure thickness (see the module text).

        SimpleITK runs on ``FIT_THREADS`` threads (the affine stages on ``registration.AFFINE_THREADS``) whatever
        the machine or ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` says: N4's and the demons' sums depend on how
        the image is split between threads, so a fixed split gives the same numbers for the same input on any
        host (tests/test_features_determinism.py)."""
        from incloud_kernel.features.registration import sitk_threads

        with sitk_threads(FIT_THREADS):
            return self._fit(img)

    def _fit(self, img: Any) -> "T1Features":
        import nibabel as nib
        from scipy import ndimage

        from incloud_kernel.features import atlases
        from incloud_kernel.features.registration import mni_templates, register_t1w
        from incloud_kernel.features.segmentation import keep_brain_tissue, segment
        from incloud_kernel.features.thickness import laplace_thickness
        from incloud_kernel.qc import masks
        from incloud_kernel.qc.anatomical import n4_bias_field
        from incloud_kernel.qc.images import QCInputError, load

        clock = StepClock()
        lap = clock.lap
        self.atlas_ = self.atlas if isinstance(self.atlas, atlases.Atlas) else atlases.load_atlas(self.atlas)
        im = load(img, ndim=3)
        data = np.clip(im.data, 0, None)
        if float(data.max()) <= 0:
            raise QCInputError(f"{im.name}: the image has no signal")
        head = masks.head_mask(data)
        if head.sum() < 1000:
            raise QCInputError(f"{im.name}: fewer than 1000 head voxels found")
        self.skull_stripped_ = bool(masks.skull_stripped(data, head, im.zooms))
        lap("load")
        bias = n4_bias_field(data, im.affine, head, self.n4_shrink_mm)
        corrected = (data / np.maximum(bias, 1e-6)).astype(np.float32)
        lap("n4")
        self.warp_ = register_t1w(corrected, im.affine, skull_stripped=self.skull_stripped_,
                                  demons_iterations=tuple(self.demons_iterations), seed=self.seed)
        lap("registration")
        t = mni_templates(2)
        prob = self.warp_.to_t1w(t["mask"].get_fdata(dtype=np.float32), t["mask"].affine, data.shape, im.affine)
        core = (prob > 0.5) & head
        if core.sum() < 1000:
            raise QCInputError(f"{im.name}: the brain could not be located")
        outside = ndimage.distance_transform_edt(~core, sampling=im.zooms)
        brain = ndimage.binary_fill_holes((outside <= BRAIN_MARGIN_MM) & head)
        fit = ndimage.binary_fill_holes((outside <= CLASS_SHELL_MM) & head)
        lap("brain_extraction")
        seg = keep_brain_tissue(segment(corrected, brain, beta=self.hmrf_beta, iterations=self.hmrf_iterations,
                                        fit=fit), core)
        lap("segmentation")
        thickness = laplace_thickness(seg, im.zooms, step_mm=self.thickness_step_mm, cut_sulci=self.cut_sulci)
        lap("thickness")
        labels = self.warp_.to_t1w(np.asarray(self.atlas_.image.dataobj, dtype=np.float32),
                                   self.atlas_.image.affine, data.shape, im.affine, order=0)
        lap("atlas")

        def image(array: np.ndarray, dtype: Any) -> "nib.Nifti1Image":
            out = nib.Nifti1Image(np.asarray(array, dtype=dtype), im.affine)
            out.header.set_xyzt_units("mm")
            return out

        self.preproc_ = image(corrected, np.float32)
        self.brain_mask_ = image(brain, np.uint8)
        self.probseg_ = {k: image(v, np.float32) for k, v in seg.items()}
        self.thickness_ = image(thickness, np.float32)
        self.labels_ = image(np.rint(labels), np.int32)
        self.zooms_ = im.zooms
        self.timings_ = clock.laps
        return self

    # -- transform -----------------------------------------------------------------------------------------------
    def transform(self, img: Any = None) -> "pd.DataFrame":
        """The long-format feature table of the fitted image (``img``, if given, must be that image's grid):
        global rows (``atlas="global", region="brain"``: icv, gm/wm/csf_volume mm3, mean thickness mm) and,
        per atlas region, ``gm_volume`` (mm3) and ``thickness`` (mm, mean over the region's grey matter)."""
        import pandas as pd

        from incloud_kernel.features.rows import feature_table, regional
        from incloud_kernel.qc.images import load

        if not hasattr(self, "preproc_"):
            raise ValueError("T1Features: call fit before transform")
        if img is not None:
            im = load(img, ndim=3)
            if im.data.shape != self.preproc_.shape or not np.allclose(im.affine, self.preproc_.affine):
                raise ValueError("T1Features.transform: not the image this extractor was fitted on")
        voxel = float(np.prod(self.zooms_))
        brain = np.asarray(self.brain_mask_.dataobj) > 0
        thick = np.asarray(self.thickness_.dataobj)
        hard_gm = np.isfinite(thick)
        totals = {"icv": float(brain.sum()) * voxel}
        units = {"icv": "mm3", "thickness": "mm"}
        for tissue in ("GM", "WM", "CSF"):
            key = f"{tissue.lower()}_volume"
            totals[key] = float(np.asarray(self.probseg_[tissue].dataobj).sum()) * voxel
            units[key] = "mm3"
        totals["thickness"] = float(np.nanmean(thick)) if hard_gm.any() else float("nan")
        whole = feature_table({k: {GLOBAL_REGION: v} for k, v in totals.items()}, atlas=GLOBAL_ATLAS, unit=units)
        native = replace(self.atlas_, image=self.labels_)  # the atlas on the T1w grid: rows.regional uses it as is
        volumes = regional(self.probseg_["GM"], native, reduce="volume", mask=brain.astype(np.uint8))
        thickness = regional(self.thickness_, native, reduce="mean", mask=hard_gm.astype(np.uint8))
        regions = feature_table({"gm_volume": volumes, "thickness": thickness}, atlas=self.atlas_.name,
                                unit={"gm_volume": "mm3", "thickness": "mm"})
        return pd.concat([whole, regions], ignore_index=True)

    def fit_transform(self, img: Any, y: Any = None) -> "pd.DataFrame":
        return self.fit(img).transform()

    # -- pictures ------------------------------------------------------------------------------------------------
    def qc_pictures(self, registration: Path, segmentation: Path, parcellation: Path) -> dict[str, Path]:
        """Write the three QC PNGs (``features.t1_qc``) of the fitted image to the given paths."""
        from incloud_kernel.features import t1_qc
        from incloud_kernel.features.registration import mni_templates

        t = mni_templates(2)
        ref = t["t1"]
        t1 = np.asarray(self.preproc_.dataobj)
        in_mni = self.warp_.to_mni(t1, self.preproc_.affine, ref.shape, ref.affine)
        zooms = np.asarray(self.zooms_)
        brain = np.asarray(self.brain_mask_.dataobj) > 0
        gm = np.asarray(self.probseg_["GM"].dataobj)
        wm = np.asarray(self.probseg_["WM"].dataobj)
        return {
            "registration": t1_qc.registration_png(
                registration, in_mni, t["mask"].get_fdata(), t["gm"].get_fdata(), t["wm"].get_fdata(),
                np.asarray(ref.header.get_zooms()[:3])),
            "segmentation": t1_qc.segmentation_png(segmentation, t1, gm, wm, brain, zooms),
            "parcellation": t1_qc.parcellation_png(parcellation, t1, np.asarray(self.labels_.dataobj), gm, brain,
                                                   zooms, self.atlas_.name),
        }


class T1Stage(Stage):
    """The T1w feature stage: ``T1Features`` on one archived T1w series, its BIDS derivatives (images BOLD and
    DWI read through ``session_upstream``, the T1w -> MNI transform, QC pictures) and its ``desc-features``
    table in the long format."""

    name = "t1features"
    #: 2: one tissue model at every resolution, classes fitted on a fixed shell, scalp tissue to CSF (session 8).
    #: A new stage version is a new provenance key: it computes beside the old derivatives instead of reusing them.
    version = "2"
    datatypes = ("anat",)
    suffixes = ("T1w",)
    libraries = ("SimpleITK", "dipy", "nilearn", "scipy", "scikit-image")
    defaults: ClassVar[Mapping[str, Any]] = {
        "atlas": DEFAULT_ATLAS["T1w"], "n4_shrink_mm": 4.0, "demons_iterations": [40, 20], "hmrf_beta": 0.0,
        "hmrf_iterations": 10, "thickness_step_mm": 0.25, "cut_sulci": False, "seed": 0,
    }

    def derivative(self, inputs: StageInput, tail: str) -> str:
        """``anat/<entities>_<tail>`` (the engine prefixes ``sub-<p>_ses-<s>_``); ``desc`` is never carried over
        from the input, as ``Stage.output_name`` does."""
        from incloud_kernel.archive.records import ENTITY_ORDER

        parts = [f"{k}-{inputs.entities[k]}" for k in ENTITY_ORDER if k in inputs.entities and k != "desc"]
        return f"{inputs.datatype}/{'_'.join([*parts, tail])}"

    def compute(self, inputs: StageInput, out_dir: Path) -> dict[str, Path]:
        import nibabel as nib

        from incloud_kernel.features.rows import with_context, write_rows

        params = dict(self.parameters)
        params["demons_iterations"] = tuple(params["demons_iterations"])
        extractor = T1Features(**params).fit(inputs.image)
        out_dir = Path(out_dir)
        outputs: dict[str, Path] = {}

        def target(tail: str) -> tuple[str, Path]:
            name = self.derivative(inputs, tail)
            return name, out_dir / name.replace("/", "__")

        images = {
            "desc-preproc_T1w.nii.gz": extractor.preproc_,
            "desc-brain_mask.nii.gz": extractor.brain_mask_,
            "label-GM_probseg.nii.gz": extractor.probseg_["GM"],
            "label-WM_probseg.nii.gz": extractor.probseg_["WM"],
            "label-CSF_probseg.nii.gz": extractor.probseg_["CSF"],
            "desc-thickness_T1w.nii.gz": extractor.thickness_,
            f"atlas-{_bids_label(extractor.atlas_.name)}_dseg.nii.gz": extractor.labels_,
        }
        for tail, img in images.items():
            name, path = target(tail)
            nib.save(img, path)
            outputs[name] = path
        name, path = target("from-T1w_to-MNI152_mode-image_xfm.h5")
        outputs[name] = extractor.warp_.write(path)
        pictures = {kind: target(f"desc-{kind}_T1w.png") for kind in ("registration", "segmentation",
                                                                        "parcellation")}
        extractor.qc_pictures(*(p for _, p in pictures.values()))
        outputs.update({n: p for n, p in pictures.values()})
        frame = with_context(extractor.transform(), participant=inputs.participant, session=inputs.session,
                             series=inputs.series_id, pipeline="features", version=self.version)
        name, path = target("desc-features_T1w.tsv")
        outputs[name] = write_rows(frame, path)
        return outputs


def _bids_label(name: str) -> str:
    """An atlas name as a BIDS label (letters and digits only)."""
    return "".join(c for c in name.title() if c.isalnum())


__all__ = ["BRAIN_MARGIN_MM", "CLASS_SHELL_MM", "FIT_THREADS", "GLOBAL_ATLAS", "GLOBAL_REGION", "T1Features", "T1Stage"]
