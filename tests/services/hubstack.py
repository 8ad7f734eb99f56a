"""The real workstation hub harness (munge, Slurm, JupyterHub, proxy): ``bench/hubstack.py``, shared with the
benchmarks, which may not import tests/; tests reach it through this one module."""
from __future__ import annotations

import sys
from pathlib import Path

_BENCH = str(Path(__file__).resolve().parents[2] / "bench")
if _BENCH not in sys.path:
    sys.path.append(_BENCH)

from hubstack import PASSWORD, HubStack, HubUser, PgDatabases, free_port, slurm, spawn, wait_for  # noqa: E402

__all__ = ["PASSWORD", "HubStack", "HubUser", "PgDatabases", "free_port", "slurm", "spawn", "wait_for"]
