"""Synthetic clinical cohort generator: realistic DICOM studies with planted identities and known ground truth.

Public API: ``make_study``, ``make_cohort``, ``StudyTruth``, ``SeriesTruth``, ``Cohort``, ``make_sites``, ``Site``.
Imports are lazy so ``import incloud_kernel.synth`` stays cheap.
"""
from __future__ import annotations

from typing import Any

__all__ = ["make_study", "make_cohort", "StudyTruth", "SeriesTruth", "Cohort", "make_sites", "Site", "REGIONS"]


def __getattr__(name: str) -> Any:
    if name in ("make_study", "make_cohort", "StudyTruth", "SeriesTruth", "Cohort"):
        from incloud_kernel.synth import cohort

        return getattr(cohort, name)
    if name in ("make_sites", "Site"):
        from incloud_kernel.synth import sites

        return getattr(sites, name)
    if name == "REGIONS":
        from incloud_kernel.synth.anatomy import REGIONS

        return REGIONS
    raise AttributeError(name)
