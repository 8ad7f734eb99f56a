"""The feature library's storage: feature rows in hive-partitioned Parquet, joined with scan and participant attributes.

Layout under the library root (``library.root``, default ``$INCLOUD_HOME/library``, 0700 like every root)::

    scans/project=CODE/pipeline=NAME/version=V/series-<id>.parquet   one row per scan: its attributes
    values/project=CODE/pipeline=NAME/version=V/series-<id>.parquet  long rows: series, atlas, region, feature, value

``publish`` (called by the feature pipeline with a stage's long-format rows) writes both files of one series
atomically (a temporary file in the same folder, then ``os.replace``); ``compact`` merges a partition's small files
into one ``part-*.parquet`` sorted for the queries (values by atlas, feature, series, region). Attributes are
stored once per scan, not once per value, so a count never reads the values.

What a scan row holds (pseudonymous only, never an identity): the participant's and session's labels, sex, age at
scan (years), handedness, diagnosis category codes, first episode, medication, follow-up, the scanner, the series'
QC state and which feature sets it has. The birth date and birth year are never copied (age at scan answers age
questions); scan dates are not copied either. The archive database stays the source of truth: ``refresh`` rewrites
a project's attributes after a QC decision or an attribute edit. Whether a user may list a project's rows is
decided by ``archive.permissions`` at query time, never by anything stored here.
"""
from __future__ import annotations

import fcntl
import os
import re
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session as DB

from incloud_kernel.archive import permissions
from incloud_kernel.archive.models import Participant, Project, Series, Session
from incloud_kernel.archive.permissions import Action, Actor
from incloud_kernel.archive.storage import replacing
from incloud_kernel.errors import StorageError, ValidationError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import pyarrow as pa

#: Hive partition keys, in folder order.
PARTITIONS = ("project", "pipeline", "version")
#: One row per scan (DuckDB types; the partition keys come from the folders).
SCAN_COLUMNS: dict[str, str] = {
    "series": "BIGINT", "participant": "VARCHAR", "session": "VARCHAR", "provenance": "BIGINT",
    "sex": "VARCHAR", "age": "DOUBLE", "handedness": "VARCHAR", "diagnosis": "VARCHAR[]",
    "first_episode": "BOOLEAN", "medication": "VARCHAR", "follow_up": "BOOLEAN", "scanner": "VARCHAR",
    "qc": "VARCHAR", "feature_sets": "VARCHAR[]", "published_at": "TIMESTAMP WITH TIME ZONE",
}
#: Long rows of values.
VALUE_COLUMNS: dict[str, str] = {
    "series": "BIGINT", "atlas": "VARCHAR", "region": "VARCHAR", "feature": "VARCHAR", "value": "DOUBLE",
    "unit": "VARCHAR", "published_at": "TIMESTAMP WITH TIME ZONE",
}
#: The long-format columns ``publish`` needs from a stage (``features.rows.COLUMNS`` minus what it joins itself).
NEEDED = ("atlas", "region", "feature", "value", "unit")
_PART_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
#: Rows per Parquet row group of compacted values: small enough that a query for a few scans of one feature set
#: reads few groups (their min/max statistics on atlas, feature and series prune the rest).
VALUE_ROW_GROUP = 65_536


def library_root(site: Any) -> Path:
    """The library root of ``site`` (a ``Site`` or a ``Config``), created 0700."""
    from incloud_kernel.site import private_dir

    config = getattr(site, "config", site)
    root = Path(config.library_root)
    try:
        return private_dir(root)
    except OSError as exc:
        raise StorageError(f"cannot create the feature library at {root}: {exc.strerror or type(exc).__name__}") \
            from None


def check_part(value: Any, what: str) -> str:
    """A partition value (project code, pipeline name, version): letters, digits and ``._+-``, max 64."""
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if text is None or not _PART_VALUE.fullmatch(text):
        raise ValidationError(f"{what} must be 1-64 letters, digits or ._+- (got {str(value)[:40]!r})")
    return text


def partition_dir(root: Path, kind: str, project: str, pipeline: str, version: str) -> Path:
    """``<root>/<kind>/project=../pipeline=../version=..`` (kind ``scans`` or ``values``)."""
    return (root / kind / f"project={check_part(project, 'project')}" / f"pipeline={check_part(pipeline, 'pipeline')}"
            / f"version={check_part(version, 'version')}")


