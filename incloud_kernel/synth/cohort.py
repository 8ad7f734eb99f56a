"""Synthetic studies and cohorts: the library API that every other component's tests use.

``make_study`` writes one DICOM study folder (one folder per series, one file per instance) and, beside it
(never inside), ``<study>.truth.json`` with everything planted: identity strings, UIDs, effects, motion,
diffusion values; plus ``<study>.labels.nii.gz`` (region fractions on the T1 grid). ``make_cohort`` does it for
N participants over K sites, in parallel processes. Deterministic by seed. Never downloads, never reads real
patient data, never logs a planted value.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from threadpoolctl import threadpool_limits

from incloud_kernel.errors import IncloudError, ValidationError
from incloud_kernel.synth import headers, writer
from incloud_kernel.synth.atrophy import TissueEffect, planted_truth
from incloud_kernel.synth.deform import Participant, VolumeEffect
from incloud_kernel.synth.identities import make_identity
from incloud_kernel.synth.sites import Site, make_sites
from incloud_kernel.synth.structural import region_fractions_both, render_t1

MODALITIES = ("T1w", "bold", "dwi")
#: Regions whose grey matter is lost for each diagnosis (both hippocampi for AD-like, one for a focal
#: lesion-like effect): ``atrophy_percent`` of each region's grey matter turned into CSF on the T1 pixels.
DIAGNOSIS_REGIONS: dict[str, list[str]] = {
    "CN": [],
    "AD": ["hippocampus_left", "hippocampus_right"],
    "FOCAL": ["hippocampus_left"],
}
#: Ventricular enlargement per year of age above 30 (fraction of ventricle volume); the global-atrophy model.
VENTRICLE_GROWTH_PER_YEAR = 0.012


@dataclass
class SeriesTruth:
    """One written series. ``path`` is the series folder; ``kind`` is T1w, bold, dwi or sc."""

    kind: str
    number: int
    series_instance_uid: str
    description: str
    path: str
    instance_uids: list[str]
    transfer_syntax: str
    sop_class_uid: str
    shape: list[int]
    voxel_mm: list[float]

    @property
    def files(self) -> list[Path]:
        return sorted(Path(self.path).glob("*.dcm"))


@dataclass
class StudyTruth:
    """Ground truth of one study; ``planted`` lists every identifying string written into its headers/pixels.

    ``effects``: planted volume changes (region, percent) in the order applied; ``region_volumes_ml`` and
    ``region_volumes_ml_without_effects``: region volumes measured on the T1 grid (partial-volume sums) with and
    without the effects. ``t1_effects``: planted grey-matter loss on the T1 pixels (regional atrophy, cortical
    thinning), one dict per effect as ``synth.atrophy.planted_truth`` measures it on the T1 grid: region, kind,
    amount, gm_ml_before, gm_ml_after, percent, percent_on_grid, thinning_mm, region_mask. ``bold``/``dwi``: see
    ``incloud_kernel.synth.bold`` and ``.dwi`` (None if not made).
    """

    participant_id: str
    visit: int
    seed: int
    age: int
    sex: str
    diagnosis: str
    site: dict[str, Any]
    identity: dict[str, Any]
    planted: list[str]
    study_instance_uid: str
    study_dir: str
    truth_path: str
    labels_path: str | None
    labels_regions: list[str]
    participant: dict[str, Any]
    effects: list[dict[str, Any]]
    region_volumes_ml: dict[str, float]
    region_volumes_ml_without_effects: dict[str, float]
    series: list[SeriesTruth] = field(default_factory=list)
    bold: dict[str, Any] | None = None
    dwi: dict[str, Any] | None = None
    t1_effects: list[dict[str, Any]] = field(default_factory=list)

    def series_of(self, kind: str) -> list[SeriesTruth]:
        return [s for s in self.series if s.kind == kind]

    def all_uids(self) -> list[str]:
        """Every original UID planted (study, series, instances, frame of reference, referenced patient)."""
        out = [self.study_instance_uid, self.participant["frame_of_reference_uid"], self.participant["patient_uid"]]
        for s in self.series:
            out.append(s.series_instance_uid)
            out.extend(s.instance_uids)
        return out

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def load(cls, path: str | Path) -> "StudyTruth":
        data = json.loads(Path(path).read_text())
        data["series"] = [SeriesTruth(**s) for s in data["series"]]
        return cls(**data)


@dataclass
class Cohort:
    """A written cohort: its folder, sites and one ``StudyTruth`` per study."""

    out: str
    seed: int
    sites: list[Site]
    studies: list[StudyTruth]

    def to_json(self) -> str:
        return json.dumps({"out": self.out, "seed": self.seed, "sites": [s.as_dict() for s in self.sites],
                           "studies": [s.truth_path for s in self.studies]}, indent=1)


def _study_date(rng: np.random.Generator) -> _dt.date:
    return _dt.date(2024, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 900)))


def _one_blas_thread(fn: Callable[..., StudyTruth]) -> Callable[..., StudyTruth]:
    """Run ``fn`` with BLAS on one thread: a study's matrix products are small, and OpenBLAS's spinning threads
    cost several times their work when two studies share two cores (measured: 0.1 s -> 0.9 s CPU per T1 grid)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> StudyTruth:
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


