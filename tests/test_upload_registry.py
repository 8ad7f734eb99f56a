"""Issue 19 item 2: an upload under the registry's pseudonym when the clinic is allowed to look one up.

A clinic user whose token holds ``custom:incloud:lookup`` (the ``clinic_lookup`` role) may send identifying
fields with its ticket request; the server finds the person in the sealed participant registry (blind indexes)
and, when that person is enrolled in the project, answers with the project's pseudonym and date shift. Without the
scope the request is refused (403) before the fields are read, and a ticket without them gets a server-issued
pseudonym. The identity is never in a log, in the ticket file or in an audit event. The uploader's own job code
sends the fields only when the server says the token may look up, and the study is archived under the
registry's participant (the chain keeps the pseudonym and shifts no date again).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
from api_thread import serving
from sqlalchemy import select

from incloud_kernel.acquisition import keyring, registry
from incloud_kernel.archive import projects
from incloud_kernel.archive.models import AuditEvent, Participant, Series, Session
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.db import transaction
from upload_data import ACCESS, TOKENS, TableHubAuth, model, planted_study

from incloud_uploader import jobs, scan, send  # noqa: E402 - upload_data puts the uploader on sys.path

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
REGISTRAR = Actor(user="rita", groups=frozenset({"registrar"}))
#: The planted patient of ``upload_data.planted_study`` (ingest_data.PLANTED), registered and enrolled in CLIN.
PERSON = {"family_name": "Quenzelmark", "given_names": "Ottiline", "birth_date": "1961-07-23",
          "record_number": "QZ90817263"}
STRANGER = {"family_name": "Abernethy-Quill", "given_names": "Wendeline", "birth_date": "1957-02-11"}
VALUES = ["Quenzelmark", "Ottiline", "1961-07-23", "19610723", "QZ90817263", "Abernethy", "Wendeline", "1957-02-11"]


@pytest.fixture
def api(site, monkeypatch) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from hub.services.api.app import make_app
    from incloud_kernel import config

    monkeypatch.setenv("INCLOUD_INGEST_PROCESS_UPLOADS", "false")  # processing: test_upload_processing
    site.config = config.get_config(reload=True)
    keyring.load(site.config, create=True)
    console = Actor.console("tester")
    with transaction(site.engine) as db:
        projects.create_project(db, console, "CLIN", owner="olivia")
        projects.create_project(db, console, "OTHER", owner="olivia")
        for user in ("cleo", "clara"):
            projects.grant(db, console, "CLIN", user, "member")
    monkeypatch.setitem(TOKENS, "t-clara", model("clara", ["clinician", "clinic_lookup"]))
    auth = TableHubAuth(api_token="unused", access_scopes={ACCESS}, cache_max_age=0)
    with serving(make_app(site.config, hub_auth=auth)) as url:
        yield url


def _ticket(api: str, token: str, **body: object) -> requests.Response:
    return requests.post(api + "api/upload/tickets", json={"project": "CLIN", **body}, timeout=30,
                         headers={"Authorization": f"token {token}"})


def _leaks(text: str) -> list[str]:
    return [v for v in VALUES if v.lower() in text.lower()]


def test_the_registry_pseudonym_only_for_a_clinic_allowed_to_look_up(api, site, caplog, tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    with transaction(site.engine) as db:
        enrolled = registry.register(db, REGISTRAR, PERSON, config=site.config, project="CLIN").pseudonym
        registry.register(db, REGISTRAR, STRANGER, config=site.config, project="OTHER")  # not in CLIN
        clin = db.scalar(select(projects.Project).where(projects.Project.code == "CLIN"))
        uid = db.scalar(select(registry.RegistryEnrolment.person_id).where(
            registry.RegistryEnrolment.pseudonym == enrolled))
        shift = registry.date_offset(keyring.load(site.config), db.get(registry.RegistryPerson, uid).uid, clin.id)
    # without the look-up scope: refused before the fields are read; nothing kept
    r = _ticket(api, "t-cleo", identity={"record_number": PERSON["record_number"]})
    assert r.status_code == 403 and "custom:incloud:lookup" in r.json()["message"]
    assert not (site.config.spool / "upload").exists() or not list((site.config.spool / "upload").iterdir())
    plain = _ticket(api, "t-cleo").json()
    assert plain["pseudonym_source"] == "server" and plain["pseudonym"].startswith("UPL")
    assert requests.get(api + "api/upload/tickets", headers={"Authorization": "token t-cleo"},
                        timeout=30).json()["lookup"] is False
    # with it: the project's registry pseudonym and date shift, by record number or by name with birth date
    for probe in ({"record_number": PERSON["record_number"]},
                  {k: PERSON[k] for k in ("family_name", "given_names", "birth_date")}):
        found = _ticket(api, "t-clara", identity=probe).json()
        assert (found["pseudonym"], found["date_offset"], found["pseudonym_source"]) == (enrolled, shift, "registry")
    # someone registered but not enrolled in this project, or not registered: a server-issued pseudonym
    for probe in (STRANGER, {"record_number": "NOBODY-1"}):
        other = _ticket(api, "t-clara", identity=probe).json()
        assert other["pseudonym_source"] == "server" and other["pseudonym"].startswith("UPL")
    bad = _ticket(api, "t-clara", identity={"record_number": PERSON["record_number"], "contact": "x"})
    assert bad.status_code == 400 and not _leaks(bad.text)
    bad = _ticket(api, "t-clara", identity={"family_name": PERSON["family_name"], "birth_date": "1961-13-45"})
    assert bad.status_code == 400 and not _leaks(bad.text)

    # the uploader's own job code: it sends the fields because the server says it may; archived as that person
    src, _ = planted_study(tmp_path / "src")
    uploader = jobs.Uploader(send.Api(api, "t-clara"), tmp_path / "work")
    uploader.poll = 0.5
    uploader.start(scan.scan(src).series, "CLIN")
    uploader.confirm()
    deadline = time.monotonic() + 900
    while not uploader.jobs or uploader.jobs[0].phase not in ("archived", "quarantined", "refused", "failed"):
        assert time.monotonic() < deadline and not uploader.error, (uploader.error, uploader.view())
        time.sleep(1)
    job = uploader.jobs[0]
    assert job.phase == "archived", job.view()
    assert job.state.data["ticket"]["pseudonym"] == enrolled
    with transaction(site.engine) as db:
        series = list(db.scalars(select(Series)))
        assert len(series) == 1
        session = db.get(Session, series[0].session_id)
        assert db.get(Participant, session.participant_id).label == enrolled  # the registry's participant
        audits = [e for e in db.scalars(select(AuditEvent)) if e.action == "registry.lookup"]
        assert {e.detail["found"] for e in audits} == {True, False}
        assert not _leaks(json.dumps([e.detail for e in audits]))
    # no identity in a log line or in any ticket file
    assert not _leaks(caplog.text), _leaks(caplog.text)
    for ticket in (site.config.spool / "upload").glob("*/ticket.json"):
        assert not _leaks(ticket.read_text()), ticket


def test_a_look_up_on_a_site_without_registry_keys(api, site) -> None:
    """A site that keeps no registry gets a server pseudonym (nobody can be found); one whose registry holds
    people but whose keys are unreadable answers 503 in one line, never a server pseudonym that would file the
    patient under a second participant, and never the key file's path."""
    path = keyring.key_path(site.config)
    path.unlink()
    answer = _ticket(api, "t-clara", identity=PERSON)
    assert answer.status_code == 200, answer.text
    assert answer.json()["pseudonym_source"] == "server"

    keyring.load(site.config, create=True)
    with transaction(site.engine) as db:
        registry.register(db, REGISTRAR, PERSON, config=site.config, project="CLIN")
    path.unlink()
    answer = _ticket(api, "t-clara", identity=PERSON)
    assert answer.status_code == 503, answer.text
    assert "registry is unavailable" in answer.text and str(path) not in answer.text
    assert not _leaks(answer.text)
