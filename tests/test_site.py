"""Opening a site: init is idempotent, unreachable databases and stale schemas give one-line errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from incloud_kernel.config import load_config
from incloud_kernel.errors import DatabaseError
from incloud_kernel.site import Site

INCLOUD = str(Path(sys.executable).with_name("incloud"))


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([INCLOUD, *args], env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)


def test_init_is_idempotent_and_makes_a_bids_root(site_env: dict[str, str]) -> None:
    for _ in range(2):
        out = run(site_env, "init")
        assert out.returncode == 0, out.stderr
    root = Path(site_env["INCLOUD_HOME"]) / "archive"
    assert (root / "dataset_description.json").is_file()
    assert (root / "participants.tsv").read_text() == "participant_id\n"


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    env = {"INCLOUD_HOME": str(tmp_path), "INCLOUD_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
           "INCLOUD_DATABASE_CONNECT_TIMEOUT": "2"}
    out = run(env, "init")
    assert out.returncode == 2
    assert out.stderr.startswith("error: database unreachable at postgresql+psycopg://nobody@127.0.0.1:9/none")
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_unmigrated_database_is_refused(tmp_path: Path, db_url: str) -> None:
    cfg = load_config(env={"INCLOUD_HOME": str(tmp_path), "INCLOUD_DATABASE_URL": db_url})
    with pytest.raises(DatabaseError, match="run 'incloud init'"):
        Site.open(cfg)


def test_secret_key_is_stable_and_private(site: Site) -> None:
    key = site.secret_key()
    assert len(key) == 32 and site.secret_key() == key
    assert (site.config.home / "site.key").stat().st_mode & 0o077 == 0
