"""Feature extraction (issue 15): regional features per atlas region from T1w, BOLD and DWI series.

Modules: ``atlases`` (offline atlases from installed packages), ``rows`` (regional values and the long-format
feature table), ``t1``/``bold``/``dwi`` (scikit-learn-style extractors and their pipeline stages) and
``pipeline`` (the registered "features" pipeline); ``catalog()`` opens the user's Intake catalog of the feature
library (``incloud_kernel.library.catalog``). Importing this package must stay cheap: no heavy library
(nilearn, SimpleITK, dipy, scipy) is imported at module import, only inside functions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def catalog(client: Any = None, folder: str | Path | None = None) -> Any:
    """The Intake catalog of the feature-library tables you may read, synced now (``~/.incloud/catalog``, yours
    only, 0700): ``cat = catalog(); cat.P1_features_v1.read()`` (pandas; project P1, pipeline features, version 1),
    ``cat["P1_features_v1_dask"]``, ``..._duckdb``. Tables whose grant expired or was revoked are deleted from the folder. ``client`` defaults to
    ``incloud_kernel.connect()`` (the workstation's token); see ``incloud_kernel.library.catalog``."""
    from incloud_kernel.library.catalog import from_api

    if client is None:
        from incloud_kernel import connect

        client = connect()
    return from_api(client, Path(folder) if folder is not None else None)


__all__ = ["catalog"]
