"""README command A's first QC computation: ``scripts/start.sh`` starts ``incloud pipeline run qc DEMO --detach
--once`` after the hub, so the QC review dashboard has indices without delaying the login URL, and a later start
starts nothing. Here the same command runs through the installed executable over the test archive's project."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select

from incloud_kernel.archive.models import PipelineRun, Project, QCIndex, Series
from incloud_kernel.db import transaction
from test_pipeline_cli import _wait, incloud
from test_pipeline_engine import engine_site  # noqa: F401

pytestmark = pytest.mark.timeout(300)
START = Path(__file__).resolve().parents[1] / "scripts" / "start.sh"


def test_start_runs_the_demo_qc_once_in_the_background() -> None:
    text = START.read_text()
    call = re.search(r'run "\$INCLOUD" pipeline run qc DEMO --detach --once', text)
    assert call and call.start() > text.index('"$INCLOUD" hub start')  # after the hub: the URL is not delayed


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_qc_once_detached_gives_the_project_indices_and_a_second_start_starts_nothing(engine_site) -> None:  # type: ignore
    first = incloud("pipeline", "run", "qc", "STUDY1", "--detach", "--once", "--json")
    assert first.returncode == 0, first.stderr
    run_id = json.loads(first.stdout)["run"]
    again = incloud("pipeline", "run", "qc", "STUDY1", "--detach", "--once")
    assert again.returncode == 0 and again.stdout.strip().startswith(f"run #{run_id} of qc over STUDY1 exists")

    def ended() -> bool:
        with transaction(engine_site.engine) as db:
            return db.get(PipelineRun, run_id).state in ("done", "failed")

    _wait(ended, 240, "the detached QC run")
    with transaction(engine_site.engine) as db:
        assert db.scalar(select(func.count()).select_from(PipelineRun)) == 1  # --once started one run
        indexed = set(db.scalars(select(QCIndex.series_id).distinct()))
        images = set(db.scalars(select(Series.id).join(Project, Project.id == Series.project_id).where(
            Project.code == "STUDY1", Series.suffix.in_(["T1w", "bold"]))))
    assert images & indexed and images <= indexed | _without_image(engine_site, images)


def _without_image(site, ids: set[int]) -> set[int]:  # type: ignore[no-untyped-def]
    """Series of ``ids`` that have no NIfTI file (the test archive has one), which QC cannot compute."""
    from incloud_kernel.archive.models import DataFile

    with transaction(site.engine) as db:
        with_image = set(db.scalars(select(DataFile.series_id).where(DataFile.series_id.in_(ids),
                                                                     DataFile.relpath.like("%.nii%"))))
    return ids - with_image
