"""The "features" pipeline as the engine and the CLI see it: registered, its stages in graph order, BOLD and DWI
waiting for their session's T1w stage, and cheap to import (the API and every worker import pipelines)."""
from __future__ import annotations

import subprocess
import sys

from incloud_kernel.pipeline import pipeline as pipelines


def test_features_pipeline_is_registered_with_its_three_stages():
    pipe = pipelines.get("features")
    assert [s.name for s in pipe.stages][0] == "t1features"
    assert {s.name for s in pipe.stages} == {"t1features", "boldfeatures", "dwifeatures"}
    assert pipe.requires_qc, "features are computed only on series the QC gate lets through"
    for name in ("boldfeatures", "dwifeatures"):
        assert pipe.stage(name).session_after == (("t1features", "T1w"),)
    assert [s.name for s in pipe.stages_for("anat", "T1w")] == ["t1features"]
    assert [s.name for s in pipe.stages_for("func", "bold")] == ["boldfeatures"]
    assert [s.name for s in pipe.stages_for("dwi", "dwi")] == ["dwifeatures"]


def test_importing_the_pipeline_imports_no_heavy_library():
    code = ("import sys; from incloud_kernel.pipeline import pipeline as p; p.get('features'); "
            "heavy = [m for m in ('SimpleITK', 'dipy', 'nilearn', 'sklearn', 'scipy.ndimage') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing the features pipeline pulled in {out}"
