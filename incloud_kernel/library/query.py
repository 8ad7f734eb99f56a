"""Queries of the feature library: a count over *all* data, rows only from projects the user may list.

``search(site, db, actor, diagnosis="SCZ", age=(18, 40), feature="gmv", atlas="aal", qc="pass")`` reads the
Parquet of ``library.store`` with DuckDB. The count (scans that match, in every project) never depends on who
asks, and a count between 1 and ``library.min_cell - 1`` is shown as ``"< 5"``; the rows come only from projects
``permissions.feature_project_codes`` returns for the actor (memberships and unexpired feature grants) - the
database decides that at every query, nothing in the Parquet does. Criteria are checked first and refused with
one line naming the criterion; values go to DuckDB as bound parameters, never into the SQL text.

What masking protects and what it does not is written down in docs/library.md (differencing attacks).
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from sqlalchemy.orm import Session as DB

from incloud_kernel.archive import permissions
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.archive.storage import replacing
from incloud_kernel.errors import ValidationError
from incloud_kernel.library.store import SCAN_COLUMNS, generation, library_root

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: Text criteria: a value or a list of values ("any of").
TEXT_CRITERIA = ("project", "pipeline", "version", "participant", "session", "sex", "diagnosis", "medication",
                 "scanner", "qc", "feature", "atlas", "region")
BOOL_CRITERIA = ("first_episode", "follow_up")
CRITERIA = TEXT_CRITERIA + BOOL_CRITERIA + ("age",)
SEXES = ("M", "F", "O")
QC_STATES = ("pending", "pass", "fail", "caveat")
SHAPES = ("long", "wide", "xarray")
#: Largest page of scans one query lists (an export pages through them).
MAX_LIMIT = 10_000
#: Columns of a scan in a result, in order (attributes; the partition keys first).
SCAN_FIELDS = ("project", "pipeline", "version", "participant", "session", "series", "sex", "age", "handedness",
               "diagnosis", "first_episode", "medication", "follow_up", "scanner", "qc")
VALUE_FIELDS = ("atlas", "region", "feature", "value", "unit")
_HIVE = "hive_partitioning = true, hive_types = {'project': VARCHAR, 'pipeline': VARCHAR, 'version': VARCHAR}"


def _text(name: str, value: Any) -> list[str]:
    values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
    if not values:
        raise ValidationError(f"{name} needs at least one value")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (str, int)) or not str(v).strip() or len(str(v)) > 256 \
                or any(ord(c) < 32 for c in str(v)):
            raise ValidationError(f"{name} must be text of one line (at most 256 characters)")
        out.append(str(v).strip())
    if name == "sex" and set(out) - set(SEXES):
        raise ValidationError(f"sex must be one of {', '.join(SEXES)}")
    if name == "qc" and set(out) - set(QC_STATES):
        raise ValidationError(f"qc must be one of {', '.join(QC_STATES)}")
    return out


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ValidationError(f"{name} must be true or false")


def _age(value: Any) -> tuple[float, float]:
    if isinstance(value, str):
        value = value.replace(",", "-").split("-") if value.count("-") <= 1 else None
    try:
        low, high = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValidationError("age must be a range of two numbers of years, e.g. (18, 40) or 18-40") from None
    if not (math.isfinite(low) and math.isfinite(high)) or not 0 <= low <= high <= 150:
        raise ValidationError("age must be a range from low to high years between 0 and 150")
    return low, high


def parse_criteria(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Checked criteria (None values dropped): text ones as lists, booleans as bools, age as (low, high).

    Accepts the strings an HTTP query or the command line gives ("true", "18-40"). Raises ValidationError with
    one line naming the first bad criterion."""
    unknown = sorted(set(raw) - set(CRITERIA))
    if unknown:
        raise ValidationError(f"unknown criterion {unknown[0]}; known: {', '.join(CRITERIA)}")
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if value is None:
            continue
        if name in BOOL_CRITERIA:
            out[name] = _bool(name, value)
        elif name == "age":
            out[name] = _age(value)
        else:
            out[name] = _text(name, value)
    return out


def _in(column: str, values: list[Any], params: list[Any]) -> str:
    params.extend(values)
    return f"{column} IN ({', '.join('?' * len(values))})"


#: List columns of a scan that the scan index also keeps as bit masks (one bit per distinct value), when they hold
#: at most ``MAX_BITS`` distinct values: a bit test is ~10x faster than a list search over a million scans.
BIT_COLUMNS = ("diagnosis", "feature_sets")
MAX_BITS = 62


