"""Toy pipelines for the session-level dependency (``Stage.session_after``): a T1w-like stage and a BOLD-like
stage that reads the same session's T1w-like outputs, on the archived images of ``archive_data.populate``.
Workers import this module by ``PYTHONPATH`` (tests/ is put on it), as ``pipeline_toy``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from incloud_kernel.pipeline import JsonStage, Pipeline, StageInput


class T1Like(JsonStage):
    """The T1w's mean intensity; raises for the participant ``fail_on`` names."""

    name = "t1like"
    version = "1"
    datatypes = ("anat",)
    suffixes = ("T1w",)
    defaults = {"fail_on": ""}

    def measure(self, inputs: StageInput) -> Mapping[str, Any]:
        import nibabel as nib
        import numpy as np

        if inputs.participant == self.parameters["fail_on"]:
            raise RuntimeError("planned failure of the T1w-like stage")
        return {"t1_mean": float(np.asarray(nib.load(inputs.image).dataobj, dtype=float).mean())}


class BoldLike(JsonStage):
    """Records what it was handed of the session's T1w-like stage (the T1w mean, or nothing)."""

    name = "boldlike"
    version = "1"
    datatypes = ("func",)
    suffixes = ("bold",)
    session_after = (("t1like", "T1w"),)

    def measure(self, inputs: StageInput) -> Mapping[str, Any]:
        t1 = inputs.session_upstream.get("t1like", {})
        means = [json.loads(Path(p).read_text())["t1_mean"] for p in t1.values()]
        return {"session_upstream_stages": len(inputs.session_upstream), "t1_files": len(t1),
                "t1_mean": means[0] if means else -1.0}


SESSION = Pipeline("session", "1", [T1Like(), BoldLike()], requires_qc=False)
SESSION_FAILING = Pipeline("sessionfail", "1", [T1Like(fail_on="P02"), BoldLike()], requires_qc=False)

REFS = {"session": "pipeline_session_toy:SESSION", "sessionfail": "pipeline_session_toy:SESSION_FAILING"}
