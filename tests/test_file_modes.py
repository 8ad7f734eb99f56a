"""Issue 11 item 5: another system user cannot read a site's archive, database, spool, Orthanc storage, quarantines
or logs after the site went through DICOM reception, ingest and de-identification.

The site lives in a world-traversable folder with each storage root configured *outside* the site home, so every
root (and the SQLite file) must protect itself; an unprivileged system user made with ``useradd`` tries to read
them with ``runuser``. A positive control proves that user can reach the folder holding them.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from pydicom.data import get_testdata_file

from conftest import missing, require_tool
from dicom_edge import start_edge
from ingest_data import add_secondary_capture, make_small_study

INCLOUD = str(Path(sys.executable).with_name("incloud"))


def incloud(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([INCLOUD, *args], capture_output=True, text=True, env=dict(os.environ, **env), timeout=600)


@pytest.fixture
def outsider() -> Iterator[str]:
    """A fresh unprivileged system user (no home, no shell), removed afterwards."""
    if os.geteuid() != 0:
        missing("creating a system user needs root")
    require_tool("useradd")
    require_tool("runuser")
    name = f"icout{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


def as_user(user: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", *cmd], capture_output=True, text=True, errors="replace",
                          timeout=60)


@pytest.fixture
def base() -> Iterator[Path]:
    """A folder every user may enter (like /srv), outside pytest's private tmp folder."""
    folder = Path(tempfile.mkdtemp(prefix="incloud-modes-", dir=os.environ.get("INCLOUD_TEST_WORK") or None))
    os.chmod(folder, 0o755)
    parent = folder.parent
    while parent != parent.parent:  # the test is meaningless if the outsider cannot reach the folder at all
        if not parent.stat().st_mode & stat.S_IXOTH:
            missing(f"{parent} is not traversable by other users; set INCLOUD_TEST_WORK to a world-traversable folder")
        parent = parent.parent
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_an_unprivileged_user_cannot_read_site_data(base: Path, outsider: str, tmp_path: Path) -> None:
    require_tool("Orthanc")
    require_tool("storescu")
    env = {"INCLOUD_HOME": str(base / "home"), "INCLOUD_DATABASE_URL": f"sqlite:///{base / 'incloud.sqlite'}",
           "INCLOUD_STORAGE_ARCHIVE_ROOT": str(base / "archive"), "INCLOUD_STORAGE_SPOOL": str(base / "spool"),
           "INCLOUD_STORAGE_QUARANTINE": str(base / "quarantine"), "INCLOUD_STORAGE_BACKUP_ROOT": str(base / "backup"),
           "INCLOUD_INGEST_REFACE": "false"}
    assert incloud(env, "init").returncode == 0
    assert incloud(env, "projects", "create", "P1", "--name", "Modes").returncode == 0
    src = base / "src"  # the scanner's export: not site data, readable on purpose (positive control)
    files = make_small_study(src)
    add_secondary_capture(src / "sc", files["t1_mprage"][0])
    for path in [src, *src.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)

    # DICOM reception: Orthanc stores the study (identified) in its storage area under the spool.
    edge = start_edge(env)
    try:
        assert edge.store(*files["t1_mprage"]).returncode == 0
    finally:
        edge.stop()
    # Ingest (archive + ingest quarantine for the held-back screen save), a failed ingest, de-identification
    # of a file that goes to the de-identification quarantine, and a backup.
    assert incloud(env, "ingest", str(src), "--project", "P1").returncode == 0
    make_small_study(tmp_path / "other", seed=1, patient_id="OTHER77")
    assert incloud(env, "ingest", str(tmp_path / "other"), "--project", "NOPE").returncode != 0
    deid_src = base / "deid-src"
    deid_src.mkdir()
    shutil.copyfile(get_testdata_file("SC_rgb_jpeg.dcm"), deid_src / "sc.dcm")
    assert incloud(env, "deid", str(deid_src), "-o", str(tmp_path / "deid-out")).returncode == 0
    assert incloud(env, "archive", "backup").returncode == 0

    storage = base / "spool" / "orthanc" / "storage"
    site_files = {
        "database": base / "incloud.sqlite",
        "archive": next(p for p in (base / "archive").rglob("*.nii.gz")),
        "orthanc storage": next(p for p in storage.rglob("*") if p.is_file()),
        "orthanc log": base / "spool" / "orthanc" / "orthanc.log",
        "ingest journal": next((base / "spool" / "ingest").rglob("*.json"), None),
        # ingest's (failed study, held-back screen save) and de-identification's entries, every file of them
        **{f"quarantine {p.relative_to(base / 'quarantine')}": p
           for p in (base / "quarantine").rglob("*") if p.is_file()},
        "backup": next(p for p in (base / "backup").rglob("*.nii.gz")),
        "site key": base / "home" / "site.key",
        "deid audit": next((base / "home" / "deid").rglob("*.jsonl")),
    }
    assert sum(1 for what in site_files if what.startswith("quarantine")) >= 1 + 8 + 32 + 32 + 1
    site_dirs = [base / "archive", base / "spool", storage, base / "quarantine", base / "backup", base / "home"]

    assert as_user(outsider, "ls", str(base)).returncode == 0  # positive control: it can reach the folder
    assert as_user(outsider, "cat", str(src / "sc" / "sc_000.dcm")).returncode == 0  # and read what is public
    for what, path in site_files.items():
        if path is None:
            continue
        assert path.is_file(), what
        mode = path.stat().st_mode
        assert mode & 0o077 == 0, f"{what} {path} has mode {oct(mode & 0o777)}"
        denied = as_user(outsider, "cat", str(path))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, what
    for folder in site_dirs:
        assert folder.stat().st_mode & 0o777 == 0o700, f"{folder} has mode {oct(folder.stat().st_mode & 0o777)}"
        denied = as_user(outsider, "ls", str(folder))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, folder
