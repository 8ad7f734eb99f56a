"""``incloud export bids PROJECT DEST``: a valid BIDS dataset (checked by the reference bids-validator) holding
only the project's files, with participants and sessions tables; bad input is one line and changes nothing."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from archive_data import ADMIN, populate
from conftest import missing
from incloud_kernel.archive import records
from incloud_kernel.archive.export import export_bids
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.archive.projects import grant
from incloud_kernel.errors import NotFound
from incloud_kernel.site import Site
from test_integrity import Mounts, mounts, one_line_error, run, snapshot  # noqa: F401 - fixture re-export

VALIDATOR_FALLBACK = Path("/opt/incloud/node/node_modules/.bin/bids-validator")


def bids_validator() -> str:
    """The reference validator (npm bids-validator 1.15, installed by scripts/lib/install.sh)."""
    path = shutil.which("bids-validator") or (str(VALIDATOR_FALLBACK) if os.access(VALIDATOR_FALLBACK, os.X_OK)
                                              else None)
    if path is None:
        missing("command 'bids-validator' not found (scripts/test.sh installs it with ensure_node_tools)")
    return path  # type: ignore[return-value]


def validate(dataset: Path) -> dict:
    out = subprocess.run([bids_validator(), str(dataset), "--json"], capture_output=True, text=True, timeout=300)
    try:
        result = json.loads(out.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"bids-validator gave no JSON (exit {out.returncode}): {out.stderr[-500:]}")
    result["exit_code"] = out.returncode
    return result


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_export_is_a_valid_bids_dataset_of_only_the_projects_files(site: Site, site_env: dict[str, str],
                                                                    tmp_path: Path) -> None:
    validator = bids_validator()  # fail early (under CI) if the validator is missing
    stored = populate(site)
    archive_before = snapshot(site.archive_root)
    dest = tmp_path / "export" / "study1"
    out = run(site_env, "export", "bids", "STUDY1", str(dest), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["participants"] == 2 and report["sessions"] == 3 and report["files"] == 7
    assert report["participants_without_data"] == 1 and report["sidecars_written"] == 1

    result = validate(dest)
    assert result["issues"]["errors"] == [] and result["exit_code"] == 0, result["issues"]["errors"]
    assert set(result["summary"]["subjects"]) == {"P01", "P02"}
    assert result["summary"]["tasks"] == ["rest"]

    # Exactly the project's recorded files, byte for byte, plus the dataset files the export writes.
    exported = snapshot(dest)
    for rel in stored.files["STUDY1"]:
        assert exported[rel] == archive_before[rel]
    assert not any(rel.startswith("sub-Q01") for rel in exported)
    generated = set(exported) - set(stored.files["STUDY1"])
    assert generated == {"dataset_description.json", "README", "CHANGES", "participants.tsv", "participants.json",
                         "sub-P01/sub-P01_sessions.tsv", "sub-P01/sub-P01_sessions.json",
                         "sub-P02/sub-P02_sessions.tsv", "sub-P02/sub-P02_sessions.json",
                         "sub-P02/ses-1/anat/sub-P02_ses-1_T1w.json"}
    sidecar = json.loads((dest / "sub-P02/ses-1/anat/sub-P02_ses-1_T1w.json").read_text())
    assert sidecar == {"RepetitionTime": 2.3, "EchoTime": 0.00298, "FlipAngle": 9, "Manufacturer": "Siemens",
                       "MagneticFieldStrength": 3}

    participants = read_tsv(dest / "participants.tsv")
    assert [p["participant_id"] for p in participants] == ["sub-P01", "sub-P02"]
    assert participants[0] == {"participant_id": "sub-P01", "sex": "F", "birth_year": "1980",
                                    "handedness": "R", "education_years": "16", "diagnosis": "F32",
                                    "first_episode": "yes", "medication": "none", "follow_up": "no"}
    assert set(json.loads((dest / "participants.json").read_text())) >= set(participants[0])
    assert read_tsv(dest / "sub-P01/sub-P01_sessions.tsv") == [{"session_id": "ses-1", "age": "44.5"},
                                                               {"session_id": "ses-2", "age": "45.5"}]
    description = json.loads((dest / "dataset_description.json").read_text())
    assert description["Name"] == "Study one" and description["DatasetType"] == "raw"
    assert snapshot(site.archive_root) == archive_before  # the archive was only read

    # The validator really checks: the same export with a BOLD sidecar that lacks its required fields fails.
    broken = tmp_path / "broken"
    shutil.copytree(dest, broken)
    (broken / "sub-P02/ses-1/func/sub-P02_ses-1_task-rest_bold.json").write_text("{}")
    keys = {e["key"] for e in validate(broken)["issues"]["errors"]}
    assert "REPETITION_TIME_MUST_DEFINE" in keys and validator


def test_export_refuses_a_non_empty_destination(site: Site, site_env: dict[str, str], tmp_path: Path) -> None:
    populate(site)
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    out = run(site_env, "export", "bids", "STUDY1", str(dest))
    assert out.returncode == 2 and "is not empty" in one_line_error(out)
    assert [p.name for p in dest.iterdir()] == ["notes.txt"] and (dest / "notes.txt").read_text() == "mine"
    inside = run(site_env, "export", "bids", "STUDY1", str(site.archive_root / "exports"))
    assert inside.returncode == 2 and "inside the archive root" in one_line_error(inside)
    assert not (site.archive_root / "exports").exists()


@pytest.mark.parametrize("code", ["../STUDY1", "/etc", "STUDY 1", "stüdy", "a_b"])
def test_export_rejects_non_bids_safe_project_codes(site: Site, site_env: dict[str, str], tmp_path: Path,
                                                    code: str) -> None:
    out = run(site_env, "export", "bids", code, str(tmp_path / "out"))
    assert out.returncode == 2 and "project code must be letters and digits only" in one_line_error(out)
    assert not (tmp_path / "out").exists()


def test_export_goes_through_the_permission_layer(site: Site, site_env: dict[str, str], tmp_path: Path) -> None:
    populate(site)
    with records.transaction(site) as db:
        grant(db, ADMIN, "STUDY1", "carl", "collaborator")
    out = run(site_env, "export", "bids", "OTHER1", str(tmp_path / "no"), "--as", "carl")
    assert out.returncode == 4 and one_line_error(out) == "error: project OTHER1 not found"
    assert not (tmp_path / "no").exists()
    with pytest.raises(NotFound):
        export_bids(site, Actor(user="nobody"), "STUDY1", tmp_path / "none")
    report = export_bids(site, Actor(user="carl"), "STUDY1", tmp_path / "yes")  # read is enough
    assert report.files == 7


def test_export_stops_on_a_file_changed_behind_the_archives_back(site: Site, site_env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    stored = populate(site)
    rel = stored.files["STUDY1"][-1]
    (site.archive_root / rel).write_bytes(b"changed")
    archive_before = snapshot(site.archive_root)
    dest = tmp_path / "out"
    out = run(site_env, "export", "bids", "STUDY1", str(dest))
    line = one_line_error(out)
    assert out.returncode == 2 and rel in line and "no longer matches its recorded SHA-256" in line
    assert not dest.exists()  # nothing half-exported is left
    assert snapshot(site.archive_root) == archive_before


def test_export_to_a_full_disk_is_one_line_and_leaves_nothing(site: Site, site_env: dict[str, str],
                                                              tmp_path: Path, mounts: Mounts) -> None:
    populate(site)
    archive_before = snapshot(site.archive_root)
    dest = mounts.tmpfs(tmp_path / "small", "16k")
    out = run(site_env, "export", "bids", "STUDY1", str(dest))
    assert out.returncode == 2 and "No space left on device" in one_line_error(out)
    assert list(dest.iterdir()) == []
    assert snapshot(site.archive_root) == archive_before