def _wanted(criteria: Mapping[str, Any], column: str, names: list[str]) -> list[str]:
    """The values of list ``column`` that the criteria accept, out of ``names`` (the column's distinct values)."""
    if column == "diagnosis":
        return list(criteria["diagnosis"])
    atlases, features = criteria.get("atlas"), criteria.get("feature")
    return [n for n in names if (not atlases or n.split(":", 1)[0] in atlases)
            and (not features or n.split(":", 1)[-1] in features)]


def scan_filter(criteria: Mapping[str, Any], codes: Mapping[str, list[str]] | None = None) -> tuple[str, list[Any]]:
    """The WHERE clause (``TRUE`` when empty) and its parameters over the scan rows for checked ``criteria``.
    ``codes`` maps a ``BIT_COLUMNS`` name to its distinct values in bit order when the scan index keeps its
    ``<name>_bits`` column. ``region`` does not restrict scans (it picks values)."""
    clauses: list[str] = []
    params: list[Any] = []
    for name in ("project", "pipeline", "version", "participant", "session", "sex", "scanner", "qc"):
        if name in criteria:
            clauses.append(_in(name, criteria[name], params))
    if "medication" in criteria:  # free text: any of the words given, case-insensitive, as a part
        clauses.append("(" + " OR ".join("contains(lower(medication), lower(?))" for _ in criteria["medication"]) + ")")
        params.extend(criteria["medication"])
    for name in BOOL_CRITERIA:
        if name in criteria:
            clauses.append(f"{name} = ?")
            params.append(criteria[name])
    if "age" in criteria:
        clauses.append("age BETWEEN ? AND ?")
        params.extend(criteria["age"])
    for column in BIT_COLUMNS:
        if column == "diagnosis" and "diagnosis" not in criteria:
            continue
        if column == "feature_sets" and not (criteria.get("atlas") or criteria.get("feature")):
            continue
        names = (codes or {}).get(column)
        if names is not None:
            wanted = set(_wanted(criteria, column, names))
            clauses.append(f"({column}_bits & ?) <> 0")
            params.append(sum(1 << k for k, n in enumerate(names) if n in wanted))
        elif column == "diagnosis":
            clauses.append("list_has_any(diagnosis, ?::VARCHAR[])")
            params.append(criteria["diagnosis"])
        elif criteria.get("atlas") and criteria.get("feature"):
            clauses.append("list_has_any(feature_sets, ?::VARCHAR[])")
            params.append([f"{a}:{f}" for a in criteria["atlas"] for f in criteria["feature"]])
        else:
            part = 2 if criteria.get("feature") else 1
            clauses.append(f"list_has_any(list_transform(feature_sets, lambda x: split_part(x, ':', {part})), "
                           "?::VARCHAR[])")
            params.append(criteria.get("feature") or criteria.get("atlas"))
    return (" AND ".join(clauses) or "TRUE"), params


def mask(count: int, min_cell: int) -> int | str:
    """``count``, or ``"< min_cell"`` when it lies between 1 and ``min_cell - 1`` (0 is shown: an empty cell
    tells that nobody matches, which the masking does not hide)."""
    return f"< {min_cell}" if 0 < count < min_cell else int(count)


@dataclass
class Result:
    """A query's answer: ``count`` over all data (masked), ``listed`` permitted scans that match, and ``rows``
    (long format) of the requested page of permitted scans."""

    count: int | str
    listed: int
    rows: "pd.DataFrame"
    criteria: dict[str, Any] = field(default_factory=dict)

    def frame(self, shape: str = "long") -> Any:
        """The rows as ``long`` or ``wide`` DataFrame, or the ``xarray`` DataArray."""
        shape = _shape(shape)
        return wide(self.rows) if shape == "wide" else to_xarray(self.rows) if shape == "xarray" else self.rows

    def to_xarray(self) -> Any:
        return to_xarray(self.rows)


def _shape(shape: str) -> str:
    if shape not in SHAPES:
        raise ValidationError(f"shape must be one of {', '.join(SHAPES)}")
    return shape


