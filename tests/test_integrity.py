"""The archive stays whole: a writer killed mid-write leaves no half file, sweep clears what a crash leaves,
verify finds missing, extra and corrupt files, backup and restore bring lost or changed files back, and bad
input (unreachable database, read-only or full root, path traversal) is one line and changes nothing."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from archive_data import ADMIN, populate
from conftest import missing
from incloud_kernel.archive import integrity, records
from incloud_kernel.archive.models import AuditEvent, DataFile, Session
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.archive.projects import create_project, grant
from incloud_kernel.config import get_config, load_config
from incloud_kernel.db import transaction
from incloud_kernel.errors import PermissionDenied
from incloud_kernel.site import Site

INCLOUD = str(Path(sys.executable).with_name("incloud"))


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([INCLOUD, *args], env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=300)


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode != 0, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """relpath -> sha256 of every regular file under ``root``."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------------
# Mounts: a read-only bind mount and a tiny tmpfs (root ignores chmod, so permissions are not enough)
# ---------------------------------------------------------------------------------------------------------------

class Mounts:
    def __init__(self) -> None:
        self.points: list[Path] = []

    def _mount(self, *args: str) -> None:
        out = subprocess.run(["mount", *args], capture_output=True, text=True)
        if out.returncode != 0:
            missing(f"cannot mount ({out.stderr.strip()}); these tests need root or CAP_SYS_ADMIN")

    def tmpfs(self, path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        self._mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
        self.points.append(path)
        return path

    def read_only(self, path: Path) -> Path:
        self._mount("--bind", str(path), str(path))
        self.points.append(path)
        self._mount("-o", "remount,ro,bind", str(path))
        return path

    def unmount(self, path: Path) -> None:
        subprocess.run(["umount", str(path)], check=True)
        self.points.remove(path)


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    m = Mounts()
    yield m
    for point in reversed(m.points):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def site_with(site_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, **storage: Path) -> tuple[Site, dict]:
    """A migrated site whose storage roots (archive_root, backup_root...) are the given folders."""
    env = dict(site_env)
    for key, value in storage.items():
        env[f"INCLOUD_STORAGE_{key.upper()}"] = str(value)
        monkeypatch.setenv(f"INCLOUD_STORAGE_{key.upper()}", str(value))
    get_config(reload=True)
    s = Site.open(load_config(env=env), migrate=True)
    s.ensure_roots()
    return s, env


# ---------------------------------------------------------------------------------------------------------------
# A writer killed with SIGKILL
# ---------------------------------------------------------------------------------------------------------------

WRITER = r'''
import hashlib, io, sys, time
from incloud_kernel.site import Site
from incloud_kernel.archive import records
from incloud_kernel.archive.permissions import Actor

SIZE = 512 * 1024
def content(sid):
    block = hashlib.sha256(str(sid).encode()).digest()
    return block * (SIZE // len(block))

class Stalling(io.RawIOBase):
    """Hands out the first MiB-sized chunk, then says so and hangs: the writer is mid-write."""
    def __init__(self, data):
        self.data, self.calls = data, 0
    def readable(self):
        return True
    def read(self, n=-1):
        self.calls += 1
        if self.calls == 1:
            return self.data[: len(self.data) // 2]
        print("mid-write", flush=True)
        time.sleep(3600)

mode, ids = sys.argv[1], [int(x) for x in sys.argv[2:]]
site, actor = Site.open(), Actor.console("writer")
if mode == "mid":
    for sid in ids[:-1]:
        records.add_files(site, actor, sid, {"nii.gz": content(sid), "json": b'{"EchoTime": 0.003}'})
    print("committed", flush=True)
    records.add_files(site, actor, ids[-1], {"nii.gz": Stalling(content(ids[-1]))})
elif mode == "between":
    real = records.atomic_write
    def renamed_then_hang(root, rel, source, **kw):
        result = real(root, rel, source, **kw)
        print("renamed", flush=True)
        time.sleep(3600)
    records.atomic_write = renamed_then_hang
    records.add_files(site, actor, ids[0], {"nii.gz": content(ids[0]), "json": b"{}"})
print("finished without being killed", flush=True)
'''


def expected_content(sid: int) -> bytes:
    block = hashlib.sha256(str(sid).encode()).digest()
    return block * (512 * 1024 // len(block))


def kill_writer_at(env: dict[str, str], mode: str, ids: list[int], wait_for: list[str]) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, mode, *map(str, ids)], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for expected in wait_for:
            line = proc.stdout.readline().strip()  # type: ignore[union-attr]
            assert line == expected, f"writer said {line!r}: {proc.stderr.read() if line == '' else ''}"  # type: ignore[union-attr]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_writer_killed_mid_write_leaves_no_half_file_and_sweep_makes_the_archive_consistent(
        site: Site, site_env: dict[str, str]) -> None:
    with records.transaction(site) as db:
        create_project(db, ADMIN, "CRASH")
        p = records.add_participant(db, ADMIN, "CRASH", "C01")
        ses = records.add_session(db, ADMIN, p, "1")
        ids = [records.add_series(db, ADMIN, ses, "anat", "T1w", {"run": i}).id for i in range(1, 13)]
    root = site.archive_root

    # 1) killed in the middle of streaming a file: 10 series complete, the 11th half-written.
    kill_writer_at(site_env, "mid", ids[:11], ["committed", "mid-write"])
    # 2) killed after the rename, before the row's commit: an unrecorded, complete file.
    kill_writer_at(site_env, "between", ids[11:], ["renamed"])

    with transaction(site.engine) as db:
        recorded = {f.relpath: f for f in db.query(DataFile)}
    assert len(recorded) == 20  # 10 series x (nii.gz + json)
    temps = [p for p in root.rglob(".incloud-tmp-*")]
    assert len(temps) == 1 and 0 < temps[0].stat().st_size < 512 * 1024
    # No half file under a final name: every image there is complete, byte for byte.
    by_run = {f"run-{i + 1}": sid for i, sid in enumerate(ids)}
    for image in (p for p in root.rglob("*_T1w.nii.gz") if not p.name.startswith(".")):
        run_label = next(part for part in image.name.split("_") if part.startswith("run-"))
        assert image.read_bytes() == expected_content(by_run[run_label]), image.name
    assert not (root / "sub-C01/ses-1/anat/sub-C01_ses-1_run-11_T1w.nii.gz").exists()  # never appeared
    orphan = next(root.rglob("*_run-12_T1w.nii.gz"))
    assert orphan.relative_to(root).as_posix() not in recorded

    before = run(site_env, "archive", "verify", "--json")
    assert before.returncode == 1
    report = json.loads(before.stdout)
    assert report["extra"] == [orphan.relative_to(root).as_posix()] and len(report["temp"]) == 1

    swept = run(site_env, "archive", "sweep", "--grace", "0", "--json")
    assert swept.returncode == 0, swept.stderr
    result = json.loads(swept.stdout)
    assert len(result["removed_temp"]) == 1
    assert result["quarantined"] == [orphan.relative_to(root).as_posix()]
    kept = Path(result["quarantine_dir"]) / orphan.relative_to(root)
    assert kept.read_bytes() == expected_content(ids[11])  # quarantined, not lost

    after = run(site_env, "archive", "verify", "--json")
    assert after.returncode == 0, after.stdout + after.stderr
    clean = json.loads(after.stdout)
    assert clean["consistent"] and clean["checked"] == 20 and not clean["temp"]
    # Sweeping (not adopting) lets the dead writer's caller simply retry.
    records.add_files(site, ADMIN, ids[11], {"nii.gz": expected_content(ids[11]), "json": b"{}"})
    assert run(site_env, "archive", "verify").returncode == 0