#: Makers whose enhanced DWI dcm2niix reads b-values and vectors from (the standard MR Diffusion macro). For the
#: Siemens- and GE-like sites it finds none (checked with dcm2niix v1.0.20260724, the pinned wheel), so their
#: DWI is written single-frame, as GE's scanners do anyway.
ENHANCED_DWI_MANUFACTURERS = ("Philips", "Canon")


@_one_blas_thread
def make_study(out: str | Path, *, seed: int = 0, small: bool = True, modalities: Sequence[str] = MODALITIES,
               site: Site | None = None, age: int | None = None, sex: str | None = None,
               diagnosis: str | None = None, atrophy_percent: float = 15.0, participant_id: str = "synth-001",
               visit: int = 1, compress: str | None | bool = False, secondary_capture: bool = True,
               labels: bool = True, bold_volumes: int | None = None, dwi_directions: int | None = None,
               enhanced: bool | Sequence[str] = False, thinning: Mapping[str, float] | None = None) -> StudyTruth:
    """Write one study under ``out`` (``out/<participant_id>_v<visit>/``) and its truth beside it.

    ``seed`` fixes the participant (anatomy, identity, motion); ``age``/``sex``/``diagnosis`` override the random
    draws without changing anything else, so a study with ``diagnosis="CN"`` is the same person as with
    ``"AD"`` but without the regional atrophy (the diagnosis's regions lose ``atrophy_percent`` of their grey
    matter on the T1 pixels). ``thinning``: region -> mm of cortex removed from the CSF side (e.g.
    ``{"posterior_cingulate": 0.5}``; regions of ``anatomy.REGIONS``, 0-3 mm). ``small``: 2 mm T1, 4 mm BOLD
    with few volumes, 4 mm DWI
    (a whole study in a few seconds); otherwise 1 mm T1, 3.5 mm BOLD with 100 volumes, 2.5 mm DWI with 32
    directions. ``compress``: False -> explicit VR LE; True -> the site's codec for the T1 series, and for the
    DWI series too when that codec is JPEG-LS (cheap to encode); a transfer syntax UID -> that codec for every
    MR series. ``enhanced``: True -> BOLD and DWI as Enhanced MR Image Storage (one multi-frame file each; DWI
    only at Philips- and Canon-like sites, see ``ENHANCED_DWI_MANUFACTURERS``); or a list of the kinds to write
    so (``["dwi"]``: ValidationError at other sites). Raises ``ValidationError`` for unknown modality
    or diagnosis and ``IncloudError`` if the study folder already exists.
    """
    bad = [m for m in modalities if m not in MODALITIES]
    if bad:
        raise ValidationError(f"unknown modality {bad[0]!r}; choose from {', '.join(MODALITIES)}")
    out = Path(out)
    label = f"{participant_id}_v{visit}"
    study_dir = out / label
    if study_dir.exists():
        raise IncloudError(f"study folder {study_dir} already exists")
    rng = np.random.default_rng([seed, 1])
    drawn_age = int(rng.integers(25, 85))
    drawn_sex = "F" if rng.random() < 0.5 else "M"
    drawn_dx = str(rng.choice(["CN", "CN", "AD"]))
    age = drawn_age if age is None else int(age)
    sex = drawn_sex if sex is None else sex
    diagnosis = drawn_dx if diagnosis is None else diagnosis
    if diagnosis not in DIAGNOSIS_REGIONS:
        raise ValidationError(f"unknown diagnosis {diagnosis!r}; choose from {', '.join(DIAGNOSIS_REGIONS)}")
    site = site or make_sites(1, seed)[0]
    effects = [VolumeEffect("ventricles", 1.0 + VENTRICLE_GROWTH_PER_YEAR * max(0, age - 30))]
    participant = Participant.random(np.random.default_rng([seed, 2]), effects)
    lost = [TissueEffect(r, "atrophy", float(atrophy_percent)) for r in DIAGNOSIS_REGIONS[diagnosis] if atrophy_percent]
    participant.tissue_effects = lost + [TissueEffect(r, "thinning", float(mm)) for r, mm in (thinning or {}).items()]
    identity = make_identity(np.random.default_rng([seed, 3]), age, sex, _study_date(np.random.default_rng([seed, 4])))
    uids = headers.UidFactory(seed, label)
    ctx = headers.StudyContext(identity=identity, site=site, uids=uids, study_uid=uids("study"),
                               frame_of_reference_uid=uids("for"), patient_uid=uids("patient"))
    study_base = headers.study_dataset(ctx)
    img_rng = np.random.default_rng([seed, 5])
    series: list[SeriesTruth] = []
    truth = StudyTruth(
        participant_id=participant_id, visit=visit, seed=seed, age=age, sex=sex, diagnosis=diagnosis,
        site=site.as_dict(), identity=identity.as_dict(), planted=[], study_instance_uid=ctx.study_uid,
        study_dir=str(study_dir), truth_path=str(out / f"{label}.truth.json"), labels_path=None, labels_regions=[],
        participant={"seed": participant.seed, "rotation_deg": participant.rotation_deg, "translation_mm": participant.translation_mm,
                     "scale": participant.scale, "warp_mm": participant.warp_mm, "face_mm": participant.face_mm,
                     "face_bumps": [b.as_dict() for b in participant.face_bumps()],
                     "frame_of_reference_uid": ctx.frame_of_reference_uid, "patient_uid": ctx.patient_uid},
        effects=[{"region": e.region, "percent": e.percent, "factor": e.factor} for e in effects],
        region_volumes_ml={}, region_volumes_ml_without_effects={},
    )

    def codec(kind: str) -> str:
        if compress is True:
            if kind == "T1w" or (kind == "dwi" and site.compress == writer.JPEGLS_LOSSLESS):
                return site.compress or writer.EXPLICIT_LE
            return writer.EXPLICIT_LE
        if compress:
            return str(compress)
        return writer.EXPLICIT_LE

    multiframe = set(("bold", "dwi") if enhanced is True else (enhanced or ()))
    bad = multiframe - {"bold", "dwi"}
    if bad:
        raise ValidationError(f"enhanced multi-frame is for bold and dwi, not {sorted(bad)[0]!r}")
    if "dwi" in multiframe and not site.manufacturer.startswith(ENHANCED_DWI_MANUFACTURERS):
        if enhanced is not True:
            raise ValidationError(f"enhanced DWI is written as {' and '.join(ENHANCED_DWI_MANUFACTURERS)} scanners "
                                  "write it (dcm2niix reads no b-values from it for other makers); choose such a site")
        multiframe.discard("dwi")  # a cohort-wide --enhanced: this site's DWI stays single-frame
    clock = 0.0
    number = 1
    t1_ref: tuple[str, str] | None = None
    t1_img: sitk.Image | None = None
    if "T1w" in modalities or secondary_capture or labels:
        t1_img = render_t1(participant, site, 2.0 if small else 1.0, img_rng)
        truth.t1_effects = planted_truth(participant, t1_img)
    if "T1w" in modalities:
        assert t1_img is not None
        s, t1_ref = _write_t1(study_dir, study_base, ctx, t1_img, number, clock, codec("T1w"))
        series.append(s)
        number += 1
        clock += 320.0
    if "bold" in modalities:
        from incloud_kernel.synth.bold import write_bold

        s, truth.bold = write_bold(study_dir, study_base, ctx, participant, site, number, clock, codec("bold"),
                                   small=small, volumes=bold_volumes, rng=np.random.default_rng([seed, 6]),
                                   reference=t1_ref, enhanced="bold" in multiframe)
        series.append(s)
        number += 1
        clock += 420.0
    if "dwi" in modalities:
        from incloud_kernel.synth.dwi import write_dwi

        s, truth.dwi = write_dwi(study_dir, study_base, ctx, participant, site, number, clock, codec("dwi"),
                                 small=small, directions=dwi_directions, rng=np.random.default_rng([seed, 7]),
                                 reference=t1_ref, enhanced="dwi" in multiframe)
        series.append(s)
        number += 1
        clock += 360.0
    if secondary_capture and t1_img is not None:
        series.append(_write_secondary_capture(study_dir, study_base, ctx, t1_img, number, clock, t1_ref))
    truth.series = series
    if labels and t1_img is not None:
        _write_labels(out / f"{label}.labels.nii.gz", participant, t1_img, truth)
    truth.planted = identity.strings() + site.strings() + [identity.study_date, identity.birth_date]
    out.mkdir(parents=True, exist_ok=True)
    Path(truth.truth_path).write_text(truth.to_json())
    return truth