@contextmanager
def _locked(root: Path, project: str, pipeline: str, version: str) -> Iterator[None]:
    """An exclusive lock on one partition (both kinds), for writers only; readers never wait."""
    locks = root / ".locks"
    locks.mkdir(mode=0o700, exist_ok=True)
    with open(locks / f"{project}.{pipeline}.{version}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_atomic(table: "pa.Table", path: Path, row_group_size: int | None = None) -> Path:
    """Write ``table`` to ``path`` through a temporary file in the same folder and ``os.replace`` (a reader sees
    the old file or the new one, never a part); the temporary name does not end in ``.parquet`` so no glob of
    readers matches it."""
    import pyarrow.parquet as pq

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with replacing(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd")
    return path


GENERATION = ".generation"


def generation(root: Path) -> str:
    """The library's current generation: changes whenever a scan file is written or removed (query processes
    reload their scan index when it does). An absent file reads as ``"0"``."""
    try:
        return (root / GENERATION).read_text().strip() or "0"
    except FileNotFoundError:
        return "0"


def bump_generation(root: Path) -> str:
    """Mark the library changed (atomically); call after writing or removing scan files."""
    value = uuid.uuid4().hex
    with replacing(root / GENERATION) as tmp:
        tmp.write_text(value)
    return value


@dataclass(frozen=True)
class Published:
    """Where one series' rows went and how many."""

    project: str
    pipeline: str
    version: str
    series: int
    values: int
    scan_file: Path
    value_file: Path


def _scan_attributes(db: DB, series: Series) -> tuple[str, dict[str, Any]]:
    """The project code and the scan row's attributes of ``series`` from the archive (no identity in them)."""
    session = db.get(Session, series.session_id)
    assert session is not None
    participant = db.get(Participant, session.participant_id)
    project = db.get(Project, series.project_id)
    assert participant is not None and project is not None
    return project.code, {
        "series": series.id, "participant": participant.label, "session": session.label,
        "sex": participant.sex, "age": session.age_at_scan, "handedness": participant.handedness,
        "diagnosis": [str(d) for d in (participant.diagnosis or [])], "first_episode": participant.first_episode,
        "medication": participant.medication, "follow_up": bool(participant.follow_up),
        "scanner": session.scanner, "qc": series.qc_status,
    }


def _single(frame: "pd.DataFrame", column: str, given: str | None) -> str:
    if given is not None:
        return check_part(given, column)
    if column not in frame.columns or frame[column].nunique(dropna=False) != 1:
        raise ValidationError(f"give {column}= or a frame whose {column} column holds one value")
    return check_part(str(frame[column].iloc[0]), column)


def _value_table(frame: "pd.DataFrame", series_id: int, when: datetime) -> "pa.Table":
    import pandas as pd
    import pyarrow as pa

    missing = [c for c in NEEDED if c not in frame.columns]
    if missing:
        raise ValidationError(f"feature rows lack column(s) {', '.join(missing)}")
    values = pd.to_numeric(frame["value"], errors="coerce")
    if values.isna().any() and frame["value"].notna().all():
        raise ValidationError("feature values must be numbers")
    for column in ("atlas", "region", "feature"):
        if frame[column].isna().any() or (frame[column].astype(str).str.len() == 0).any():
            raise ValidationError(f"feature rows need a {column} on every row")
    out = pd.DataFrame({
        "series": pd.Series(series_id, index=frame.index, dtype="int64"),
        "atlas": frame["atlas"].astype(str), "region": frame["region"].astype(str),
        "feature": frame["feature"].astype(str), "value": values.astype("float64"),
        "unit": frame["unit"].fillna("").astype(str),
    }).sort_values(["atlas", "feature", "series", "region"], kind="stable")
    out["published_at"] = pd.Timestamp(when)
    return pa.Table.from_pandas(out, schema=value_schema(), preserve_index=False)


def scan_schema() -> "pa.Schema":
    import pyarrow as pa

    types = {"BIGINT": pa.int64(), "VARCHAR": pa.string(), "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_(),
             "VARCHAR[]": pa.list_(pa.string()), "TIMESTAMP WITH TIME ZONE": pa.timestamp("us", tz="UTC")}
    return pa.schema([(name, types[kind]) for name, kind in SCAN_COLUMNS.items()])


def value_schema() -> "pa.Schema":
    import pyarrow as pa

    types = {"BIGINT": pa.int64(), "VARCHAR": pa.string(), "DOUBLE": pa.float64(),
             "TIMESTAMP WITH TIME ZONE": pa.timestamp("us", tz="UTC")}
    return pa.schema([(name, types[kind]) for name, kind in VALUE_COLUMNS.items()])


def publish(site: Any, db: DB, actor: Actor, frame: "pd.DataFrame", *, series: int, provenance: int | None = None,
            pipeline: str | None = None, version: str | None = None) -> Published:
    """Put one series' long-format feature rows (``features.rows.COLUMNS``; at least atlas, region, feature,
    value, unit) into the library with the scan's attributes joined from the archive.

    ``actor`` needs write on the series' project (the pipeline runs as the run's owner). Publishing the same
    series and pipeline version again replaces its rows. Raises ValidationError (one line) for bad rows and
    NotFound for a series the actor cannot see.
    """
    import pyarrow as pa

    row = permissions.get_series(db, actor, series, Action.write)
    pipeline, version = _single(frame, "pipeline", pipeline), _single(frame, "version", version)
    if frame.empty:
        raise ValidationError("no feature rows to publish")
    project, attributes = _scan_attributes(db, row)
    when = datetime.now(timezone.utc)
    values = _value_table(frame, row.id, when)
    sets = sorted({f"{a}:{f}" for a, f in zip(values.column("atlas").to_pylist(), values.column("feature").to_pylist())})
    scan = pa.Table.from_pylist([{**attributes, "provenance": provenance, "feature_sets": sets, "published_at": when}],
                                schema=scan_schema())
    root = library_root(site)
    name = f"series-{row.id}.parquet"
    with _locked(root, project, pipeline, version):
        value_file = write_atomic(values, partition_dir(root, "values", project, pipeline, version) / name)
        scan_file = write_atomic(scan, partition_dir(root, "scans", project, pipeline, version) / name)
        if _in_parts(root, project, pipeline, version, row.id):
            _compact_locked(root, project, pipeline, version)  # the older copy in a part goes at once
        bump_generation(root)
    return Published(project, pipeline, version, row.id, values.num_rows, scan_file, value_file)


def publish_tables(site: Any, db: DB, actor: Actor, tables: list[Path], *, series: int,
                   provenance: int | None = None) -> list[Published]:
    """Publish the long-format feature tables (TSV, ``features.rows.COLUMNS``) one pipeline stage wrote for
    ``series``: the engine's one call when it records a stage's outputs (``Stage.feature_tables``). Rows are
    grouped by their ``pipeline`` and ``version`` columns (a stage may qualify the pipeline by its route, e.g.
    ``features+epi2mni``), each group published as ``publish`` does; a table without rows publishes nothing."""
    import pandas as pd

    frames = [pd.read_csv(path, sep="\t", dtype={"participant": str, "session": str, "region": str})
              for path in tables]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if frame.empty:
        return []
    for column in ("pipeline", "version"):
        if column not in frame.columns:
            raise ValidationError(f"feature rows lack column {column}")
    return [publish(site, db, actor, group, series=series, provenance=provenance, pipeline=str(pipeline),
                    version=str(version))
            for (pipeline, version), group in frame.groupby(["pipeline", "version"], sort=True)]


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []


def _in_parts(root: Path, project: str, pipeline: str, version: str, series_id: int) -> bool:
    import duckdb

    parts = _parts(partition_dir(root, "scans", project, pipeline, version))
    if not parts:
        return False
    with duckdb.connect() as con:
        return bool(con.execute("SELECT count(*) FROM read_parquet(?, hive_partitioning = false) WHERE series = ?",
                                [[str(p) for p in parts], series_id]).fetchone()[0])


def _compact_locked(root: Path, project: str, pipeline: str, version: str) -> int:
    """Merge every file of one partition into one part per kind, newest copy of each series winning."""
    import duckdb

    scans_dir = partition_dir(root, "scans", project, pipeline, version)
    values_dir = partition_dir(root, "values", project, pipeline, version)
    scan_files = sorted(scans_dir.glob("*.parquet")) if scans_dir.is_dir() else []
    value_files = sorted(values_dir.glob("*.parquet")) if values_dir.is_dir() else []
    if len(scan_files) <= 1 and len(value_files) <= 1:
        return len(scan_files)
    name = f"part-{uuid.uuid4().hex}.parquet"
    with duckdb.connect() as con:
        con.execute("SET preserve_insertion_order = false")
        scan_columns, value_columns = ", ".join(SCAN_COLUMNS), ", ".join(f"v.{c}" for c in VALUE_COLUMNS)
        scans = con.sql(
            f"SELECT {scan_columns} FROM read_parquet(?, hive_partitioning = false) "
            "QUALIFY row_number() OVER (PARTITION BY series ORDER BY published_at DESC) = 1 ORDER BY series",
            params=[[str(p) for p in scan_files]]).to_arrow_table()
        values = con.sql(
            "WITH newest AS (SELECT series, max(published_at) AS published_at "
            "FROM read_parquet(?, hive_partitioning = false) GROUP BY series) "
            f"SELECT {value_columns} FROM read_parquet(?, hive_partitioning = false) v "
            "JOIN newest USING (series, published_at) ORDER BY atlas, feature, series, region",
            params=[[str(p) for p in value_files], [str(p) for p in value_files]]).to_arrow_table()
    write_atomic(values.cast(value_schema()), values_dir / name, VALUE_ROW_GROUP)
    write_atomic(scans.cast(scan_schema()), scans_dir / name)
    # A reader globbing between the writes above and these unlinks may see a series twice: counts are of
    # distinct series, so only a listing in that instant can repeat a scan (docs/library.md).
    for old in scan_files + value_files:
        old.unlink(missing_ok=True)
    bump_generation(root)
    return scans.num_rows


def partitions(root: Path, project: str | None = None) -> list[tuple[str, str, str]]:
    """Every (project, pipeline, version) with scan rows, optionally of one project."""
    base = root / "scans"
    out = []
    for folder in sorted(base.glob(f"project={project if project else '*'}/pipeline=*/version=*")):
        out.append((folder.parent.parent.name.split("=", 1)[1], folder.parent.name.split("=", 1)[1],
                    folder.name.split("=", 1)[1]))
    return out


def compact(site: Any, project: str | None = None) -> int:
    """Compact every partition (of ``project``); returns the scans held. Run after a pipeline run: many small
    per-series files make every query open many files."""
    root = library_root(site)
    total = 0
    for key in partitions(root, project):
        with _locked(root, *key):
            total += _compact_locked(root, *key)
    return total


def refresh(site: Any, db: DB, project: str, series: Iterable[int] | None = None) -> int:
    """Rewrite the attributes of ``project``'s scan rows from the archive (after QC decisions or attribute
    edits); values are untouched. ``series``: only the files holding these scans are rewritten (a QC decision
    refreshes its own scan; ``qc.gate`` calls this), None: every scan of the project. Site-side maintenance: runs
    as the system. Returns the scans rewritten (0 when the library does not exist yet: nothing is created)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from incloud_kernel.archive.permissions import SYSTEM

    config = getattr(site, "config", site)
    if not Path(config.library_root).is_dir():
        return 0
    root = library_root(site)
    code = permissions.require(db, SYSTEM, project).code
    wanted = None if series is None else {int(s) for s in series}
    done = 0
    for key in partitions(root, code):
        with _locked(root, *key):
            changed = 0
            for path in sorted(partition_dir(root, "scans", *key).glob("*.parquet")):
                if wanted is not None and not _holds(path, wanted):
                    continue
                table = pq.read_table(path, schema=scan_schema())
                rows = table.to_pylist()
                for scan in rows:
                    row = db.get(Series, scan["series"])
                    if row is not None:
                        scan.update(_scan_attributes(db, row)[1])
                write_atomic(pa.Table.from_pylist(rows, schema=scan_schema()), path)
                changed += len(rows)
            if changed:
                bump_generation(root)
            done += changed
    return done


def _holds(path: Path, series: set[int]) -> bool:
    """Whether the scan file ``path`` holds one of ``series`` (a per-scan file by its name, a part by its rows)."""
    import pyarrow.parquet as pq

    if path.name.startswith("series-"):
        return path.name[len("series-"):-len(".parquet")] in {str(s) for s in series}
    return bool(series & set(pq.read_table(path, columns=["series"]).column("series").to_pylist()))


__all__ = ["PARTITIONS", "SCAN_COLUMNS", "VALUE_COLUMNS", "Published", "library_root", "partition_dir", "publish",
           "publish_tables",
           "compact", "refresh", "partitions", "generation", "bump_generation", "write_atomic", "scan_schema", "value_schema", "check_part"]
