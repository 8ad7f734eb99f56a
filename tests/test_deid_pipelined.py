"""One-process batches overlap each file's kernel copy of its pixel data with the next file's header work.

The overlap must change nothing but speed: the same bytes as a batch of one file each, results in input order, a
write that fails late (after the copy was handed to the helper thread) quarantined with its reason while the
batch goes on, and no temporary file left behind. Input: the 22 MiB Philips enhanced MR that nibabel ships
(independent data, large enough that pixel data stays deferred and is copied file to file by the kernel).
"""
from __future__ import annotations

import gzip
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel
import pydicom
import pytest

from incloud_kernel.deid import DeidContext
from incloud_kernel.deid.runner import enumerate_jobs, run_batch
from incloud_kernel.dicom import part10
from incloud_kernel.quarantine import Quarantine
from test_deid import KEY

ENHANCED_GZ = Path(nibabel.__file__).parent / "nicom" / "tests" / "data" / "philips_mprage.dcm.gz"


@pytest.fixture(scope="module")
def enhanced_series(tmp_path_factory) -> list[Path]:
    """Three distinct instances (own SOP and Series Instance UIDs) of the enhanced MR."""
    folder = tmp_path_factory.mktemp("enhanced")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(gzip.open(ENHANCED_GZ))
    paths = []
    for i in range(3):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.91.{i + 1}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.92.{i + 1}"
        paths.append(folder / f"enhanced{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    assert paths[0].stat().st_size > 16 * 2**20  # read through a memory map, pixel data deferred
    return paths


def _outputs(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_overlapped_batch_writes_what_batches_of_one_file_write(enhanced_series, tmp_path):
    ctx = DeidContext(key=KEY, allow_burned_in=True)
    order: list[str] = []
    summary = run_batch(enumerate_jobs(enhanced_series), ctx, tmp_path / "batch", tmp_path / "q",
                        on_result=lambda r: order.append(Path(r.job.path).name))
    assert summary.done == 3 and not summary.quarantined
    assert order == [p.name for p in enhanced_series]  # input order, although writes finish later
    for path in enhanced_series:
        assert run_batch(enumerate_jobs([path]), ctx, tmp_path / "single", tmp_path / "q").done == 1
    batch, single = _outputs(tmp_path / "batch"), _outputs(tmp_path / "single")
    assert len(batch) == 3 and batch == single
    frames = pydicom.dcmread(tmp_path / "batch" / next(iter(batch)))
    assert len(frames.PixelData) == int(frames.NumberOfFrames) * frames.Rows * frames.Columns * 2


def test_a_write_that_fails_after_the_copy_is_quarantined_and_the_batch_goes_on(enhanced_series, tmp_path):
    ctx = DeidContext(key=KEY, allow_burned_in=True)
    assert run_batch(enumerate_jobs(enhanced_series[1:2]), ctx, tmp_path / "probe", tmp_path / "q0").done == 1
    (rel,) = _outputs(tmp_path / "probe")
    (tmp_path / "out" / rel).mkdir(parents=True)  # the final name is taken by a folder: the rename must fail
    results = []
    summary = run_batch(enumerate_jobs(enhanced_series), ctx, tmp_path / "out", tmp_path / "q",
                        on_result=results.append)
    assert (summary.done, summary.quarantined) == (2, 1)
    assert [r.status for r in results] == ["done", "quarantined", "done"]
    assert results[1].reason == "error:IsADirectoryError"
    (entry,) = Quarantine(tmp_path / "q").entries()
    assert entry.reason == "error:IsADirectoryError"
    assert not [p for p in (tmp_path / "out").rglob("*.tmp*")]  # the partial file is gone


def test_start_write_reports_a_short_source_at_finish(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"x" * (2 * part10.BACKGROUND_COPY))
    with ThreadPoolExecutor(1) as background:
        finish = part10.start_write(tmp_path / "ok.bin", [b"head", part10.FileRange(str(source), 10, part10.BACKGROUND_COPY), b"tail"],
                                    background=background)
        finish()
        short = part10.start_write(tmp_path / "short.bin", [part10.FileRange(str(source), part10.BACKGROUND_COPY * 2 - 5, part10.BACKGROUND_COPY)],
                                   background=background)
        with pytest.raises(OSError):
            short()
    assert (tmp_path / "ok.bin").read_bytes() == b"head" + b"x" * part10.BACKGROUND_COPY + b"tail"


def test_the_same_instance_twice_in_one_batch_is_written_once_and_both_are_done(enhanced_series, tmp_path):
    """Two inputs with one output name (a study sent twice): each write in flight has its own temporary name."""
    twice = tmp_path / "twice"
    twice.mkdir()
    for name in ("a.dcm", "b.dcm"):
        (twice / name).write_bytes(enhanced_series[0].read_bytes())
    summary = run_batch(enumerate_jobs([twice]), DeidContext(key=KEY, allow_burned_in=True), tmp_path / "out",
                        tmp_path / "q")
    assert (summary.done, summary.quarantined) == (2, 0)
    assert len(_outputs(tmp_path / "out")) == 1