def test_sweep_leaves_a_live_writers_recent_leftovers_alone(site: Site, site_env: dict[str, str]) -> None:
    populate(site)
    tmp = site.archive_root / "sub-P01" / "ses-1" / "anat" / ".incloud-tmp-999999-x.nii.gz"
    extra = site.archive_root / "sub-P01" / "ses-1" / "anat" / "sub-P01_ses-1_T2w.nii.gz"
    tmp.write_bytes(b"partial")
    extra.write_bytes(b"complete but unrecorded")
    out = run(site_env, "archive", "sweep", "--json")  # default grace: an hour
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(out.stdout)["too_recent"]) == sorted(
        p.relative_to(site.archive_root).as_posix() for p in (tmp, extra))
    assert tmp.exists() and extra.exists()
    dry = json.loads(run(site_env, "archive", "sweep", "--grace", "0", "--dry-run", "--json").stdout)
    assert len(dry["removed_temp"]) == 1 and len(dry["quarantined"]) == 1 and tmp.exists() and extra.exists()


# ---------------------------------------------------------------------------------------------------------------
# verify, backup, restore
# ---------------------------------------------------------------------------------------------------------------

def test_a_file_changed_behind_the_archives_back_is_found_and_restored(site: Site, site_env: dict[str, str]) -> None:
    stored = populate(site)
    root, backup_root = site.archive_root, site.config.backup_root
    assert run(site_env, "archive", "verify").returncode == 0
    first = run(site_env, "archive", "backup", "--json")
    assert first.returncode == 0, first.stderr
    assert len(json.loads(first.stdout)["copied"]) >= 9
    good = snapshot(root)

    changed, lost = stored.files["STUDY1"][1], stored.files["STUDY1"][4]
    data = bytearray((root / changed).read_bytes())
    data[100] ^= 0xFF  # same size, different bytes: only the hash can tell
    (root / changed).write_bytes(bytes(data))
    (root / lost).unlink()

    out = run(site_env, "archive", "verify", "--json")
    assert out.returncode == 1
    assert one_line_error(out).startswith("error: archive is inconsistent")
    report = json.loads(out.stdout)
    assert report["corrupt"] == [changed] and report["missing"] == [lost] and not report["extra"]

    # A backup run now must not replace the good backup copy with the changed one.
    again = run(site_env, "archive", "backup", "--full", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["copied"] == []
    assert hashlib.sha256((backup_root / changed).read_bytes()).hexdigest() == good[changed]

    fixed = run(site_env, "archive", "restore", "--json")
    assert fixed.returncode == 0, fixed.stderr
    result = json.loads(fixed.stdout)
    assert sorted(result["restored"]) == sorted([changed, lost])
    assert (Path(result["quarantine_dir"]) / changed).read_bytes() == bytes(data)  # damaged copy kept
    assert snapshot(root) == good
    assert run(site_env, "archive", "verify").returncode == 0
    with transaction(site.engine) as db:
        assert db.query(AuditEvent).filter(AuditEvent.action == "archive.restore").count() == 2


def test_backup_never_copies_a_file_that_no_longer_matches_its_record(site: Site,
                                                                      site_env: dict[str, str]) -> None:
    stored = populate(site)
    rel = stored.files["STUDY1"][0]
    (site.archive_root / rel).write_bytes(b"changed behind the archive's back")
    out = run(site_env, "archive", "backup", "--json")
    assert out.returncode == 1 and "not backed up" in one_line_error(out)
    assert json.loads(out.stdout)["corrupt_source"] == [rel]
    assert not (site.config.backup_root / rel).exists()
    assert len(json.loads(out.stdout)["copied"]) >= 8  # everything else was backed up


def test_backup_is_incremental_and_checkable_with_sha256sum(site: Site, site_env: dict[str, str]) -> None:
    populate(site)
    assert run(site_env, "archive", "backup").returncode == 0
    second = json.loads(run(site_env, "archive", "backup", "--json").stdout)
    assert second["copied"] == [] and second["unchanged"] >= 9
    full = json.loads(run(site_env, "archive", "backup", "--full", "--json").stdout)
    assert full["copied"] == []
    check = subprocess.run(["sha256sum", "--quiet", "-c", integrity.MANIFEST], cwd=site.config.backup_root,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # A new recorded file is the only thing the next run copies.
    with records.transaction(site) as db:
        sid = records.add_series(db, ADMIN, db.query(Session).filter(Session.label == "1").first().id,
                                 "anat", "T2w").id
    records.add_files(site, ADMIN, sid, {"nii.gz": b"not really an image but recorded"})
    third = json.loads(run(site_env, "archive", "backup", "--json").stdout)
    assert [p.endswith("_T2w.nii.gz") for p in third["copied"]] == [True]


def test_restore_refuses_a_backup_copy_that_does_not_match_the_record(site: Site, site_env: dict[str, str]) -> None:
    stored = populate(site)
    assert run(site_env, "archive", "backup").returncode == 0
    rel = stored.files["STUDY1"][0]
    (site.archive_root / rel).unlink()
    (site.config.backup_root / rel).write_bytes(b"tampered")
    out = run(site_env, "archive", "restore", rel, "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["failed"] == [{"relpath": rel, "reason":
                                                 "backup copy does not match the recorded SHA-256"}]
    assert not (site.archive_root / rel).exists()


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "sub-P01/../../x", "sub P01/x.nii.gz"])
def test_restore_rejects_unsafe_paths(site: Site, site_env: dict[str, str], path: str) -> None:
    populate(site)
    before = snapshot(site.archive_root)
    line = one_line_error(run(site_env, "archive", "restore", path))
    assert "archive path" in line
    assert snapshot(site.archive_root) == before