def _write_t1(study_dir: Path, study_base: Any, ctx: headers.StudyContext, img: sitk.Image, number: int,
              clock: float, ts: str) -> tuple[SeriesTruth, tuple[str, str]]:
    idn = ctx.identity
    base, suid, start = headers.start_series(ctx, study_base, number, clock, "t1_mprage_sag_p2_iso")
    spacing = img.GetSpacing()
    headers.mr_image_attributes(
        base, site=ctx.site, scanning_sequence="GR\\IR", sequence_variant="SK\\SP\\MP", acquisition_type="3D",
        tr_ms=2300, te_ms=2.98, ti_ms=900, flip_deg=9, echo_train=1, sequence_name="*tfl3d1_16ns",
        slice_thickness=spacing[2], spacing_between=spacing[2], matrix=(img.GetSize()[0], img.GetSize()[1]),
        phase_dir="ROW", bandwidth=240, image_type=["ORIGINAL", "PRIMARY", "M", "NORM"])
    base.AcquisitionNumber = 1
    base.AcquisitionDate = idn.study_date
    base.AcquisitionTime = start
    base.ContentDate = idn.study_date
    base.ContentTime = start
    base.WindowCenter = "1500"
    base.WindowWidth = "3000"
    instances = writer.volume_instances(img)
    n = len(instances)
    iuids = [ctx.uids("instance", number, k) for k in range(n)]
    folder = study_dir / f"series{number:03d}"
    writer.write_series(folder, base, instances, sop_class_uid=headers.MR_IMAGE_STORAGE, instance_uids=iuids,
                        transfer_syntax=ts, reference=(headers.MR_IMAGE_STORAGE, iuids[n // 2]))
    s = SeriesTruth(kind="T1w", number=number, series_instance_uid=suid, description=base.SeriesDescription,
                    path=str(folder), instance_uids=iuids, transfer_syntax=ts, sop_class_uid=headers.MR_IMAGE_STORAGE,
                    shape=list(img.GetSize()), voxel_mm=list(spacing))
    return s, (headers.MR_IMAGE_STORAGE, iuids[0])


def _write_secondary_capture(study_dir: Path, study_base: Any, ctx: headers.StudyContext, t1: sitk.Image,
                             number: int, clock: float, reference: tuple[str, str] | None) -> SeriesTruth:
    """A screenshot-like secondary capture: a mid T1 slice with the patient's name, ID and birth date burned in."""
    from PIL import Image, ImageDraw, ImageFont

    idn = ctx.identity
    arr = sitk.GetArrayViewFromImage(t1)
    mid = np.asarray(arr[arr.shape[0] // 2], dtype=np.float32)
    mid = np.clip(mid / max(float(np.percentile(mid, 99.5)), 1.0) * 200.0, 0, 255).astype(np.uint8)
    canvas = Image.fromarray(mid).resize((256, 256))
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    draw.text((4, 4), idn.patient_name.replace("^", " "), fill=255, font=font)
    draw.text((4, 22), f"ID {idn.patient_id}", fill=255, font=font)
    draw.text((4, 40), f"DOB {idn.birth_date}", fill=255, font=font)
    pixels = np.asarray(canvas, dtype=np.uint8)
    base, suid, start = headers.start_series(ctx, study_base, number, clock, "Screen Save")
    base.Modality = "OT"
    for tag in (0x00185100, 0x00200052, 0x00201040):  # PatientPosition, frame of reference: not in SC
        del base[tag]
    base.ConversionType = "WSD"
    base.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    base.BurnedInAnnotation = "YES"
    base.ContentDate = idn.study_date
    base.ContentTime = start
    base.PatientOrientation = ""
    base.DateOfSecondaryCapture = idn.study_date
    base.TimeOfSecondaryCapture = start
    uid = ctx.uids("instance", number, 0)
    folder = study_dir / f"series{number:03d}"
    writer.write_series(folder, base, [writer.Instance(pixels)], sop_class_uid=headers.SECONDARY_CAPTURE_STORAGE,
                        instance_uids=[uid], reference=reference)
    return SeriesTruth(kind="sc", number=number, series_instance_uid=suid, description="Screen Save",
                       path=str(folder), instance_uids=[uid], transfer_syntax=writer.EXPLICIT_LE,
                       sop_class_uid=headers.SECONDARY_CAPTURE_STORAGE, shape=[256, 256, 1], voxel_mm=[1.0, 1.0, 1.0])


def _write_labels(path: Path, participant: Participant, t1: sitk.Image, truth: StudyTruth) -> None:
    """Region fractions of every planted-effect region on the T1 grid, as a 4D NIfTI (one volume per region;
    volume effects first, then the grey-matter-loss regions, whose fractions are their MNI tissue fractions,
    placed as ``synth.atrophy`` places them)."""
    regions = [e.region for e in participant.effects]
    volume_regions = set(regions)
    regions += [e.region for e in participant.tissue_effects if e.region not in regions]
    vols = []
    voxel_ml = float(np.prod(t1.GetSpacing())) / 1000.0
    for region in regions:
        frac, plain = region_fractions_both(participant, t1, region, (True, False),
                                            anatomical=region not in volume_regions)
        truth.region_volumes_ml[region] = round(float(frac.sum()) * voxel_ml, 4)
        truth.region_volumes_ml_without_effects[region] = round(float(plain.sum()) * voxel_ml, 4)
        img = sitk.GetImageFromArray(frac)
        img.CopyInformation(t1)
        vols.append(img)
    if not vols:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.JoinSeries(vols), str(path), useCompression=True)
    truth.labels_path = str(path)
    truth.labels_regions = regions


def _study_job(args: dict[str, Any]) -> StudyTruth:
    import SimpleITK as _sitk

    _sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    return make_study(**args)


def make_cohort(out: str | Path, *, participants: int = 4, seed: int = 0, sites: int = 2, small: bool = True,
                modalities: Sequence[str] = MODALITIES, visits: int = 1, workers: int | None = None,
                compress: str | None | bool = True, progress: Callable[[int, int], None] | None = None,
                **study_kwargs: Any) -> Cohort:
    """Write ``participants`` x ``visits`` studies over ``sites`` sites under ``out``.

    Participant i is assigned site ``i % sites``; their seed derives from (seed, i), so adding participants
    never changes earlier ones. ``workers`` processes (default: CPU count, at most 2 here) build studies in
    parallel. ``compress=True`` lets each site's PACS codec apply to its T1 series. ``progress(done, total)``
    is called after each study. Returns the ``Cohort``; also writes ``out/cohort.json``.
    """
    if participants < 1 or sites < 1:
        raise ValidationError("participants and sites must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    site_list = make_sites(sites, seed)
    jobs = []
    for i in range(participants):
        pseed = int(np.random.default_rng([seed, 1000 + i]).integers(2**31))
        for v in range(1, visits + 1):
            jobs.append(dict(out=str(out), seed=pseed if v == 1 else pseed + v * 7919, small=small,
                             modalities=tuple(modalities), site=site_list[i % sites],
                             participant_id=f"synth-{i + 1:03d}", visit=v, compress=compress, **study_kwargs))
    workers = workers or min(2, os.cpu_count() or 1)
    studies: list[StudyTruth] = []
    if workers <= 1 or len(jobs) == 1:
        for job in jobs:
            studies.append(make_study(**job))
            if progress:
                progress(len(studies), len(jobs))
    else:
        from incloud_kernel.synth.deform import warm_up

        warm_up()  # forked workers inherit the loaded templates
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for st in pool.map(_study_job, jobs):
                studies.append(st)
                if progress:
                    progress(len(studies), len(jobs))
    cohort = Cohort(out=str(out), seed=seed, sites=site_list, studies=studies)
    (out / "cohort.json").write_text(cohort.to_json())
    return cohort
