"""Computer-aided diagnosis (issue 17): normative deviations, a calibrated diagnostic classifier, versioned models,
and the individual report.

``normative`` (z-scores and centiles against healthy controls given age, sex and site), ``classifier`` (calibrated
probabilities, leave-site-out validation, out-of-distribution warnings), ``registry`` (versions, retraining and
promotion), ``report`` and ``render`` (the report as a dict and a PDF), ``data`` (reads the feature library
through its query API), ``synthetic`` (a cohort with planted patterns for validation). Permissions are decided by
``archive.permissions`` alone. Nothing here imports scikit-learn, pandas or matplotlib at package import.

From a notebook (the workstation's own token and rights)::

    import incloud_kernel, incloud_kernel.cads as cads
    client = incloud_kernel.connect()
    report = cads.fetch_report(client, 1234)    # the dict the dashboard shows
    cads.fetch_report_pdf(client, 1234, "r.pdf")  # the PDF for the clinical record
    cads.fetch_scans(client)                    # the scans whose report you may open
    cads.fetch_models(client)                   # model versions, metrics, decisions
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def fetch_report(client: Any, series: int, *, model: int | None = None, threshold: float | None = None) -> dict[str, Any]:
    """The CADS report of ``series`` through the API (``client = incloud_kernel.connect()``)."""
    params = {k: v for k, v in (("model", model), ("threshold", threshold)) if v is not None}
    return client._json(f"api/cads/report/{int(series)}", params)


def fetch_report_pdf(client: Any, series: int, dest: str | Path, *, model: int | None = None) -> Path:
    """Save the report's PDF to ``dest``."""
    params = {"model": model} if model is not None else None
    target = Path(dest)
    target.write_bytes(client._get(f"api/cads/report/{int(series)}/pdf", params).content)
    return target


def fetch_scans(client: Any) -> list[dict[str, Any]]:
    """The scans whose report you may open (series, pseudonym, project, session, QC)."""
    return list(client._json("api/cads/scans")["items"])


def fetch_models(client: Any) -> list[dict[str, Any]]:
    """Every model version with its metrics and retraining decision."""
    return list(client._json("api/cads/models")["items"])


__all__ = ["fetch_report", "fetch_report_pdf", "fetch_scans", "fetch_models"]
