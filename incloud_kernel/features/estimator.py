"""What every feature extractor shares: scikit-learn's parameter protocol and the seconds each step took.

``T1Features``, ``BoldFeatures`` and ``DwiFeatures`` take their parameters in ``__init__`` and store them
unchanged, so ``get_params``/``set_params`` can be read off the constructor's signature, as scikit-learn's
``BaseEstimator`` does. Importing scikit-learn costs about 2 s and the API imports the feature modules, so
this small base stands in for it. Must never import a heavy library.
"""
from __future__ import annotations

import inspect
import time
from typing import Any


class FeatureEstimator:
    """``get_params``/``set_params`` from the constructor's signature (scikit-learn's ``clone`` uses them)."""

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params: Any) -> Any:
        valid = self.get_params()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"unknown parameter {key!r} for {type(self).__name__}")
            setattr(self, key, value)
        return self


class StepClock:
    """Seconds per named step, for ``timings_`` (the benchmarks print them, the provenance keeps them)."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 3)
        self._last = now


__all__ = ["FeatureEstimator", "StepClock"]