def test_only_site_admins_run_archive_maintenance(site: Site, site_env: dict[str, str]) -> None:
    populate(site)
    with records.transaction(site) as db:
        grant(db, ADMIN, "STUDY1", "olivia", "owner")
    for command in (["verify"], ["backup"], ["restore"], ["sweep"]):
        out = run(site_env, "archive", *command, "--as", "olivia")
        assert out.returncode == 3 and one_line_error(out).startswith("error: only a site admin may")
    with pytest.raises(PermissionDenied):
        integrity.verify(site, Actor(user="olivia"))


def test_archive_ls_lists_only_permitted_files(site: Site, site_env: dict[str, str]) -> None:
    stored = populate(site)
    with records.transaction(site) as db:
        grant(db, ADMIN, "STUDY1", "carl", "collaborator")
    mine = json.loads(run(site_env, "archive", "ls", "--as", "carl", "--json", "--page-size", "1000").stdout)
    assert sorted(f["relpath"] for f in mine["files"]) == stored.files["STUDY1"]
    out = run(site_env, "archive", "ls", "OTHER1", "--as", "carl")
    assert out.returncode == 4 and one_line_error(out) == "error: project OTHER1 not found"
    everything = json.loads(run(site_env, "archive", "ls", "--json", "--page-size", "1000").stdout)
    assert len(everything["files"]) == len(stored.files["STUDY1"]) + len(stored.files["OTHER1"])


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit, nothing stored lost or altered
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["verify"], ["restore"], ["sweep"]])
def test_unreachable_database_is_one_line(tmp_path: Path, command: list[str]) -> None:
    env = {"INCLOUD_HOME": str(tmp_path), "INCLOUD_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
           "INCLOUD_DATABASE_CONNECT_TIMEOUT": "2"}
    out = run(env, "archive", *command)
    assert out.returncode == 2
    assert one_line_error(out).startswith("error: database unreachable at")


