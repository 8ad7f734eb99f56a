"""Example notebooks every new workstation holds (``~/INCloud/examples``), run on the demo data (project DEMO).

They reach the archive only through ``incloud_kernel.connect()`` (the user's own token); they never read archive
files from the workstation's disk. Copied once: after that they are the user's, edits included (a later start
adds only notebooks the user does not have yet). Standard library only: the workstation launcher imports this.
"""
from __future__ import annotations

import shutil
from pathlib import Path

#: Where a workstation holds them, relative to its root folder.
FOLDER = "INCloud/examples"

#: The notebooks, in reading order.
NOTEBOOKS = ["01-getting-started.ipynb", "02-archive-and-images.ipynb", "03-running-a-pipeline.ipynb",
             "04-feature-library.ipynb", "05-cads-report.ipynb"]


def path(name: str) -> Path:
    """The shipped copy of one example notebook."""
    return Path(__file__).resolve().parent / name


def install(root: Path) -> Path:
    """Copy the notebooks the user does not have yet into ``root/FOLDER``; returns the folder."""
    target = Path(root) / FOLDER
    target.mkdir(parents=True, exist_ok=True)
    for name in NOTEBOOKS:
        if not (target / name).exists():
            shutil.copyfile(path(name), target / name)
    return target
