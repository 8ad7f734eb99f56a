"""Issue 19 item 4: the clinic upload route (STOW-RS) of the INCloud API.

The real API application serves on a local port (``api_thread.serving``); only the hub's token check is a table
(``upload_data.TOKENS``, scopes from ``hub.roles``). Instances are prepared the way the clinic uploader does it
(``incloud_uploader.prepare``: ``incloud_kernel``'s de-identification with the ticket's pseudonym, refacing and
the refacing marker), from a small synthetic head study with identities planted everywhere.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import pydicom
import pytest
import requests
from api_thread import serving
from sqlalchemy import select

from incloud_kernel.archive import projects
from incloud_kernel.archive.models import Series
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.db import transaction
from leakscan import identity_needles, scan_tree, summary
from upload_data import ACCESS, PLANTED_VALUES, TableHubAuth, planted_study

from incloud_uploader import prepare, scan, send  # noqa: E402 - upload_data puts the uploader on sys.path


@pytest.fixture
def api(site, monkeypatch) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from hub.services.api.app import make_app
    from incloud_kernel import config

    monkeypatch.setenv("INCLOUD_INGEST_PROCESS_UPLOADS", "false")  # processing: test_upload_processing.py
    site.config = config.get_config(reload=True)
    console = Actor.console("tester")
    with transaction(site.engine) as db:
        projects.create_project(db, console, "CLIN", owner="olivia")
        projects.grant(db, console, "CLIN", "cleo", "member")
        projects.grant(db, console, "CLIN", "max", "member")
    auth = TableHubAuth(api_token="unused", access_scopes={ACCESS}, cache_max_age=0)
    with serving(make_app(site.config, hub_auth=auth)) as url:
        yield url


def _ticket(api: str, token: str = "t-cleo") -> dict:
    r = requests.post(api + "api/upload/tickets", json={"project": "CLIN"}, timeout=30,
                      headers={"Authorization": f"token {token}"})
    assert r.status_code == 200, r.text
    return r.json()


def _prepared(api: str, tmp: Path) -> tuple[dict, list[Path], set[str]]:
    src, uids = planted_study(tmp / "src")
    ticket = _ticket(api)
    found = scan.scan(src)
    t = prepare.Ticket(ticket["id"], ticket["pseudonym"], ticket["date_offset"], tuple(ticket["options"]), "CLIN")
    done = prepare.prepare_study(found.series, t, os.urandom(32), tmp / "outbox")
    assert all(p.blocked is None for p in done), [p.blocked for p in done]
    assert all(p.refaced for p in done)
    return ticket, [f for p in done for f in p.files], uids


def _stow(api: str, ticket: str, blobs: list[bytes], token: str = "t-cleo") -> requests.Response:
    body, ctype = send.multipart(blobs)
    return requests.post(f"{api}api/upload/{ticket}/studies", data=body, timeout=120,
                         headers={"Authorization": f"token {token}", "Content-Type": ctype})


def _reasons(r: requests.Response) -> list[str]:
    return [i["00000902"]["Value"][0] for i in r.json().get("00081198", {}).get("Value", [])]


def _stored(site, ticket: str) -> list[Path]:  # type: ignore[no-untyped-def]
    return sorted((site.config.spool / "upload" / ticket / "instances").glob("*.dcm"))


def test_upload_without_the_upload_scope_is_refused(api, site) -> None:  # type: ignore[no-untyped-def]
    ticket = _ticket(api)
    for token in ("t-max", "t-cleo-noscope"):  # members of the project, but their tokens lack the scope
        r = requests.post(api + "api/upload/tickets", json={"project": "CLIN"}, timeout=30,
                          headers={"Authorization": f"token {token}"})
        assert r.status_code == 403 and "custom:incloud:upload" in r.json()["message"]
        assert _stow(api, ticket["id"], [b"x"], token=token).status_code == 403
    assert _stow(api, ticket["id"], [b"x"], token="nobody").status_code == 401
    assert _stored(site, ticket["id"]) == []


def test_identified_or_tampered_instances_are_refused_with_a_reason(api, site, tmp_path: Path) -> None:
    ticket, files, _ = _prepared(api, tmp_path)
    original = sorted((tmp_path / "src").rglob("*.dcm"))[0]
    # 1. the identified original, sent directly with the upload scope
    r = _stow(api, ticket["id"], [original.read_bytes()])
    assert r.status_code == 409 and _reasons(r) == ["not de-identified (Patient Identity Removed is not YES)"]
    assert not any(v.lower().encode() in r.content.lower() for v in PLANTED_VALUES)
    assert str(pydicom.dcmread(original).SOPInstanceUID).encode() not in r.content  # never echoed
    # 2-4. a de-identified (and refaced) instance changed afterwards: each change, the reason it gets
    forgeries: list[tuple[Callable[[pydicom.Dataset], None], str]] = [
        (lambda ds: ds.private_block(0x0011, "QZVENDOR 1.0", create=True).add_new(0x10, "LO", "Quenzelmark^Ottiline"),
         "not de-identified: the site's profile still changes (0011,"),  # a name in a private tag
        (lambda ds: setattr(ds, "InstitutionName", "Brightwater Ostmarkklinik"),
         "not de-identified: the site's profile still changes InstitutionName"),
        (lambda ds: ds.private_block(0x0009, "QZVENDOR 1.0", create=True).add_new(0x20, "LO", "Quenzelmark"),
         "not de-identified: the site's profile still changes (0009,"),  # beside the refacing record
        (lambda ds: setattr(ds, "DeidentificationMethod", "Quenzelmark"),
         "not de-identified: the site's profile still changes DeidentificationMethod"),
        (lambda ds: setattr(ds, "PixelData", bytes(len(ds.PixelData))),  # pixels changed after refacing
         "a head series without INCloud's refacing marker"),
    ]
    for change, reason in forgeries:
        forged = pydicom.dcmread(files[0])
        change(forged)
        forged.save_as(tmp_path / "forged.dcm", enforce_file_format=True)
        r = _stow(api, ticket["id"], [(tmp_path / "forged.dcm").read_bytes()])
        assert r.status_code == 409 and _reasons(r)[0].startswith(reason), (reason, _reasons(r))
    # 5. another ticket's pseudonym
    other = _ticket(api)
    r = _stow(api, other["id"], [files[0].read_bytes()])
    assert _reasons(r) == ["the patient is not the upload ticket's pseudonym"]
    # 6. not DICOM, not multipart
    r = _stow(api, ticket["id"], [b"\xff\xd8\xff\xe0 a JPEG"])
    assert _reasons(r) == ["not a readable DICOM instance"]
    r = requests.post(f"{api}api/upload/{ticket['id']}/studies", data=b"x", timeout=30,
                      headers={"Authorization": "token t-cleo", "Content-Type": "application/dicom"})
    assert r.status_code == 415
    assert _stored(site, ticket["id"]) == [] and _stored(site, other["id"]) == []


def test_a_good_study_is_archived_and_sending_again_is_idempotent(api, site, tmp_path: Path) -> None:
    ticket, files, uids = _prepared(api, tmp_path)
    client = send.Api(api, "t-cleo")
    state = send.State(tmp_path / "state.json")
    progress = send.upload(client, ticket["id"], files[:5], state)
    assert progress.done == 5 and not progress.refused
    # a re-send (the answer was lost): acknowledged, not stored twice
    r = _stow(api, ticket["id"], [f.read_bytes() for f in files[:5]])
    assert r.status_code == 200 and len(r.json()["00081199"]["Value"]) == 5
    assert len(_stored(site, ticket["id"])) == 5
    r = requests.post(f"{api}api/upload/{ticket['id']}/complete", json={"instances": len(files)}, timeout=30,
                      headers={"Authorization": "token t-cleo"})
    assert r.status_code == 409 and "holds 5 of" in r.json()["message"]  # incomplete: not ingested yet
    progress = send.upload(client, ticket["id"], files, send.State(tmp_path / "state.json"))  # resumes
    assert progress.done == len(files) and len(_stored(site, ticket["id"])) == len(files)
    client.post(f"api/upload/{ticket['id']}/complete", {"instances": len(files)})
    deadline = time.monotonic() + 600
    while (state_now := client.get(f"api/upload/{ticket['id']}"))["state"] == "ingesting":
        assert time.monotonic() < deadline
        time.sleep(1)
    assert state_now["state"] == "archived", state_now
    with transaction(site.engine) as db:
        rows = list(db.scalars(select(Series)))
    assert [r.suffix for r in rows] == ["T1w"]
    # an API that died during the chain left the state "ingesting": the next look at it runs the chain again
    ticket_file = site.config.spool / "upload" / ticket["id"] / "ticket.json"
    ticket_file.write_text(json.dumps({**json.loads(ticket_file.read_text()), "state": "ingesting"}))
    while (state_now := client.get(f"api/upload/{ticket['id']}"))["state"] == "ingesting":
        assert time.monotonic() < deadline + 600
        time.sleep(1)
    assert state_now["state"] == "archived", state_now
    with transaction(site.engine) as db:
        assert len(list(db.scalars(select(Series)))) == 1  # the same series, not a second one
    # sending again after the archive: acknowledged, nothing stored, nothing archived twice
    r = _stow(api, ticket["id"], [files[0].read_bytes()])
    assert r.status_code == 409  # the upload is archived: a new one needs a new ticket
    needles = identity_needles(PLANTED_VALUES, extra=uids)
    leaks = scan_tree(site.config.archive_root, needles)
    assert not leaks, summary(leaks)


def test_size_and_rate_limits(api, site, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from hub.services.api import upload

    ticket = _ticket(api)
    monkeypatch.setattr(upload, "MAX_REQUEST_BYTES", 1000)
    r = _stow(api, ticket["id"], [bytes(2000)])
    assert r.status_code == 413 and "at most" in r.json()["message"]
    monkeypatch.setattr(upload.UploadHandler, "limiter", upload.RateLimiter(3))
    codes = [_stow(api, ticket["id"], [b"x"]).status_code for _ in range(5)]
    assert codes[:3] == [409, 409, 409] and codes[3:] == [429, 429]
    r = _stow(api, ticket["id"], [b"x"])
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
