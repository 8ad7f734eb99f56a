"""The one config object: embedded defaults, site file, INCLOUD_* overrides, and one-line errors."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from incloud_kernel.config import load_config
from incloud_kernel.errors import ConfigError

INCLOUD = str(Path(__import__("sys").executable).with_name("incloud"))


def test_embedded_defaults_live_under_home(tmp_path: Path) -> None:
    cfg = load_config(env={"INCLOUD_HOME": str(tmp_path)})
    assert cfg.database_url == f"sqlite:///{tmp_path / 'incloud.sqlite'}"
    assert cfg.archive_root == tmp_path / "archive"
    assert cfg.quarantine == tmp_path / "quarantine"
    assert cfg.backup_root == tmp_path / "backup"
    assert cfg.sources["home"] == "env INCLOUD_HOME"
    assert cfg.sources.get("dicom.port") is None  # default


def test_file_then_environment_precedence(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text('[dicom]\nport = 4242\nae_title = "FILEAE"\n[storage]\narchive_root = "/srv/a"\n')
    cfg = load_config(site, env={"INCLOUD_HOME": str(tmp_path), "INCLOUD_DICOM_PORT": "5000",
                                 "INCLOUD_DICOM_ALLOWED_CALLING_AETS": "SCANNER1, SCANNER2"})
    assert cfg.dicom.port == 5000 and cfg.sources["dicom.port"] == "env INCLOUD_DICOM_PORT"
    assert cfg.dicom.ae_title == "FILEAE" and cfg.sources["dicom.ae_title"] == f"file {site}"
    assert cfg.dicom.allowed_calling_aets == ["SCANNER1", "SCANNER2"]
    assert cfg.archive_root == Path("/srv/a")


def test_site_file_found_in_home(tmp_path: Path) -> None:
    (tmp_path / "incloud.toml").write_text('[site]\nname = "Clinic"\n')
    assert load_config(env={"INCLOUD_HOME": str(tmp_path)}).site.name == "Clinic"


@pytest.mark.parametrize(
    "text, env, fragment",
    [
        ("[nosuch]\nx = 1\n", {}, "unknown section"),
        ("[dicom]\nportt = 1\n", {}, "unknown setting"),
        ("[dicom\n", {}, "not valid TOML"),
        ("", {"INCLOUD_DICOM_PORT": "eleven"}, "INCLOUD_DICOM_PORT"),
        ("", {"INCLOUD_HUB_ALLOW_NAMED_SERVERS": "maybe"}, "INCLOUD_HUB_ALLOW_NAMED_SERVERS"),
    ],
)
def test_bad_config_is_one_line_error(tmp_path: Path, text: str, env: dict, fragment: str) -> None:
    site = tmp_path / "site.toml"
    site.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(site, env={"INCLOUD_HOME": str(tmp_path), **env})
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_config_show_cli_reports_sources(tmp_path: Path) -> None:
    env = {"INCLOUD_HOME": str(tmp_path), "INCLOUD_DICOM_AE_TITLE": "EDGE", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([INCLOUD, "config", "show", "--json"], env=env, capture_output=True, text=True, check=True)
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["dicom.ae_title"] == {"name": "dicom.ae_title", "value": "EDGE", "source": "env INCLOUD_DICOM_AE_TITLE"}
    assert rows["(effective) archive_root"]["value"] == str(tmp_path / "archive")


def test_cli_bad_config_exits_nonzero_without_traceback(tmp_path: Path) -> None:
    env = {"INCLOUD_HOME": str(tmp_path), "INCLOUD_CONFIG": str(tmp_path / "missing.toml"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([INCLOUD, "config", "show"], env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: config file not found: {tmp_path / 'missing.toml'}"
