"""``archive.storage``: BIDS-safe relative paths only, and atomic writes that a reader never sees half done,
even when the writer is killed, the disk is full or the root is read-only."""
from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from incloud_kernel.archive.storage import (
    TMP_PREFIX,
    atomic_write,
    check_label,
    ensure_dataset,
    safe_relpath,
    sha256_file,
)
from incloud_kernel.errors import IncloudError, StorageError, ValidationError
from test_integrity import Mounts, mounts  # noqa: F401 - fixture re-export


@pytest.mark.parametrize("path", ["../x", "sub-01/../../x", "/etc/passwd", "\\\\server\\share", "C:/x",
                                  "sub-01\\x.nii", "sub 01/x.nii", "sub-01/.hidden", "",
                                  "sub-01/x;rm.nii", "sub-01/ü.nii"])
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(ValidationError) as err:
        safe_relpath(path)
    assert "\n" not in str(err.value)


def test_bids_paths_are_accepted() -> None:
    rel = "sub-01/ses-1/anat/sub-01_ses-1_acq-mp2rage_T1w.nii.gz"
    assert str(safe_relpath(rel)) == rel


@pytest.mark.parametrize("label", ["01", "P001", "baseline"])
def test_labels_letters_and_digits(label: str) -> None:
    assert check_label(label) == label


@pytest.mark.parametrize("label", ["", "a-b", "a_b", "a b", "../a", "a/b", "a.b", "é"])
def test_non_bids_safe_labels_are_refused(label: str) -> None:
    with pytest.raises(ValidationError):
        check_label(label, "participant label")


def test_atomic_write_returns_sha256_and_size_and_never_overwrites(tmp_path: Path) -> None:
    data = b"\x01" * 3_000_000  # several chunks
    sha, size = atomic_write(tmp_path, "sub-01/anat/sub-01_T1w.nii.gz", data)
    target = tmp_path / "sub-01/anat/sub-01_T1w.nii.gz"
    assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data)) and sha256_file(target) == sha
    with pytest.raises(ValidationError, match="already exists"):
        atomic_write(tmp_path, "sub-01/anat/sub-01_T1w.nii.gz", b"other")
    assert target.read_bytes() == data
    atomic_write(tmp_path, "sub-01/anat/sub-01_T1w.nii.gz", b"new", overwrite=True)
    assert target.read_bytes() == b"new"
    assert not list(tmp_path.rglob(f"{TMP_PREFIX}*"))


def test_atomic_write_streams_from_a_path_and_a_file_object(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"abc" * 1000)
    root = tmp_path / "root"
    assert atomic_write(root, "a.bin", source)[1] == 3000
    with open(source, "rb") as fh:
        assert atomic_write(root, "b.bin", fh)[0] == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_ensure_dataset_makes_a_bids_root_and_keeps_what_exists(tmp_path: Path) -> None:
    ensure_dataset(tmp_path, name="Test")
    description = json.loads((tmp_path / "dataset_description.json").read_text())
    assert description["Name"] == "Test" and description["BIDSVersion"]
    (tmp_path / "participants.tsv").write_text("participant_id\nsub-01\n")
    ensure_dataset(tmp_path, name="Other")
    assert (tmp_path / "participants.tsv").read_text() == "participant_id\nsub-01\n"
    assert json.loads((tmp_path / "dataset_description.json").read_text())["Name"] == "Test"


WRITER = r'''
import sys, time
from pathlib import Path
from incloud_kernel.archive.storage import atomic_write

class Stalling:
    def __init__(self):
        self.calls = 0
    def read(self, n):
        self.calls += 1
        if self.calls <= 4:
            return bytes([self.calls]) * n
        print("mid-write", flush=True)
        time.sleep(3600)

root = Path(sys.argv[1])
for i in range(20):
    atomic_write(root, f"sub-01/anat/sub-01_run-{i}_T1w.nii.gz", bytes([i]) * 2_000_000)
print("written", flush=True)
atomic_write(root, "sub-01/anat/sub-01_run-99_T1w.nii.gz", Stalling())
'''


def test_a_writer_killed_mid_write_leaves_no_file_under_the_final_name(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"  # type: ignore[union-attr]
        assert proc.stdout.readline().strip() == "mid-write"  # type: ignore[union-attr]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    folder = tmp_path / "sub-01" / "anat"
    assert not (folder / "sub-01_run-99_T1w.nii.gz").exists()
    temps = list(folder.glob(f"{TMP_PREFIX}*"))
    assert len(temps) == 1 and temps[0].stat().st_size > 0  # the half file exists only under its temp name
    for i in range(20):
        assert (folder / f"sub-01_run-{i}_T1w.nii.gz").read_bytes() == bytes([i]) * 2_000_000


def test_a_full_root_is_one_storage_error_and_leaves_nothing(tmp_path: Path, mounts: Mounts) -> None:
    root = mounts.tmpfs(tmp_path / "small", "256k")
    atomic_write(root, "sub-01/a.bin", b"kept" * 1000)
    with pytest.raises(StorageError) as err:
        atomic_write(root, "sub-01/b.bin", b"\0" * 1_000_000)
    assert "No space left on device" in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in (root / "sub-01").iterdir()) == ["a.bin"]
    assert (root / "sub-01/a.bin").read_bytes() == b"kept" * 1000


def test_a_read_only_root_is_one_storage_error(tmp_path: Path, mounts: Mounts) -> None:
    root = tmp_path / "ro"
    atomic_write(root, "sub-01/a.bin", b"kept")
    mounts.read_only(root)
    with pytest.raises(IncloudError) as err:  # must not escape as a bare OSError
        atomic_write(root, "sub-01/b.bin", b"new")
    assert isinstance(err.value, StorageError) and "Read-only file system" in str(err.value)
    assert (root / "sub-01/a.bin").read_bytes() == b"kept" and not (root / "sub-01/b.bin").exists()
