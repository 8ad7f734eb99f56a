"""A small feature library with realistic attributes, published through ``library.store`` as a pipeline would.

Three projects: SCZA (schizophrenia cohort, owner olivia, member max), SCZB (bipolar/schizophrenia cohort, owner
bert) and HCC (healthy controls with two patients, owner carla, collaborator group ``lab``). Every participant has
one session and one T1w series whose long-format rows carry AAL grey-matter volumes (5 regions) and JHU FA
(3 regions), values drawn around published means. ``EXPECTED`` counts what a query should find.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from incloud_kernel.archive import records
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.archive.projects import add_group_member, create_project, grant
from incloud_kernel.library import store
from incloud_kernel.site import Site

ADMIN = Actor.console("tester")
AAL = {"Precentral_L": 16500.0, "Precentral_R": 16200.0, "Hippocampus_L": 3900.0, "Hippocampus_R": 4050.0,
       "Frontal_Sup_L": 21000.0}
JHU = {"Genu of corpus callosum": 0.72, "Body of corpus callosum": 0.68, "Fornix": 0.45}


@dataclass(frozen=True)
class Person:
    project: str
    label: str
    sex: str
    age: float
    diagnosis: tuple[str, ...]
    first_episode: bool | None
    medication: str | None
    scanner: str
    qc: str


def _cohort() -> list[Person]:
    rng = np.random.default_rng(16)
    people: list[Person] = []
    # SCZA: 6 SCZ (3 first episode), 2 healthy controls; one SCZ scan failed QC.
    for n in range(8):
        scz = n < 6
        people.append(Person("SCZA", f"A{n:02d}", "MF"[n % 2], round(float(rng.uniform(19, 38)), 1),
                             ("SCZ",) if scz else ("HC",), (n < 3) if scz else None,
                             ("olanzapine 10 mg" if n % 2 else "risperidone 4 mg") if scz else None,
                             "SiteA Prisma 3T", "fail" if n == 5 else "pass"))
    # SCZB: 3 SCZ, 3 BD (one with comorbid SCZ code), older.
    for n in range(6):
        diagnosis = ("SCZ",) if n < 3 else (("BD", "SCZ") if n == 3 else ("BD",))
        people.append(Person("SCZB", f"B{n:02d}", "FM"[n % 2], round(float(rng.uniform(25, 55)), 1), diagnosis,
                             n == 0, "lithium" if n >= 3 else "clozapine", "SiteB Skyra 3T", "pass"))
    # HCC: 4 controls and 2 SCZ (a small cell for any SCZ query limited to HCC).
    for n in range(6):
        people.append(Person("HCC", f"C{n:02d}", "MF"[n % 2], round(float(rng.uniform(20, 60)), 1),
                             ("SCZ",) if n >= 4 else ("HC",), None, None, "SiteA Prisma 3T", "pass"))
    return people


PEOPLE = _cohort()


def rows_for(person: Person, seed: int) -> pd.DataFrame:
    """The long-format rows a T1 feature stage would write for one scan (``features.rows.COLUMNS``)."""
    rng = np.random.default_rng(seed)
    atrophy = 0.93 if "SCZ" in person.diagnosis else 1.0
    out = [{"atlas": "aal", "region": region, "feature": "gmv", "value": mean * atrophy * rng.normal(1, 0.05),
            "unit": "mm3"} for region, mean in AAL.items()]
    out += [{"atlas": "jhu", "region": region, "feature": "fa", "value": mean * rng.normal(1, 0.03), "unit": ""}
            for region, mean in JHU.items()]
    frame = pd.DataFrame(out)
    return frame.assign(participant=person.label, session="1", pipeline="features", version="1")


def build(site: Site) -> dict[str, int]:
    """Create the projects, memberships, participants, series; publish every scan's rows. Returns label ->
    series id."""
    series: dict[str, int] = {}
    with records.transaction(site) as db:
        create_project(db, ADMIN, "SCZA", "Schizophrenia A", owner="olivia")
        create_project(db, ADMIN, "SCZB", "Bipolar and schizophrenia B", owner="bert")
        create_project(db, ADMIN, "HCC", "Healthy controls", owner="carla")
        grant(db, ADMIN, "SCZA", "max", "member")
        grant(db, ADMIN, "HCC", "lab", "collaborator", kind="group")
        add_group_member(db, ADMIN, "lab", "gil")
        for person in PEOPLE:
            participant = records.add_participant(
                db, ADMIN, person.project, person.label, sex=person.sex, birth_year=1990,
                diagnosis=list(person.diagnosis), first_episode=person.first_episode,
                medication=person.medication, follow_up=False)
            session = records.add_session(db, ADMIN, participant, "1", age_at_scan=person.age, scanner=person.scanner)
            row = records.add_series(db, ADMIN, session, "anat", "T1w", qc_status=person.qc)
            series[person.label] = row.id
    with records.transaction(site) as db:
        for n, person in enumerate(PEOPLE):
            store.publish(site, db, ADMIN, rows_for(person, n), series=series[person.label])
    return series


def expected(**match: object) -> list[Person]:
    """The people a query with these simple criteria should find (diagnosis: any of; age: inclusive range)."""
    out = []
    for p in PEOPLE:
        if "diagnosis" in match and match["diagnosis"] not in p.diagnosis:
            continue
        if "age" in match and not (match["age"][0] <= p.age <= match["age"][1]):  # type: ignore[index]
            continue
        if "qc" in match and p.qc != match["qc"]:
            continue
        if "project" in match and p.project != match["project"]:
            continue
        out.append(p)
    return out