def _files(root: Path, kind: str, keys: Iterable[tuple[str, ...]]) -> list[str]:
    """Globs of the partitions in ``keys`` (each (project,), or (project, pipeline, version)) that exist."""
    out = []
    for key in keys:
        folder = root / kind / f"project={key[0]}"
        pattern = "pipeline=*/version=*/*.parquet"
        if len(key) == 3:
            folder, pattern = folder / f"pipeline={key[1]}" / f"version={key[2]}", "*.parquet"
        if any(folder.glob(pattern)):  # DuckDB refuses a glob that matches nothing
            out.append(str(folder / pattern))
    return out


_LOCAL = threading.local()
_SHARED: dict[Path, "_ScanIndex"] = {}
_SHARED_LOCK = threading.Lock()


@dataclass(frozen=True)
class _Snapshot:
    """One loaded state of the scan index: its table, the bit order of each ``BIT_COLUMNS`` column, and whether
    every series appears once. Swapped as one object, so a query never mixes one load's table with another's
    bit order."""

    table: str
    codes: dict[str, list[str]]
    unique: bool


class _ScanIndex:
    """Every scan row of one library root in one in-memory DuckDB database, shared by the process's threads (each
    reads through its own cursor), reloaded when ``store.generation`` changes (every publish, compaction and
    refresh bumps it). Counting 1M scans then reads memory, not a million Parquet rows per query. It holds
    attributes only, never values, and no permission."""

    def __init__(self, root: Path) -> None:
        import duckdb

        self.root = root
        self.db = duckdb.connect()
        self.generation: str | None = None
        self.snapshot = _Snapshot("scans_0", {}, True)
        self.loads = 0
        self.lock = threading.Lock()

    def cursor(self) -> tuple[Any, _Snapshot]:
        """A cursor of this thread and the current snapshot (reloaded first if the library changed)."""
        current = generation(self.root)
        if current != self.generation:
            with self.lock:
                if current != self.generation:
                    self._load(current)
        cursors = _LOCAL.__dict__.setdefault("cursors", {})
        key = (self.root, id(self.db))
        if key not in cursors:
            cursors[key] = self.db.cursor()
        return cursors[key], self.snapshot

    def _load(self, current: str) -> None:
        self.loads += 1
        table, old = f"scans_{self.loads}", f"scans_{self.loads - 2}"
        columns = ", ".join(["project", "pipeline", "version", *SCAN_COLUMNS])
        if any((self.root / "scans").glob("project=*/pipeline=*/version=*/*.parquet")):
            source = str(self.root / "scans" / "*" / "*" / "*" / "*.parquet")
            self.db.execute(f"CREATE TABLE {table} AS SELECT {columns} FROM read_parquet(?, {_HIVE}) "
                            "ORDER BY project, pipeline, version, series", [source])
        else:
            types = ", ".join([f"{p} VARCHAR" for p in ("project", "pipeline", "version")]
                              + [f"{n} {t}" for n, t in SCAN_COLUMNS.items()])
            self.db.execute(f"CREATE TABLE {table} ({types})")
        codes: dict[str, list[str]] = {}
        for column in BIT_COLUMNS:
            names = sorted(r[0] for r in self.db.execute(
                f"SELECT DISTINCT unnest({column}) FROM {table}").fetchall() if r[0] is not None)
            if len(names) <= MAX_BITS:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column}_bits BIGINT")
                self.db.execute(f"UPDATE {table} SET {column}_bits = coalesce(list_sum(list_transform({column}, "
                                "lambda x: (1::BIGINT << (list_position(?::VARCHAR[], x) - 1)))), 0)", [names])
                codes[column] = names
        unique = bool(self.db.execute(f"SELECT count(*) = count(DISTINCT series) FROM {table}").fetchone()[0])
        self.snapshot = _Snapshot(table, codes, unique)
        self.generation = current
        # The previous table stays one more load, for queries that took its snapshot a moment ago (memory: two
        # copies of the index at most).
        if self.loads > 2:
            self.db.execute(f"DROP TABLE IF EXISTS {old}")


