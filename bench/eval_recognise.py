"""Face embeddings of skin renders with dlib's ResNet face recogniser (evaluation only, never in the product).

Weights ship in the ``face_recognition_models`` package (0.3.0: dlib's ResNet model, its 5-point shape
predictor and its CNN face detector); dlib itself comes from the ``dlib-bin`` wheel. Both are located on disk
without importing ``face_recognition_models`` (it imports the removed ``pkg_resources``). Nothing downloads.
A face the detectors miss is embedded from a known box instead (the planted landmarks projected into the
render), and :class:`Recogniser` counts how often that happened: renders of MRI skin are not photographs.
"""
from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np


def _model(name: str) -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("face_recognition_models is not installed (pip install face-recognition-models==0.3.0)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"face_recognition_models lacks {name}")
    return path


class Recogniser:
    """dlib's face pipeline: HOG detector (upsampled once), then the CNN (MMOD) detector, then the given box;
    5-point landmarks; 128-D ResNet embedding (same person below ~0.6 Euclidean distance on photographs)."""

    def __init__(self) -> None:
        import dlib

        self._dlib = dlib
        self.hog = dlib.get_frontal_face_detector()
        self.cnn = dlib.cnn_face_detection_model_v1(str(_model("mmod_human_face_detector.dat")))
        self.shape = dlib.shape_predictor(str(_model("shape_predictor_5_face_landmarks.dat")))
        self.net = dlib.face_recognition_model_v1(str(_model("dlib_face_recognition_resnet_model_v1.dat")))
        self.found: Counter[str] = Counter()

    def detect(self, rgb: np.ndarray) -> tuple[object | None, str]:
        """The most confident face rectangle and which detector found it (``hog``/``cnn``), or (None, ``none``)."""
        rects, scores, _ = self.hog.run(rgb, 1, 0.0)
        if len(rects):
            return rects[int(np.argmax(scores))], "hog"
        found = self.cnn(rgb, 0)  # renders are 320 px with the face ~250 px tall: no upsampling needed
        if len(found):
            best = max(found, key=lambda d: d.confidence)
            return best.rect, "cnn"
        return None, "none"

    def embed(self, rgb: np.ndarray, box: tuple[int, int, int, int], label: str = "") -> np.ndarray:
        """128-D embedding of the face in ``rgb`` (H x W x 3 uint8); ``box`` (left, top, right, bottom pixels)
        is used when no detector finds a face. Counts which way the face was found in ``found`` under
        ``label:how`` (how = hog, cnn or box)."""
        rect, how = self.detect(rgb)
        if rect is None:
            rect, how = self._dlib.rectangle(*[int(v) for v in box]), "box"
        self.found[f"{label}:{how}" if label else how] += 1
        shape = self.shape(rgb, rect)
        return np.asarray(self.net.compute_face_descriptor(rgb, shape), dtype=np.float64)


def match_rates(gallery: np.ndarray, probes: np.ndarray, probe_ids: np.ndarray, top: int = 5) -> dict[str, float]:
    """Rank-1 and top-``top`` identification rates: each probe embedding against the gallery (one row per
    identity, row index = identity), by Euclidean distance; ties count against the probe."""
    d = np.linalg.norm(probes[:, None, :] - gallery[None, :, :], axis=2)
    own = d[np.arange(len(probes)), probe_ids]
    rank = (d < own[:, None]).sum(1) + ((d == own[:, None]).sum(1) - 1)
    return {"rank1": float((rank == 0).mean()), f"top{top}": float((rank < top).mean()),
            "chance_rank1": 1.0 / len(gallery), f"chance_top{top}": min(1.0, top / len(gallery))}
