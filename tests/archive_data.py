"""Small, real archive contents for the integrity and export tests: valid NIfTI images with JSON sidecars,
stored through ``archive.records`` exactly as ingest stores them."""
from __future__ import annotations

import json
from dataclasses import dataclass, field


from incloud_kernel.archive import records
from incloud_kernel.archive.models import DataFile
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.archive.projects import create_project
from incloud_kernel.site import Site

from isolated_hub import nifti_bytes  # one copy, in bench/isolatedhub.py (seed_demo uses it too)

ADMIN = Actor.console("tester")


def sidecar(**fields: object) -> bytes:
    base = {"Manufacturer": "Siemens", "ManufacturersModelName": "Prisma", "MagneticFieldStrength": 3}
    return json.dumps({**base, **fields}, indent=2).encode()


@dataclass
class Stored:
    """What ``populate`` stored: project codes and every recorded relpath per project."""

    project: str
    other: str
    files: dict[str, list[str]] = field(default_factory=dict)


def populate(site: Site, project: str = "STUDY1", other: str = "OTHER1") -> Stored:
    """Two projects. ``project``: P01 (sessions 1 and 2, T1w with sidecars), P02 (session 1: T1w with
    no sidecar file, scan parameters only in the series; resting-state BOLD with sidecar), P03 (no data).
    ``other``: Q01 with one T1w, which an export of ``project`` must not contain."""
    out = Stored(project=project, other=other)
    with records.transaction(site) as db:
        create_project(db, ADMIN, project, "Study one", "A small test study")
        create_project(db, ADMIN, other, "Other study")
        p1 = records.add_participant(db, ADMIN, project, "P01", sex="F", birth_year=1980, handedness="R",
                                     education_years=16, diagnosis=["F32"], first_episode=True,
                                     medication="none", follow_up=False)
        p2 = records.add_participant(db, ADMIN, project, "P02", sex="M", birth_year=1975)
        records.add_participant(db, ADMIN, project, "P03")
        q1 = records.add_participant(db, ADMIN, other, "Q01", sex="O")
        s11 = records.add_session(db, ADMIN, p1, "1", age_at_scan=44.5)
        s12 = records.add_session(db, ADMIN, p1, "2", age_at_scan=45.5)
        s21 = records.add_session(db, ADMIN, p2, "1", age_at_scan=50)
        sq = records.add_session(db, ADMIN, q1, "1")
        t11 = records.add_series(db, ADMIN, s11, "anat", "T1w", params={"EchoTime": 0.003})
        t12 = records.add_series(db, ADMIN, s12, "anat", "T1w")
        t21 = records.add_series(db, ADMIN, s21, "anat", "T1w",
                                 params={"RepetitionTime": 2.3, "EchoTime": 0.00298, "FlipAngle": 9,
                                         "Manufacturer": "Siemens", "MagneticFieldStrength": 3,
                                         "VoxelSize": [1, 1, 1]})
        b21 = records.add_series(db, ADMIN, s21, "func", "bold", {"task": "rest"},
                                 params={"RepetitionTime": 2.0, "TaskName": "rest"})
        tq = records.add_series(db, ADMIN, sq, "anat", "T1w")
        ids = {k: v.id for k, v in dict(t11=t11, t12=t12, t21=t21, b21=b21, tq=tq).items()}
    add = records.add_files
    rows: list[DataFile] = []
    rows += add(site, ADMIN, ids["t11"], {"nii.gz": nifti_bytes(seed=1), "json": sidecar(EchoTime=0.003)})
    rows += add(site, ADMIN, ids["t12"], {"nii.gz": nifti_bytes(seed=2), "json": sidecar()})
    rows += add(site, ADMIN, ids["t21"], {"nii.gz": nifti_bytes(seed=3)})
    rows += add(site, ADMIN, ids["b21"], {"nii.gz": nifti_bytes((16, 16, 16, 4), tr=2.0, seed=4),
                                         "json": sidecar(RepetitionTime=2.0, TaskName="rest")})
    other_rows = add(site, ADMIN, ids["tq"], {"nii.gz": nifti_bytes(seed=5), "json": sidecar()})
    out.files[project] = sorted(r.relpath for r in rows)
    out.files[other] = sorted(r.relpath for r in other_rows)
    return out
