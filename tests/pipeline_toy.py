"""Toy pipelines for the engine tests: real stages on the archived NIfTI images of ``archive_data.populate``.

``brainvol`` measures a brain-volume-like number (mL of voxels above the image mean) and raises for the
participant ``fail_on`` names; ``summary`` follows ``brainvol`` (a two-stage graph). With ``pause`` > 0 a stage
writes ``<series>.<pid>.<slurm job>`` into ``$INCLOUD_TEST_PAUSE_DIR`` when it starts and then waits ``pause``
seconds, so a test can kill the very worker (or Slurm job) that is computing. Workers import this module by ``PYTHONPATH`` (tests/ is put on it).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

from incloud_kernel.pipeline import JsonStage, Pipeline, StageInput


class BrainVolume(JsonStage):
    name = "brainvol"
    version = "1"
    datatypes = ("anat",)
    suffixes = ("T1w",)
    libraries = ("nibabel",)
    defaults = {"fail_on": "", "pause": 0.0, "threshold": 1.0}

    def measure(self, inputs: StageInput) -> Mapping[str, Any]:
        import nibabel as nib
        import numpy as np

        if self.parameters["pause"]:
            marker = Path(os.environ["INCLOUD_TEST_PAUSE_DIR"]) / (
                f"{inputs.series_id}.{os.getpid()}.{os.environ.get('SLURM_JOB_ID', '-')}")
            marker.write_text("started")
            time.sleep(self.parameters["pause"])
        if inputs.participant == self.parameters["fail_on"]:
            raise RuntimeError("planned failure of this toy stage")
        img = nib.load(inputs.image)
        data = np.asarray(img.dataobj, dtype=float)
        voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
        inside = data > self.parameters["threshold"] * data.mean()
        return {"brain_volume_ml": float(inside.sum() * voxel_ml), "voxels": int(inside.sum())}


class Summary(JsonStage):
    """Reads brainvol's output of the same series (the graph's second stage)."""

    name = "summary"
    version = "1"
    datatypes = ("anat",)
    suffixes = ("T1w",)
    after = ("brainvol",)

    def measure(self, inputs: StageInput) -> Mapping[str, Any]:
        (path,) = inputs.upstream["brainvol"].values()
        volume = json.loads(Path(path).read_text())["brain_volume_ml"]
        return {"brain_volume_l": volume / 1000.0}


class Sleeper(BrainVolume):
    """``brainvol`` that sleeps ``sleep`` s for the participant ``sleep_on`` only, with a stage time limit of its
    own (``timeout``): the per-task time limit's test, where one input overruns and the others finish."""

    defaults = {**BrainVolume.defaults, "sleep_on": "", "sleep": 0.0}
    timeout = 3.0

    def measure(self, inputs: StageInput) -> Mapping[str, Any]:
        if inputs.participant == self.parameters["sleep_on"]:
            time.sleep(self.parameters["sleep"])
        return super().measure(inputs)


def toy(version: str = "1", requires_qc: bool = False, **parameters: Any) -> Pipeline:
    return Pipeline("toy", version, [BrainVolume(**parameters), Summary()], requires_qc=requires_qc,
                    description="Engine test pipeline")


TOY = toy()
TOY2 = toy("2")
TOY_QC = Pipeline("toyqc", "1", [BrainVolume()], requires_qc=True)
FAILING = Pipeline("failing", "1", [BrainVolume(fail_on="P01"), Summary()], requires_qc=False)
SLOW = Pipeline("slow", "1", [BrainVolume(pause=2.0)], requires_qc=False)
#: Runs long enough to be watched (its dashboard opened) and is then cancelled.
LINGER = Pipeline("linger", "1", [BrainVolume(pause=300.0)], requires_qc=False)
#: P01's input sleeps past the stage's 3 s limit; the others finish.
TIMED = Pipeline("timed", "1", [Sleeper(sleep_on="P01", sleep=600.0), Summary()], requires_qc=False)

#: What the tests put into ``INCLOUD_COMPUTE_PIPELINES`` (the site's own pipelines).
REFS = {"toy": "pipeline_toy:TOY", "toy2": "pipeline_toy:TOY2", "toyqc": "pipeline_toy:TOY_QC",
        "failing": "pipeline_toy:FAILING", "slow": "pipeline_toy:SLOW",
        "linger": "pipeline_toy:LINGER", "timed": "pipeline_toy:TIMED"}
