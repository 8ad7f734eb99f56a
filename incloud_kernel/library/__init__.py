"""The brain feature library (issue 16): feature rows in partitioned Parquet, queried with DuckDB.

``store`` writes rows (the feature pipeline publishes them), ``query`` counts over all data and lists only what
the caller may list, ``sharing`` records feature grants, ``catalog`` writes per-user Intake catalogs and
``combat`` harmonises features across scanners. Permissions are decided by ``archive.permissions`` alone.
Nothing here imports DuckDB, pandas or pyarrow at module import (the API and workers import this package).
"""
from __future__ import annotations

from typing import Any


def features(site: Any, db: Any, actor: Any, **kwargs: Any) -> Any:
    """``(total_count, DataFrame)`` of a library query: see ``incloud_kernel.library.query.features``."""
    from incloud_kernel.library.query import features as run

    return run(site, db, actor, **kwargs)


__all__ = ["features"]
