"""Stages on their own (no Dask): the base's contract, and the QC stage's call of ``incloud_kernel.qc.compute``
as the QC helper's package defines it (path, datatype, suffix, ``out_dir``, parameters -> dict of floats)."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

import incloud_kernel

from incloud_kernel.errors import ValidationError
from incloud_kernel.pipeline import Pipeline, StageInput
from incloud_kernel.pipeline.pipeline import QC
from incloud_kernel.pipeline.stage import QCStage


def _bold(tmp_path: Path) -> StageInput:
    image = tmp_path / "sub-P01_ses-1_task-rest_bold.nii.gz"
    image.write_bytes(b"not read by the stand-in")
    return StageInput(series_id=7, participant="P01", session="1", datatype="func", suffix="bold",
                      entities={"task": "rest"}, files={"nii.gz": image})


def test_the_qc_stage_calls_incloud_kernel_qc_lazily_and_keeps_its_tables(tmp_path, monkeypatch) -> None:  # type: ignore
    calls = []

    def compute(path, datatype, suffix, **params):  # type: ignore[no-untyped-def]
        calls.append((Path(path).name, datatype, suffix, sorted(params)))
        (params["out_dir"] / "sub-P01_ses-1_task-rest_desc-qc_timeseries.tsv").write_text("fd\tdvars\n0\t1\n")
        return {"tsnr": 41.5, "fd_mean": 0.12}

    fake = types.SimpleNamespace(compute=compute)
    monkeypatch.setitem(sys.modules, "incloud_kernel.qc", fake)
    monkeypatch.setattr(incloud_kernel, "qc", fake, raising=False)  # once imported, the package attribute wins
    out = tmp_path / "out"
    out.mkdir()
    outputs = QCStage().run(_bold(tmp_path), out)
    assert calls == [("sub-P01_ses-1_task-rest_bold.nii.gz", "func", "bold", ["out_dir"])]
    assert sorted(outputs) == ["func/sub-P01_ses-1_task-rest_desc-qc_timeseries.tsv",
                               "func/task-rest_desc-qc_bold.json"]
    assert json.loads(outputs["func/task-rest_desc-qc_bold.json"].read_text()) == {"fd_mean": 0.12, "tsnr": 41.5}


def test_the_qc_pipeline_takes_t1w_bold_and_dwi_without_a_qc_decision() -> None:
    assert QC.requires_qc is False
    assert [QC.stages_for(d, s) != [] for d, s in (("anat", "T1w"), ("func", "bold"), ("dwi", "dwi"),
                                                   ("anat", "FLAIR"), ("sourcedata", "T1w"))] == [
        True, True, True, False, False]


def test_bad_stages_and_graphs_are_refused_in_one_line() -> None:
    from pipeline_toy import BrainVolume, Summary

    with pytest.raises(ValidationError, match="unknown parameter"):
        BrainVolume(threshhold=2)
    with pytest.raises(ValidationError, match="must come after brainvol"):
        Pipeline("bad", "1", [Summary(), BrainVolume()])
    with pytest.raises(ValidationError, match="distinct"):
        Pipeline("bad", "1", [BrainVolume(), BrainVolume()])
    with pytest.raises(ValidationError, match="version"):
        Pipeline("bad", "1/2", [BrainVolume()])


def test_a_bad_compute_setting_is_one_line() -> None:
    from incloud_kernel.config import load_config
    from incloud_kernel.errors import ConfigError

    with pytest.raises(ConfigError, match="compute.backend must be one of local, slurm"):
        load_config(env={"INCLOUD_COMPUTE_BACKEND": "kubernetes", "INCLOUD_HOME": "/nonexistent"})
    with pytest.raises(ConfigError, match="max_attempts"):
        load_config(env={"INCLOUD_COMPUTE_MAX_ATTEMPTS": "0", "INCLOUD_HOME": "/nonexistent"})
    cfg = load_config(env={"INCLOUD_COMPUTE_PIPELINES": '{"mine": "site_pipes:MINE"}', "INCLOUD_HOME": "/x"})
    assert cfg.compute.pipelines == {"mine": "site_pipes:MINE"}