class Library:
    """The Parquet of one site, read with DuckDB: scan rows through the process's shared in-memory index
    (``_ScanIndex``), values straight from the Parquet (one connection per thread, kept: opening one costs tens
    of ms). Holds no permission. DuckDB's Parquet metadata cache stays off: files are replaced in place
    (``os.replace``) and a footer cached by modification time could outlive a rewrite within the same second."""

    def __init__(self, root: Path, min_cell: int = 5) -> None:
        self.root = Path(root)
        self.min_cell = min_cell

    @classmethod
    def of(cls, site: Any) -> Library:
        config = getattr(site, "config", site)
        return cls(library_root(config), config.library.min_cell)

    def _connect(self) -> Any:
        import duckdb

        cache = _LOCAL.__dict__.setdefault("connections", {})
        con = cache.get(self.root)
        if con is None:
            con = cache[self.root] = duckdb.connect()
        return con

    def _index(self) -> tuple[Any, _Snapshot]:
        with _SHARED_LOCK:
            index = _SHARED.get(self.root)
            if index is None:
                index = _SHARED[self.root] = _ScanIndex(self.root)
        return index.cursor()

    def counts(self, criteria: Mapping[str, Any], projects: list[str]) -> tuple[int, int]:
        """(scans matching ``criteria`` in every project, those of them in ``projects``), in one pass; unmasked
        (callers show ``mask`` of the first)."""
        cursor, snap = self._index()
        where, params = scan_filter(criteria, snap.codes)
        head: list[Any] = []
        counted = "count(*)" if snap.unique else "count(DISTINCT series)"
        listed = f"{counted} FILTER (WHERE {_in('project', projects, head)})" if projects else "0"
        row = cursor.execute(f"SELECT {counted}, {listed} FROM {snap.table} WHERE {where}",
                             [*head, *params]).fetchone()
        return int(row[0]), int(row[1])

    def scans(self, projects: list[str], criteria: Mapping[str, Any], limit: int | None, offset: int = 0
              ) -> "pd.DataFrame":
        """One page of the matching scans of ``projects``, ordered by project, pipeline, version, series."""
        import pandas as pd

        if not projects:
            return pd.DataFrame(columns=list(SCAN_FIELDS))
        cursor, snap = self._index()
        where, params = scan_filter(criteria, snap.codes)
        allowed: list[Any] = []
        clause = _in("project", projects, allowed)
        page = f" LIMIT {int(limit)} OFFSET {int(offset)}" if limit is not None else ""
        return cursor.execute(
            f"SELECT {', '.join(SCAN_FIELDS)} FROM {snap.table} WHERE {clause} AND {where} "
            f"ORDER BY project, pipeline, version, series{page}", [*allowed, *params]).fetchdf()

    def values(self, scans: "pd.DataFrame", criteria: Mapping[str, Any]) -> "pd.DataFrame":
        """Long value rows of the scans in ``scans`` (atlas, feature and region criteria applied)."""
        import pandas as pd

        columns = ["project", "pipeline", "version", "series", *VALUE_FIELDS]
        if scans.empty:
            return pd.DataFrame(columns=columns)
        keys = sorted({(r.project, r.pipeline, r.version) for r in scans.itertuples()})
        files = _files(self.root, "values", keys)
        if not files:
            return pd.DataFrame(columns=columns)
        ids = sorted(int(s) for s in scans["series"].unique())
        params: list[Any] = [ids[0], ids[-1]]
        clauses = ["series BETWEEN ? AND ?", _in("series", ids, params)]
        for name in ("atlas", "feature", "region"):
            if name in criteria:
                clauses.append(_in(name, criteria[name], params))
        return self._connect().execute(f"SELECT {', '.join(columns)} FROM read_parquet(?, {_HIVE}) "
                                       f"WHERE {' AND '.join(clauses)}", [files, *params]).fetchdf()


def _long(scans: "pd.DataFrame", values: "pd.DataFrame") -> "pd.DataFrame":
    import pandas as pd

    scans = scans.copy()
    scans["diagnosis"] = [";".join(d) if isinstance(d, (list, tuple)) or hasattr(d, "tolist") else (d or "")
                          for d in scans["diagnosis"]]
    if values.empty:
        return pd.DataFrame(columns=[*SCAN_FIELDS, *VALUE_FIELDS])
    out = scans.merge(values, on=["project", "pipeline", "version", "series"], how="inner")
    out = out.sort_values(["project", "pipeline", "version", "series", "atlas", "feature", "region"], kind="stable")
    return out[[*SCAN_FIELDS, *VALUE_FIELDS]].reset_index(drop=True)


