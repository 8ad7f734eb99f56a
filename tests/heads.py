"""Heads with known anatomy for the refacing tests: ``bench/template_heads.py``, shared with the benchmarks.

The head maker lives in bench/ because the benchmarks may not import tests/ and the product may import neither;
tests may import bench/, through this one module.
"""
from __future__ import annotations

import sys
from pathlib import Path

_BENCH = str(Path(__file__).resolve().parents[1] / "bench")
if _BENCH not in sys.path:
    sys.path.append(_BENCH)

from t1_heads import real_heads  # noqa: E402  (bench/t1_heads.py: real heads installed here)
from template_heads import TestHead, make_head  # noqa: E402  (bench/template_heads.py)

__all__ = ["TestHead", "make_head", "real_heads"]