def test_read_only_archive_root_is_one_line_and_changes_nothing(
        tmp_path: Path, site_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, mounts: Mounts) -> None:
    s, env = site_with(site_env, monkeypatch, archive_root=tmp_path / "archive")
    stored = populate(s)
    assert run(env, "archive", "backup").returncode == 0
    lost = stored.files["STUDY1"][1]
    (s.archive_root / lost).unlink()
    (s.archive_root / "sub-P01" / ".incloud-tmp-1-stale").write_bytes(b"x")
    before = snapshot(s.archive_root)
    mounts.read_only(s.archive_root)

    line = one_line_error(run(env, "archive", "restore", lost))
    assert "Read-only file system" in line and lost in line
    line = one_line_error(run(env, "archive", "sweep", "--grace", "0"))
    assert "Read-only file system" in line
    out = run(env, "archive", "verify", "--json")  # reading still works
    assert out.returncode == 1 and json.loads(out.stdout)["missing"] == [lost]
    assert snapshot(s.archive_root) == before

    mounts.unmount(s.archive_root)
    assert run(env, "archive", "restore", lost).returncode == 0
    assert run(env, "archive", "sweep", "--grace", "0").returncode == 0
    assert run(env, "archive", "verify").returncode == 0


def test_full_archive_root_is_one_line_and_changes_nothing(
        tmp_path: Path, site_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, mounts: Mounts) -> None:
    root = mounts.tmpfs(tmp_path / "archive", "1m")
    s, env = site_with(site_env, monkeypatch, archive_root=root)
    with records.transaction(s) as db:
        create_project(db, ADMIN, "FULL")
        ses = records.add_session(db, ADMIN, records.add_participant(db, ADMIN, "FULL", "F01"), "1")
        sids = [records.add_series(db, ADMIN, ses, "anat", "T1w", {"run": i}).id for i in (1, 2)]
    big = os.urandom(300 * 1024)
    records.add_files(s, ADMIN, sids[0], {"nii.gz": big})
    records.add_files(s, ADMIN, sids[1], {"nii.gz": os.urandom(100 * 1024)})
    assert run(env, "archive", "backup").returncode == 0
    rel = next(p for p in snapshot(root) if "run-1" in p)
    (root / rel).unlink()
    filler = root / ".filler"
    with open(filler, "wb") as fh:  # fill the filesystem up
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    before = snapshot(root)

    line = one_line_error(run(env, "archive", "restore", rel))
    assert "No space left on device" in line
    assert snapshot(root) == before  # no temp file left, nothing else touched

    filler.unlink()
    assert run(env, "archive", "restore", rel).returncode == 0
    assert (root / rel).read_bytes() == big
    assert run(env, "archive", "verify").returncode == 0