def search(site: Any, db: DB, actor: Actor, *, limit: int | None = 100, offset: int = 0, audit: bool = True,
           **criteria: Any) -> Result:
    """Count every matching scan, and list one page (``limit`` scans from ``offset``; None: all) of the
    matching scans of projects the actor may list, as long rows. Audited as ``features.query`` (criterion names
    and counts, never values) when ``audit`` (the caller commits)."""
    checked = parse_criteria(criteria)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT):
        raise ValidationError(f"limit must be between 1 and {MAX_LIMIT} scans")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValidationError("offset must be 0 or more")
    library = Library.of(site)
    allowed = permissions.feature_project_codes(db, actor)
    if "project" in checked:
        allowed = [p for p in allowed if p in checked["project"]]
    total, listed = library.counts(checked, allowed)
    scans = library.scans(allowed, checked, limit, offset)
    rows = _long(scans, library.values(scans, checked))
    shown = mask(total, library.min_cell)
    if audit:
        from incloud_kernel.archive.projects import audit as audit_event

        audit_event(db, actor, "features.query", "feature_library", "-", criteria=sorted(checked),
                    count=shown, listed=listed)
    return Result(count=shown, listed=listed, rows=rows, criteria=checked)


def features(site: Any, db: DB, actor: Actor, *, shape: str = "long", limit: int | None = 100, offset: int = 0,
             **criteria: Any) -> tuple[int | str, "pd.DataFrame"]:
    """``(total_count, DataFrame)``: ``search`` in the issue's shape (``shape`` long, wide, or xarray for a
    DataArray in place of the DataFrame)."""
    _shape(shape)
    result = search(site, db, actor, limit=limit, offset=offset, **criteria)
    return result.count, result.frame(shape)


def wide(rows: "pd.DataFrame") -> "pd.DataFrame":
    """One row per scan, one column per ``atlas/feature/region`` (the scan attributes first)."""
    import pandas as pd

    if rows.empty:
        return pd.DataFrame(columns=list(SCAN_FIELDS))
    key = ["project", "pipeline", "version", "series"]
    keyed = rows.assign(column=rows["atlas"] + "/" + rows["feature"] + "/" + rows["region"])
    table = keyed.pivot_table(index=key, columns="column", values="value", aggfunc="first")
    table.columns.name = None
    scans = rows[list(SCAN_FIELDS)].drop_duplicates(key)
    return scans.merge(table.reset_index(), on=key, how="left").reset_index(drop=True)


def to_xarray(rows: "pd.DataFrame") -> Any:
    """A DataArray ``scan x region x feature`` of the values (NaN where a scan lacks one), with each scan's
    participant, session, project and attributes as coordinates along ``scan``. ``feature`` is the feature name,
    or ``atlas:feature`` when the rows hold several atlases."""
    import xarray as xr

    if rows.empty:
        return xr.DataArray([[[]]], dims=("scan", "region", "feature"), name="value")[:0, :0, :0]
    several = rows["atlas"].nunique() > 1
    frame = rows.assign(scan=rows["project"] + "/" + rows["participant"] + "/" + rows["session"] + "/"
                        + rows["series"].astype(str) + "/" + rows["pipeline"] + "-" + rows["version"],
                        feature=(rows["atlas"] + ":" + rows["feature"]) if several else rows["feature"])
    cube = frame.set_index(["scan", "region", "feature"])["value"]
    cube = cube[~cube.index.duplicated()]
    array = xr.DataArray.from_series(cube)
    attrs = frame.drop_duplicates("scan").set_index("scan")
    coords = {name: ("scan", attrs.loc[array["scan"].values, name].to_numpy())
              for name in ("project", "participant", "session", "series", "sex", "age", "diagnosis", "qc")}
    return array.assign_coords(coords).rename("value")


EXPORT_FORMATS = ("csv", "parquet")


def export(frame: "pd.DataFrame", path: str | os.PathLike[str], fmt: str | None = None) -> Path:
    """Write ``frame`` to ``path`` as CSV or Parquet (by ``fmt`` or the file's ending), atomically."""
    target = Path(path)
    fmt = fmt or target.suffix.lstrip(".").lower()
    if fmt not in EXPORT_FORMATS:
        raise ValidationError(f"export format must be one of {', '.join(EXPORT_FORMATS)} (or a file ending in one)")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise ValidationError(f"folder {folder} does not exist")
    try:
        with replacing(target) as tmp:
            if fmt == "csv":
                frame.to_csv(tmp, index=False)
            else:
                frame.to_parquet(tmp, index=False)
    except OSError as exc:
        raise ValidationError(f"cannot write {target}: {exc.strerror or type(exc).__name__}") from None
    return target


__all__ = ["CRITERIA", "SHAPES", "EXPORT_FORMATS", "MAX_LIMIT", "Library", "Result", "parse_criteria",
           "scan_filter", "mask", "search", "features", "wide", "to_xarray", "export"]
