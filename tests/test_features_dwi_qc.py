"""The DWI stage's QC pictures (``features.dwi_qc``): written by the stage beside its rows, in MNI space with
the tract outlines and the b=0 registration, and a per-volume correction plot whose numbers are the fitted
transforms' rotation and stretch."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from incloud_kernel.features import dwi_qc
from incloud_kernel.features.dwi import DwiStage
from incloud_kernel.pipeline.stage import StageInput

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from qc_inputs import synth_dwi  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def test_label_edges_outline_each_label_in_plane() -> None:
    labels = np.zeros((9, 9, 3), np.int16)
    labels[2:7, 2:7, :] = 4
    labels[4, 4, :] = 7
    edges = dwi_qc.label_edges(labels)
    assert edges[2, 4, 1] == 4 and edges[4, 4, 1] == 7  # border of 4; 7 is all border
    assert edges[3, 3, 1] == 0  # inside label 4, no neighbour differs in-plane
    assert edges[0, 0, 1] == 0 and set(np.unique(edges)) == {0, 4, 7}


def test_transform_parts_read_rotation_and_stretch() -> None:
    import SimpleITK as sitk

    rot = sitk.Euler3DTransform((0, 0, 0), 0.0, 0.0, np.radians(5.0))
    m = np.eye(4)
    m[:3, :3] = np.array(rot.GetMatrix()).reshape(3, 3) @ np.diag([1.0, 1.03, 1.0])
    angles, stretch = dwi_qc.transform_parts(np.stack([np.eye(4), m]))
    assert angles == pytest.approx([0.0, 5.0], abs=1e-6)
    assert stretch == pytest.approx([0.0, 3.0], abs=1e-6)


def test_stage_writes_the_review_pictures(tmp_path: Path) -> None:
    from PIL import Image

    path = synth_dwi(tmp_path, seed=5, directions=12)
    files = {"nii.gz": path, "bval": path.with_name(path.name.replace(".nii.gz", ".bval")),
             "bvec": path.with_name(path.name.replace(".nii.gz", ".bvec"))}
    inputs = StageInput(series_id=4, participant="P01", session="1", datatype="dwi", suffix="dwi",
                        entities={"acq": "b1000"}, files=files)
    out = tmp_path / "out"
    out.mkdir()
    outputs = DwiStage().run(inputs, out)
    for kind in ("tracts", "registration", "motion"):
        png = outputs[f"dwi/acq-b1000_desc-{kind}_dwi.png"]
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 15_000
        pixels = np.asarray(Image.open(png).convert("RGB"), float)
        assert pixels.std() > 20  # drawn, not blank
    tracts = np.asarray(Image.open(outputs["dwi/acq-b1000_desc-tracts_dwi.png"]).convert("RGB"), int)
    coloured = (np.ptp(tracts, axis=2) > 60).sum()  # the tract outlines: grey FA has r == g == b
    assert coloured > 2_000
    registration = np.asarray(Image.open(outputs["dwi/acq-b1000_desc-registration_dwi.png"]).convert("RGB"), int)
    red = (registration[..., 0] > 180) & (registration[..., 1] < 80) & (registration[..., 2] < 80)
    assert red.sum() > 300  # the template's brain outline
