"""Done-when of issue 18 item 3: every registered name, birth date and record number is searched for in the database
file (SQLite, with its journal), in a real ``pg_dump`` of the PostgreSQL database, in every file under the site
home, and in the logs and outputs of every command: none is there in clear text.

The registry is used the way a site uses it: registrations through the CLI (identities on stdin), typos held as
duplicates and decided, enrolments, reads with a reason, look-ups, research attributes, a key rotation.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import missing
from incloud_kernel.acquisition import keyring, registry
from incloud_kernel.archive import projects
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.db import transaction
from registry_data import PEOPLE, find_leaks

INCLOUD = os.path.join(os.path.dirname(sys.executable), "incloud")


def _pg_dump(url: str) -> bytes:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"))
    if not found:
        missing("pg_dump not found (PostgreSQL's client binaries; scripts/test.sh installs them)")
    libpq = url.replace("postgresql+psycopg://", "postgresql://")
    r = subprocess.run([found[-1], "--no-owner", libpq], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-300:]
    return r.stdout


def test_no_registered_identity_is_in_the_database_a_pg_dump_files_or_logs(site, site_env, caplog) -> None:  # type: ignore
    caplog.set_level(logging.DEBUG)
    outputs: list[tuple[str, str]] = []

    def cli(*args: str, stdin: str = "", secret_stdout: bool = False) -> subprocess.CompletedProcess:
        r = subprocess.run([INCLOUD, *args], input=stdin, capture_output=True, text=True,
                           env={**os.environ, **site_env, "INCLOUD_DEBUG": "0"}, timeout=120)
        outputs.append((f"stderr of {args[:2]}", r.stderr))
        if not secret_stdout:  # only `show` prints an identity, to the registrar who asked for it
            outputs.append((f"stdout of {args[:2]}", r.stdout))
        return r

    console = Actor.console("tester")
    with transaction(site.engine) as db:
        projects.create_project(db, console, "DEMO", owner="olivia")
        projects.create_project(db, console, "OTHER")
        projects.grant(db, console, "DEMO", "max", "member")

    uids = []
    for person in PEOPLE:
        r = cli("registry", "add", "--project", "DEMO", "--json", stdin=json.dumps(person))
        assert r.returncode == 0, r.stderr
        uids.append(json.loads(r.stdout)["uid"])
        assert cli("registry", "enrol", uids[-1], "OTHER").returncode == 0
    typo = {**PEOPLE[0], "family_name": "Quennevilleir", "record_number": ""}
    assert cli("registry", "add", stdin=json.dumps(typo)).returncode == 5
    assert cli("registry", "add", "--same-as", uids[0], stdin=json.dumps(typo)).returncode == 0
    twin = {**PEOPLE[1], "given_names": "Eustachia", "sex": "F", "record_number": "KX88310999"}
    assert cli("registry", "add", "--keep-apart", stdin=json.dumps(twin)).returncode == 0
    assert cli("registry", "add", stdin=json.dumps({"family_name": PEOPLE[2]["family_name"],
                                                    "given_names": "X"})).returncode == 2
    for uid in uids:
        r = cli("registry", "show", uid, "--reason", "visit planning", secret_stdout=True)
        assert r.returncode == 0 and PEOPLE[uids.index(uid)]["family_name"] in r.stdout
    assert cli("registry", "show", uids[0], "--reason", f"about {PEOPLE[0]['family_name']}",
               secret_stdout=True).returncode == 2
    r = cli("registry", "find", "--reason", "front desk check", stdin=json.dumps(
        {"record_number": PEOPLE[2]["record_number"]}))
    assert r.stdout.split() == [uids[2]]
    r = cli("registry", "show", uids[0], "--reason", "visit planning", "--as", "max", secret_stdout=True)
    assert r.returncode == 3
    assert cli("registry", "rotate-key").returncode == 0
    with transaction(site.engine) as db:  # in-process too, so the captured logs cover the library
        label = registry.attributes(db, Actor(user="max"), registry.show(
            db, console, uids[1], "visit planning", config=site.config)["enrolments"][0]["pseudonym"],
            {"handedness": "R", "diagnosis": ["F20"]})["pseudonym"]
        with pytest.raises(registry.DuplicateSuspected):
            registry.register(db, console, {**PEOPLE[2], "birth_date": "1972-07-18", "record_number": ""},
                              config=site.config)
    assert label.startswith("R")

    findings: list[str] = []
    home = Path(site_env["INCLOUD_HOME"])
    files = [p for p in home.rglob("*") if p.is_file()]  # participants.tsv, the key file, the audit trail...
    if site.sqlite_path is not None:  # the database file and whatever journal SQLite keeps beside it
        files += [p for p in site.sqlite_path.parent.glob(site.sqlite_path.name + "*") if p.is_file()]
        assert site.sqlite_path in files and site.sqlite_path.stat().st_size > 0
    assert keyring.key_path(site.config) in files
    for path in files:
        findings += find_leaks(path.read_bytes(), str(path))
    if site.sqlite_path is None:
        dump = _pg_dump(site.config.database_url)
        assert b"registry_person" in dump and b"COPY public.registry_index" in dump
        findings += find_leaks(dump, "pg_dump")
    findings += find_leaks(caplog.text.encode(), "captured logs")
    for where, text in outputs:
        findings += find_leaks(text.encode(), where)
    assert findings == []
    assert len(uids) == len(PEOPLE)
