"""Real BOLD and DWI data shipped inside installed packages (``bench/eval_real_inputs.py`` lists them and why)
go through the feature stages: they run and leave their QC pictures, or are refused in one line. The T1w heads
are run by ``tests/test_features_t1.py::test_every_real_head_runs_through``; the whole set with every picture by
the bench script."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from eval_real_inputs import _run, bold_jobs, dwi_jobs  # noqa: E402

JOBS = dict(bold_jobs() + dwi_jobs())
EXPECTED = {
    "bold-example4d": "ValidationError: BOLD run has 2 volumes",  # two volumes: no spectrum to measure
    "bold-ds003_mc": "ok",
    "dwi-small_101D": "ok",
    "dwi-small_25": "ok",
}


@pytest.mark.parametrize("label", sorted(EXPECTED))
def test_packaged_real_input_runs_or_is_refused_in_one_line(label: str, tmp_path: Path) -> None:
    if label not in JOBS:
        pytest.fail(f"{label}: its package's data file is not installed")
    result = _run(label, tmp_path, JOBS[label])
    assert result["outcome"].startswith(EXPECTED[label]), result
    if result["outcome"] == "ok":
        assert result["pictures"], "a run that succeeds leaves QC pictures for the reviewer"
        for name in result["pictures"]:
            assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    else:
        assert result["one_line"]
