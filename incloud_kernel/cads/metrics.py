"""The four held-out metrics CADS validates and compares models by: balanced accuracy, AUC, Brier score, calibration error.

Multi-class throughout: AUC is the macro one-vs-rest average, the Brier score the mean over scans of the squared
distance between the probability vector and the one-hot truth (0 best, 2 worst), the calibration error the
expected calibration error of the top-label probability in ``bins`` equal-width bins (0 best). Must never drop a
class silently: a class missing from ``y_true`` is named in the result (its AUC is not defined).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

#: name -> True when larger is better.
HIGHER_IS_BETTER = {"balanced_accuracy": True, "auc": True, "brier": False, "calibration_error": False}


def calibration_error(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str], bins: int = 10) -> float:
    """Expected calibration error of the top-label probability (weighted mean |accuracy - confidence| per bin)."""
    top = proba.argmax(axis=1)
    confidence = proba[np.arange(len(proba)), top]
    correct = np.asarray(classes)[top] == np.asarray(y_true)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)


def evaluate(y_true: Sequence[str], proba: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """The four metrics of predictions ``proba`` (scans x ``classes``) against ``y_true``."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    y = np.asarray(y_true).astype(str)
    classes = [str(c) for c in classes]
    predicted = np.asarray(classes)[proba.argmax(axis=1)]
    onehot = (y[:, None] == np.asarray(classes)[None, :]).astype(float)
    present = [k for k, c in enumerate(classes) if onehot[:, k].any() and not onehot[:, k].all()]
    if len(present) == len(classes) and len(classes) > 2:
        auc = float(roc_auc_score(y, proba, labels=classes, multi_class="ovr", average="macro"))
    elif len(classes) == 2 and len(present) == 2:
        auc = float(roc_auc_score(onehot[:, 1], proba[:, 1]))
    else:
        auc = float(np.mean([roc_auc_score(onehot[:, k], proba[:, k]) for k in present])) if present else float("nan")
    return {"balanced_accuracy": float(balanced_accuracy_score(y, predicted)), "auc": auc,
            "brier": float(np.mean(np.sum((proba - onehot) ** 2, axis=1))),
            "calibration_error": calibration_error(y, proba, classes), "n": int(len(y)),
            "chance": 1.0 / len(classes)}


def not_worse(candidate: dict[str, float], current: dict[str, float], tolerance: float) -> list[str]:
    """The metrics on which ``candidate`` is worse than ``current`` by more than ``tolerance`` (empty: promote)."""
    worse = []
    for name, higher in HIGHER_IS_BETTER.items():
        a, b = candidate[name], current[name]
        if np.isnan(a) or (not np.isnan(b) and ((a < b - tolerance) if higher else (a > b + tolerance))):
            worse.append(name)
    return worse


__all__ = ["HIGHER_IS_BETTER", "calibration_error", "evaluate", "not_worse"]
