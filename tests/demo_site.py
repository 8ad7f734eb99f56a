"""DEMO populated the way README command A leaves it, built once per test session and shared by the modules that
import ``populated_demo`` (tests/test_demo_populate.py, tests/test_example_notebooks.py): the populate costs minutes,
so it runs once; each module gets the site's environment set for its own duration only.

Also the API's token table for the demo users (``TOKENS``, ``TableAuth``): tests serve the real API with it and act
as each demo user. Nothing here is a mock of INCloud: the site, its database, the pipelines and CADS are real.
Tests must only read the populated site (a test that changes it would change what the others see).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
from api_thread import ACCESS, TableAuth
from conftest import make_env

from hub.roles import scopes_of
from incloud_kernel import demo
from incloud_kernel.archive import records
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.archive.projects import create_project, grant
from incloud_kernel.config import load_config
from incloud_kernel.site import Site

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from qc_inputs import synth_t1  # noqa: E402

ADMIN = Actor.console("tester")
TOKENS = {f"t-{name}": {"name": name, "kind": "user", "groups": [group],
                        "scopes": sorted({ACCESS, *scopes_of([group], False)})}
          for name, group in (("researcher", "researcher"), ("reviewer", "qc_reviewer"), ("clinician", "clinician"))}
#: What dcm2niix writes from the synthetic DICOM that de-identification keeps (age, sex, the scanner).
SIDECAR = {"PatientAge": 46, "PatientSex": "M", "Manufacturer": "Siemens", "ManufacturersModelName": "Prisma_fit",
           "MagneticFieldStrength": 3, "RepetitionTime": 2.3}
#: The compute settings of the populate: one worker, no retries, a fast heartbeat (small CI machines).
COMPUTE_ENV = {"INCLOUD_COMPUTE_WORKERS": "1", "INCLOUD_COMPUTE_MAX_ATTEMPTS": "1",
               "INCLOUD_COMPUTE_HEARTBEAT_INTERVAL": "1"}


def table_auth() -> TableAuth:
    """The hub's token check, answered from ``TOKENS`` (``Authorization: token t-<user>``)."""
    return TableAuth(TOKENS)


def demo_site(site: Any, tmp_path: Path) -> int:
    """DEMO as start.sh leaves it before populating: one participant, one T1w with its sidecar, the demo users
    granted as start.sh grants them. Returns the T1w's series id."""
    t1 = synth_t1(tmp_path, seed=5, voxel_mm=3.0)
    with records.transaction(site) as db:
        create_project(db, ADMIN, "DEMO", "Demo cohort (synthetic)")
        for who, role in (("researcher", "member"), ("reviewer", "collaborator"), ("clinician", "collaborator")):
            grant(db, ADMIN, "DEMO", who, role)
        person = records.add_participant(db, ADMIN, "DEMO", "INC0001")  # ingest stores no age, sex or scanner
        series = records.add_series(db, ADMIN, records.add_session(db, ADMIN, person, "1"), "anat", "T1w").id
    records.add_files(site, ADMIN, series, {"nii.gz": t1.read_bytes(), "json": json.dumps(SIDECAR).encode()})
    return series


@dataclass
class PopulatedDemo:
    """The populated site, its environment, DEMO's T1w and what the first populate reported."""

    site: Site
    env: dict[str, str]
    series: int
    summary: demo.Summary
    lines: list[str] = field(default_factory=list)


_BUILT: list[PopulatedDemo] = []


@pytest.fixture(scope="module")
def populated_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PopulatedDemo]:
    """The session's populated demo site (SQLite), built by the first module that asks for it."""
    from incloud_kernel import config

    with pytest.MonkeyPatch.context() as mp:
        if _BUILT:
            env = _BUILT[0].env
        else:
            root = tmp_path_factory.mktemp("demo-site")
            env = {**make_env(root / "home", f"sqlite:///{root / 'incloud.sqlite'}"), **COMPUTE_ENV}
        for key, value in env.items():
            mp.setenv(key, value)
        cfg = config.get_config(reload=True)
        if not _BUILT:
            site = Site.open(load_config(env=env), migrate=True)
            site.ensure_roots()
            site.config = cfg
            series = demo_site(site, root)
            lines: list[str] = []
            summary = demo.populate(site, reference_size=120, validate=False, say=lines.append)
            _BUILT.append(PopulatedDemo(site, env, series, summary, lines))
        yield _BUILT[0]
    config.get_config(reload=True)
