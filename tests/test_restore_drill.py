"""The restore drill (issue 20 item 4) on SQLite and on a real PostgreSQL: archive small studies, register and
enrol people, record QC decisions, ``incloud backup create``, destroy the database and the archive folder,
``incloud backup restore``, and find ``incloud archive verify`` clean and everything back. Plus: the key never
lands beside the dump, a restore never overwrites a live database, an unwritable target is one line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from archive_data import ADMIN, populate
from conftest import make_env, owned_databases
from incloud_kernel import db as dbmod
from incloud_kernel.acquisition import registry
from incloud_kernel.archive import projects, schema, sitebackup
from incloud_kernel.archive.models import (Membership, Participant, Project, QCReview, RegistryEnrolment,
                                           RegistryPerson, Series, SiteAdmin)
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.config import load_config
from incloud_kernel.db import transaction
from incloud_kernel.qc import gate
from incloud_kernel.site import Site
from registry_data import PEOPLE

INCLOUD = str(Path(sys.executable).with_name("incloud"))
REGISTRAR = Actor(user="rita", groups=frozenset({"registrar"}))


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([INCLOUD, *args], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=300)


def fill(site: Site) -> None:
    """Two projects with files, grants, an admin, two registered and enrolled people, three QC decisions."""
    populate(site)
    site.secret_key()  # made at the first de-identification: the keyed HMACs of UIDs and pseudonyms
    with transaction(site.engine) as db:
        projects.grant(db, ADMIN, "STUDY1", "olivia", "owner")
        projects.grant(db, ADMIN, "STUDY1", "max", "collaborator")
        projects.add_site_admin(db, ADMIN, "ada")
        for person in PEOPLE[:2]:
            registry.register(db, REGISTRAR, person, config=site.config, project="STUDY1")
        series = db.scalars(select(Series).order_by(Series.id)).all()
        for row, decision in zip(series, ("pass", "fail", "caveat")):
            gate.review(db, ADMIN, row, decision, reason="motion" if decision != "pass" else "")


def state(site: Site) -> dict[str, Any]:
    """What must survive: projects, grants, admins, participants, series, pseudonyms, QC decisions."""
    with transaction(site.engine) as db:
        return {
            "projects": sorted((p.code, p.name) for p in db.scalars(select(Project))),
            "grants": sorted((m.project_id, m.principal_kind, m.principal, m.role)
                             for m in db.scalars(select(Membership))),
            "admins": sorted(a.principal for a in db.scalars(select(SiteAdmin))),
            "participants": sorted(p.label for p in db.scalars(select(Participant))),
            "series": sorted((s.id, s.datatype, s.suffix) for s in db.scalars(select(Series))),
            "pseudonyms": sorted(e.pseudonym for e in db.scalars(select(RegistryEnrolment))),
            "people": sorted((p.uid, p.key_id) for p in db.scalars(select(RegistryPerson))),
            "qc": sorted((r.series_id, r.decision, r.reason, r.reviewer) for r in db.scalars(select(QCReview))),
        }


def destroy(site: Site, url: str) -> None:
    """Lose the database (dropped and created empty on PostgreSQL, deleted on SQLite) and the archive folder."""
    engine = dbmod._engines.pop(url, None)
    (engine or site.engine).dispose()
    if url.startswith("sqlite"):
        for path in Path(url.removeprefix("sqlite:///")).parent.glob("incloud.sqlite*"):
            path.unlink()
    else:
        name = url.rsplit("/", 1)[1]
        admin = create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    shutil.rmtree(site.archive_root)


def test_restore_drill_brings_back_database_files_pseudonyms_and_qc(site: Site, site_env: dict[str, str],
                                                                    tmp_path: Path) -> None:
    fill(site)
    before = state(site)
    assert before["pseudonyms"] and before["qc"] and before["series"]
    dest, keys = tmp_path / "backup", tmp_path / "keys"

    out = run(site_env, "backup", "create", str(dest), "--keys-to", str(keys), "--json")
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    assert made["complete"] and made["rows"] == 9 and not made["changed"]
    assert sorted(made["keys_copied"]) == ["registry-keys.json", "site.key"]
    # no key beside the dump: neither the registry key ring's bytes nor the site key anywhere under DEST
    secrets_ = [site.config.home / "site.key", site.config.home / "registry" / "keys.json"]
    for secret in secrets_:
        assert secret.is_file()
        for path in dest.rglob("*"):
            if path.is_file():
                assert secret.read_bytes().strip() not in path.read_bytes(), path
    assert all(p.stat().st_mode & 0o077 == 0 for p in keys.iterdir())

    destroy(site, site_env["INCLOUD_DATABASE_URL"])
    for secret in secrets_:  # the site lost its home too; the keys come back from the key folder
        secret.unlink()
    assert run(site_env, "archive", "verify").returncode != 0  # nothing there any more

    out = run(site_env, "backup", "restore", str(dest), "--keys-from", str(keys), "--json")
    assert out.returncode == 0, out.stderr
    restored = json.loads(out.stdout)
    assert len(restored["archive"]["restored"]) == 9 and not restored["archive"]["failed"]
    assert restored["keys_missing"] == [] and sorted(restored["keys_restored"]) == ["registry-keys.json",
                                                                                     "site.key"]
    verify = run(site_env, "archive", "verify", "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["missing"] == []
    assert (site.archive_root / "participants.tsv").is_file()

    after = Site.open(load_config(env=site_env))
    assert state(after) == before
    # the registry still opens its sealed identities with the restored key ring
    with transaction(after.engine) as db:
        uid = before["people"][0][0]
        shown = registry.show(db, REGISTRAR, uid, "restore drill", config=after.config)
    assert shown["identity"]["family_name"] in {p["family_name"] for p in PEOPLE}

    # a restore never overwrites a live database
    again = run(site_env, "backup", "restore", str(dest))
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        "error: the site database is not empty: restore only into a new, empty database (drop and create it, "
        "or point database.url at a new one)"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_backup_keeps_the_newest_dumps_and_never_mixes_keys_with_them(site: Site, site_env: dict[str, str],
                                                                      tmp_path: Path) -> None:
    populate(site)
    dest = tmp_path / "backup"
    for _ in range(3):
        assert sitebackup.create(site, ADMIN, dest, keep=2).complete
    kept = sitebackup.dumps(dest)
    assert len(kept) == 2 and all(p.with_name(p.name + ".json").is_file() for p in kept)
    assert len(list((dest / "database").iterdir())) == 4
    out = run(site_env, "backup", "create", str(dest), "--keys-to", str(dest / "keys"))
    assert out.returncode == 2 and out.stderr.startswith("error: the key folder and the backup folder")
    assert not (dest / "keys").exists()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_backup_to_an_unwritable_target_is_one_line(site: Site, site_env: dict[str, str], tmp_path: Path) -> None:
    populate(site)
    target = tmp_path / "ro"
    target.mkdir()
    subprocess.run(["mount", "--bind", str(target), str(target)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], check=True)
        out = run(site_env, "backup", "create", str(target / "site"))
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: backup folder") and "Read-only file system" in lines[0]
    assert "Traceback" not in out.stderr


def test_postgres_backup_and_restore_as_an_unprivileged_role_with_a_password(tmp_path: Path) -> None:
    """As production runs it: the site's role owns its database but is no superuser, and logs in with a
    password (handed to pg_dump/pg_restore in PGPASSWORD, never on their command line)."""
    with owned_databases(2, password=True) as urls:
        env = make_env(tmp_path / "home", urls[0])
        site = Site.open(load_config(env=env), migrate=True)
        site.ensure_roots()
        populate(site)
        assert sitebackup.create(site, ADMIN, tmp_path / "backup").complete
        report = sitebackup.restore(load_config(env={**env, "INCLOUD_DATABASE_URL": urls[1]}), tmp_path / "backup")
        assert report.complete and report.revision_now == schema.head_revision()
        restored = Site.open(load_config(env={**env, "INCLOUD_DATABASE_URL": urls[1]}))
        assert state(restored) == state(site)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_file_replaced_between_the_dump_and_the_mirror_makes_the_backup_incomplete(
        site: Site, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The dump's row and the mirrored bytes disagree: the run says so (exit 1 in the CLI) instead of keeping a
    backup whose restore would fail on that file."""
    from isolated_hub import nifti_bytes
    from incloud_kernel.archive import integrity, records

    populate(site)
    with transaction(site.engine) as db:
        series = db.scalars(select(Series).order_by(Series.id)).first()
        sid = series.id
    real_backup = integrity.backup

    def late_writer(*args: Any, **kwargs: Any) -> Any:  # ingest replacing a series right after the dump
        with transaction(site.engine) as db:
            records.replace_files(site, ADMIN, db.get(Series, sid), {"nii.gz": nifti_bytes(seed=99)})
        return real_backup(*args, **kwargs)

    monkeypatch.setattr(sitebackup.integrity, "backup", late_writer)
    report = sitebackup.create(site, ADMIN, tmp_path / "backup")
    # the NIfTI now has other bytes, the sidecar is gone (replace_files swaps all files of the series)
    assert not report.complete and report.changed == ["sub-P01/ses-1/anat/sub-P01_ses-1_T1w.json",
                                                      "sub-P01/ses-1/anat/sub-P01_ses-1_T1w.nii.gz"]
    monkeypatch.setattr(sitebackup.integrity, "backup", real_backup)
    assert sitebackup.create(site, ADMIN, tmp_path / "backup").complete  # the next run is whole again
