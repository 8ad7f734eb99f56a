"""A pipeline: a versioned graph of stages over a project's archived series, and the site's registry of them.

The graph is given by each stage's ``after`` (names of earlier stages whose outputs it reads for the same
series) and ``session_after`` (earlier stages it reads on another series of the same session); it must be acyclic and name only stages of the pipeline. The registry maps a name to an importable
``module:attribute`` so that a Dask worker on another node imports the very same definition the run names.
Must never hold state about runs (that is ``runs``) and never import a stage's heavy libraries at import time.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Iterable

from incloud_kernel.errors import NotFound, ValidationError
from incloud_kernel.pipeline.stage import _NAME, _VERSION, QCStage, Stage


@dataclass
class Pipeline:
    """Stages in an order that respects ``after``; ``version`` names the derivatives folder
    (``derivatives/<name>-<version>/``), so a new version computes beside the old one.

    ``requires_qc``: take only series whose QC state the project accepts for processing (the QC gate's
    ``accepted_states``: the owners' choice, else the site's ``qc.usable``); the QC pipeline itself is False.
    """

    name: str
    version: str
    stages: list[Stage]
    description: str = ""
    requires_qc: bool = True
    ref: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValidationError(f"pipeline name must be 1-64 letters and digits, got {self.name!r}")
        if not _VERSION.fullmatch(self.version):
            raise ValidationError(f"pipeline {self.name}: version must be letters, digits, dots or + (at most 32)")
        names = [s.name for s in self.stages]
        if not names or len(set(names)) != len(names):
            raise ValidationError(f"pipeline {self.name}: stages must be at least one, with distinct names")
        seen: set[str] = set()
        for stage in self.stages:
            for dep in (*stage.after, *(name for name, _suffix in stage.session_after)):
                if dep not in names:
                    raise ValidationError(f"pipeline {self.name}: stage {stage.name} follows unknown stage {dep}")
                if dep not in seen:
                    raise ValidationError(f"pipeline {self.name}: stage {stage.name} must come after {dep}")
            seen.add(stage.name)

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise NotFound(f"pipeline {self.name} has no stage {name}")

    def stages_for(self, datatype: str, suffix: str) -> list[Stage]:
        """The stages that take a series of this datatype and suffix (in graph order)."""
        return [s for s in self.stages if s.takes(datatype, suffix)]


#: The site's pipelines: name -> ``module:attribute`` of a ``Pipeline``.
REGISTRY: dict[str, str] = {
    "qc": "incloud_kernel.pipeline.pipeline:QC",
    "features": "incloud_kernel.features.pipeline:FEATURES",
}

QC = Pipeline("qc", "1", [QCStage()], requires_qc=False,
              description="MRIQC-style quality indices of every T1w, BOLD and DWI series (incloud_kernel.qc).")


def register(ref: str, name: str | None = None) -> Pipeline:
    """Add the pipeline at ``module:attribute`` to the registry (under its own name); returns it."""
    pipeline = load(ref)
    REGISTRY[name or pipeline.name] = ref
    return pipeline


def load(ref: str) -> Pipeline:
    """Import a pipeline by ``module:attribute``; NotFound when there is none there."""
    module_name, _, attr = ref.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        raise NotFound(f"no pipeline at {ref}") from None
    if not isinstance(obj, Pipeline):
        raise NotFound(f"{ref} is not a pipeline")
    obj.ref = ref
    return obj


def known() -> dict[str, str]:
    """Built-in and registered pipelines plus the site's (``compute.pipelines``): name -> reference."""
    from incloud_kernel.config import get_config

    return {**REGISTRY, **get_config().compute.pipelines}


def get(name: str) -> Pipeline:
    """A known pipeline by name (NotFound lists the known ones)."""
    refs = known()
    if name not in refs:
        raise NotFound(f"unknown pipeline {name!r} (known: {', '.join(sorted(refs))})")
    return load(refs[name])


def available() -> Iterable[Pipeline]:
    """Every known pipeline (imports their modules, not their stages' libraries)."""
    return [get(name) for name in sorted(known())]


__all__ = ["Pipeline", "REGISTRY", "QC", "register", "load", "known", "get", "available"]
