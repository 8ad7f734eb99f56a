"""INCloud's Voila dashboards: one notebook each, registered in ``DASHBOARDS`` (one line per dashboard).

How they run (docs/dashboards.md): Voila inside the viewing user's own workstation, at
``/user/<name>/voila/render/INCloud/dashboards/<notebook>``. The hub authenticates the page, the kernel runs as the
user's own system account with the user's own hub token, so a dashboard can only see what its viewer may see
(``incloud_kernel.connect()``). Each workstation start copies these notebooks into ``~/INCloud/dashboards``
(:func:`install`). Standard library only: the workstation launcher imports this before the server starts.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

#: Where a workstation holds the dashboards, relative to its root folder (not hidden: Jupyter would refuse it).
FOLDER = "INCloud/dashboards"


@dataclass(frozen=True)
class Dashboard:
    """A registered dashboard: ``notebook`` in this folder, shown on the home page's ``module`` tile."""

    key: str
    title: str
    notebook: str
    module: str

    @property
    def render_path(self) -> str:
        """The path under the user's server (``/user/<name>/``) that renders it."""
        return f"voila/render/{FOLDER}/{self.notebook}"


#: Every dashboard. Adding one: put the notebook beside this file and add one line here.
DASHBOARDS: list[Dashboard] = [
    Dashboard("archive", "Open the archive browser", "archive.ipynb", module="archive"),
    Dashboard("qc", "Review QC", "qc_review.ipynb", module="qc"),
    Dashboard("reservation", "Book a scanner", "reservation.ipynb", module="reservation"),
    Dashboard("features", "Query the feature library", "feature_library.ipynb", module="features"),
    Dashboard("cads", "Open CADS reports", "cads_report.ipynb", module="reports"),
]


def install(root: Path) -> Path:
    """Copy every registered notebook into ``root/FOLDER`` (replacing older copies: dashboards are code the site
    ships, not the user's work; a user's own notebooks live elsewhere). Returns the folder."""
    target = Path(root) / FOLDER
    target.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    for dashboard in DASHBOARDS:
        shutil.copyfile(here / dashboard.notebook, target / dashboard.notebook)
    return target
