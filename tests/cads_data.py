"""A small feature library for CADS tests: a synthetic cohort (``cads.synthetic``) published as a pipeline would.

Project CADS (owner olivia; the clinician cleo is a collaborator) holds most scans; project OTHER (owner bert)
holds ``n_other`` more, which cleo may not read. Every participant has one session and one T1w series whose
features are the cohort's columns (AAL volumes and connectivity pairs); ages, sexes and scanners come from the
cohort. Returns the cohort frame with each scan's ``series`` id and ``project``.
"""
from __future__ import annotations

import pandas as pd

from incloud_kernel.archive import records
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.archive.projects import create_project, grant
from incloud_kernel.cads import synthetic
from incloud_kernel.library import store
from incloud_kernel.site import Site

ADMIN = Actor.console("tester")


def build(site: Site, n: int = 160, n_other: int = 6, seed: int = 3, projects: tuple[str, str] = ("CADS", "OTHER"),
          clinician: str = "cleo") -> pd.DataFrame:
    mine, other = projects
    frame = synthetic.cohort(n + n_other, seed=seed)
    frame["project"] = [mine] * n + [other] * n_other
    frame["participant"] = [f"{mine[:2]}{p}" for p in frame["participant"]]  # labels are unique site-wide
    ids = []
    with records.transaction(site) as db:
        create_project(db, ADMIN, mine, "CADS cohort", owner="olivia")
        create_project(db, ADMIN, other, "Another cohort", owner="bert")
        grant(db, ADMIN, mine, clinician, "collaborator")
        for row in frame.itertuples():
            participant = records.add_participant(db, ADMIN, row.project, row.participant, sex=row.sex,
                                                  birth_year=1970, diagnosis=[row.diagnosis], follow_up=False)
            session = records.add_session(db, ADMIN, participant, "1", age_at_scan=float(row.age),
                                          scanner=row.site)
            ids.append(records.add_series(db, ADMIN, session, "anat", "T1w", qc_status="pass").id)
    frame["series"] = ids
    with records.transaction(site) as db:
        for k in range(len(frame)):
            store.publish(site, db, ADMIN, synthetic.long_rows(frame, k), series=ids[k])
    store.compact(site)
    return frame