def test_full_backup_root_is_one_line_and_keeps_earlier_copies(
        tmp_path: Path, site_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, mounts: Mounts) -> None:
    backup_root = mounts.tmpfs(tmp_path / "backup", "256k")
    s, env = site_with(site_env, monkeypatch, backup_root=backup_root)
    with records.transaction(s) as db:
        create_project(db, ADMIN, "BIG")
        ses = records.add_session(db, ADMIN, records.add_participant(db, ADMIN, "BIG", "B01"), "1")
        small = records.add_series(db, ADMIN, ses, "anat", "T1w").id
        large = records.add_series(db, ADMIN, ses, "anat", "T2w").id
    records.add_files(s, ADMIN, small, {"nii.gz": os.urandom(20 * 1024)})
    assert run(env, "archive", "backup").returncode == 0
    before = snapshot(backup_root)
    records.add_files(s, ADMIN, large, {"nii.gz": os.urandom(400 * 1024)})
    line = one_line_error(run(env, "archive", "backup"))
    assert "No space left on device" in line
    after = snapshot(backup_root)
    assert {k: v for k, v in after.items() if k in before} == before  # earlier copies and manifest intact
    assert not [k for k in after if ".incloud-tmp-" in k]


def test_verify_reports_progress_in_bytes(site: Site) -> None:
    stored = populate(site)
    calls: list[tuple[int, int]] = []
    report = integrity.verify(site, ADMIN, progress=lambda done, total: calls.append((done, total)))
    total = sum((site.archive_root / rel).stat().st_size for rels in stored.files.values() for rel in rels)
    assert report.consistent and report.bytes == total
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))
