"""The real workstation hub harness (munge, Slurm, JupyterHub, proxy): ``bench/hubstack.py``, shared with the
benchmarks, which may not import tests/; tests reach it through this one module."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_BENCH = str(Path(__file__).resolve().parents[2] / "bench")
if _BENCH not in sys.path:
    sys.path.append(_BENCH)

from hubstack import PASSWORD, HubStack, HubUser, PgDatabases, free_port, slurm, spawn, wait_for  # noqa: E402


def require_hub_stack() -> str:
    """What a HubStack needs here (root, Slurm and munge, PostgreSQL, the proxy), or ``conftest.missing`` (a
    skip, a failure under CI=true); returns the PostgreSQL server URL the stack makes its databases on."""
    from conftest import missing, require_tool
    from hub.spawners import proxy_command

    if os.geteuid() != 0:
        missing("the Slurm hub test needs root (useradd, munge, slurmd)")
    for tool in ("slurmctld", "slurmd", "munged", "sbatch", "useradd", "runuser"):
        require_tool(tool)
    base = os.environ.get("INCLOUD_TEST_POSTGRES_URL")
    if not base:
        missing("INCLOUD_TEST_POSTGRES_URL not set (run the suite through scripts/test.sh)")
    if not shutil.which(proxy_command()):
        missing("configurable-http-proxy not installed (scripts/lib/install.sh ensure_node_tools)")
    return str(base)


@contextmanager
def started_stack() -> Iterator[HubStack]:
    """A started hub stack, closed and removed afterwards. Its folder is under the suite's work folder, not
    pytest's private 0700 tmp: the Slurm daemons and the users' jobs must traverse it."""
    base = require_hub_stack()
    work = Path(tempfile.mkdtemp(prefix="incloud-hub-", dir=os.environ.get("INCLOUD_TEST_WORK") or "/tmp"))
    stack = HubStack(work, base)
    try:
        stack.start()
        yield stack
    finally:
        stack.close()
        shutil.rmtree(work, ignore_errors=True)


__all__ = ["PASSWORD", "HubStack", "HubUser", "PgDatabases", "free_port", "require_hub_stack", "slurm", "spawn",
           "started_stack", "wait_for"]
