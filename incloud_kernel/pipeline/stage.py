"""One pipeline stage: the base every stage subclasses, and what a stage is handed (``StageInput``).

A stage names the archived series it takes by BIDS entities (datatype, suffix), carries a version and its
parameters, and turns one series (plus the outputs of the stages it follows) into files in a scratch folder;
the engine, not the stage, moves them into the archive as BIDS derivatives and records their provenance.
Variants are small subclasses that set class attributes and ``compute`` (as dask-jobqueue's clusters vary one
core). A stage must never write outside ``out_dir``, never touch the database, and never put a header value
into an output name or an exception message.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from incloud_kernel.errors import ValidationError

_NAME = re.compile(r"^[A-Za-z0-9]{1,64}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+]{0,31}$")
#: A derivative name holding long-format feature rows (``Stage.feature_tables``).
_FEATURE_TABLE = re.compile(r"(^|_)desc-features_[A-Za-z0-9]+\.tsv$")


@dataclass(frozen=True)
class StageInput:
    """One archived series as a stage sees it: BIDS names and absolute paths of its files.

    ``files`` maps an extension (``nii.gz``, ``json``, ``bval``...) to the file in the archive (read only);
    ``upstream`` maps an earlier stage's name to the files it produced for the same series;
    ``session_upstream`` maps an earlier stage named in the stage's ``session_after`` to the files it produced
    for another series of the same session (BOLD reads the session's T1w outputs), keyed by archive path. It is
    empty when the session has no such series in the run: the stage must cope (and say so in its outputs).
    """

    series_id: int
    participant: str
    session: str
    datatype: str
    suffix: str
    entities: Mapping[str, str]
    files: Mapping[str, Path]
    upstream: Mapping[str, Mapping[str, Path]] = field(default_factory=dict)
    session_upstream: Mapping[str, Mapping[str, Path]] = field(default_factory=dict)

    @property
    def image(self) -> Path:
        """The series' NIfTI image (``nii.gz`` or ``nii``); ValueError when it has none."""
        for ext in ("nii.gz", "nii"):
            if ext in self.files:
                return self.files[ext]
        raise ValueError(f"series #{self.series_id} has no NIfTI image")

    @property
    def label(self) -> str:
        """The BIDS entities after sub/ses, e.g. ``task-rest_bold`` (names outputs of this series uniquely)."""
        from incloud_kernel.archive.records import ENTITY_ORDER

        parts = [f"{k}-{self.entities[k]}" for k in ENTITY_ORDER if k in self.entities]
        return "_".join(parts + [self.suffix])


class Stage:
    """Base of every stage. Subclasses set ``name``, ``version``, ``datatypes``/``suffixes`` and ``compute``.

    ``parameters`` given to ``__init__`` override ``defaults`` and are stored unchanged (scikit-learn's rule):
    they are part of the provenance key, so changing one computes beside the old outputs, never over them.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    #: BIDS datatypes and suffixes of the series this stage takes (empty: any).
    datatypes: ClassVar[tuple[str, ...]] = ()
    suffixes: ClassVar[tuple[str, ...]] = ()
    #: Names of earlier stages of the same pipeline whose outputs for the same series this stage reads.
    after: ClassVar[tuple[str, ...]] = ()
    #: ``(stage name, suffix)`` pairs: earlier stages whose outputs for the same *session's* series of that suffix
    #: this stage reads (``StageInput.session_upstream``). The engine makes the task wait for that task (the
    #: session's lowest-id series of the suffix, when there are several) and fails it when that task fails, as
    #: for ``after``; a session without such a series in the run gives an empty mapping, not a wait.
    session_after: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: Distributions whose versions go into the provenance (python, numpy, nibabel and incloud always do).
    libraries: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: Seconds one series may take in this stage (0: no limit); None: the site's ``compute.task_timeout``.
    #: The site's ``compute.stage_timeouts`` overrides it. Not a parameter: it never changes an output.
    timeout: ClassVar[float | None] = None

    def __init__(self, **parameters: Any) -> None:
        unknown = set(parameters) - set(self.defaults)
        if unknown:
            raise ValidationError(f"stage {self.name}: unknown parameter(s) {', '.join(sorted(unknown))}")
        if not _NAME.fullmatch(self.name or ""):
            raise ValidationError(f"stage name must be 1-64 letters and digits, got {self.name!r}")
        if not _VERSION.fullmatch(self.version):
            raise ValidationError(f"stage {self.name}: version must be letters, digits, dots or + (at most 32)")
        self.parameters: dict[str, Any] = {**self.defaults, **parameters}
        json.dumps(self.parameters)  # parameters must be JSON (they are stored with every derivative)

    def takes(self, datatype: str, suffix: str) -> bool:
        """Whether a series of this datatype and suffix is an input of this stage."""
        return (not self.datatypes or datatype in self.datatypes) and (not self.suffixes or suffix in self.suffixes)

    def run(self, inputs: StageInput, out_dir: Path) -> dict[str, Path]:
        """Compute outputs for one series into ``out_dir``; returns ``{derivative name: path}``.

        The derivative name is where the file goes under the session folder of the pipeline's derivatives
        (``anat/desc-brainvol_T1w.json``); the engine prefixes ``sub-<p>_ses-<s>_``. Raises on failure (the
        engine keeps the exception's class and message as the input's error, and retries).
        """
        outputs = self.compute(inputs, out_dir)
        for name, path in outputs.items():
            if not Path(path).is_file() or Path(out_dir) not in Path(path).resolve().parents:
                raise ValueError(f"stage {self.name} returned {name} outside its output folder or missing")
        return outputs

    def compute(self, inputs: StageInput, out_dir: Path) -> dict[str, Path]:
        raise NotImplementedError

    def indices(self, outputs: Mapping[str, Path]) -> Mapping[str, float] | None:
        """QC indices held in this stage's ``outputs``, which the engine records in the QC gate (and its
        thresholds decide the series' QC state); None for a stage that computes no QC indices."""
        return None

    def feature_tables(self, outputs: Mapping[str, Path]) -> list[Path]:
        """The long-format feature tables (``features.rows.COLUMNS``) among this stage's ``outputs``, which the
        engine publishes to the feature library (``library.store.publish_tables``) when it records them: by
        convention every output named ``*_desc-features_<suffix>.tsv``. Most stages write none."""
        return [Path(outputs[n]) for n in sorted(outputs) if _FEATURE_TABLE.search(n.rsplit("/", 1)[-1])]

    # -- helpers for subclasses --------------------------------------------------------------------------------
    def output_name(self, inputs: StageInput, extension: str, desc: str | None = None) -> str:
        """A BIDS derivative name for this stage's output of ``inputs``: ``<datatype>/<entities>_desc-<desc>_
        <suffix>.<extension>`` (``desc`` defaults to the stage name)."""
        from incloud_kernel.archive.records import ENTITY_ORDER

        parts = [f"{k}-{inputs.entities[k]}" for k in ENTITY_ORDER if k in inputs.entities and k != "desc"]
        parts.append(f"desc-{desc or self.name}")
        return f"{inputs.datatype}/{'_'.join(parts)}_{inputs.suffix}.{extension}"

    def write_json(self, inputs: StageInput, out_dir: Path, values: Mapping[str, Any],
                   desc: str | None = None) -> dict[str, Path]:
        """Write ``values`` as this stage's JSON output of ``inputs``; returns ``{name: path}`` for ``run``."""
        name = self.output_name(inputs, "json", desc)
        path = Path(out_dir) / name.replace("/", "__")
        path.write_text(json.dumps(dict(values), indent=2, sort_keys=True))
        return {name: path}


def finite_numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric entries of ``values`` (an index that could not be computed is left out, not stored)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class JsonStage(Stage):
    """A stage whose output is one JSON of numbers per series: ``measure`` does the work (QC indices, volumes)."""

    def measure(self, inputs: StageInput) -> Mapping[str, Any]:
        raise NotImplementedError

    def compute(self, inputs: StageInput, out_dir: Path) -> dict[str, Path]:
        return self.write_json(inputs, out_dir, self.measure(inputs))


class QCStage(Stage):
    """MRIQC-style quality indices of one series through ``incloud_kernel.qc.compute`` (imported when run, so
    the engine works without the QC package installed): the indices as ``desc-qc`` JSON, plus any file the QC
    code writes into the stage's folder (BOLD's per-volume FD/DVARS table) as a derivative beside it."""

    name = "qc"
    version = "1"
    datatypes = ("anat", "func", "dwi")
    suffixes = ("T1w", "bold", "dwi")
    libraries = ("scipy", "SimpleITK")

    def compute(self, inputs: StageInput, out_dir: Path) -> dict[str, Path]:
        from incloud_kernel import qc

        values = qc.compute(inputs.image, inputs.datatype, inputs.suffix, out_dir=Path(out_dir), **self.parameters)
        outputs = self.write_json(inputs, out_dir, values)
        written = set(outputs.values())
        for extra in sorted(Path(out_dir).iterdir()):
            if extra not in written and extra.is_file():
                outputs[f"{inputs.datatype}/{extra.name}"] = extra
        return outputs


    def indices(self, outputs: Mapping[str, Path]) -> dict[str, float]:
        """The indices this stage wrote (its ``desc-qc`` JSON), for the engine to record in the QC gate."""
        names = [n for n in outputs if "desc-qc_" in n.rsplit("/", 1)[-1] and n.endswith(".json")]
        if len(names) != 1:
            raise ValueError("the QC stage must write exactly one desc-qc JSON")
        return finite_numbers(json.loads(Path(outputs[names[0]]).read_text()))


__all__ = ["Stage", "StageInput", "JsonStage", "QCStage", "finite_numbers"]
