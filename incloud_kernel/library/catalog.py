"""Per-user Intake 2 catalogs of the feature library: one table per permitted partition, on local paths only.

Why copies pulled by the user, not links into the library: the library lives in the service user's 0700
``library.root``; a workstation runs as the user's own system account on a compute node. The service runs
unprivileged (it cannot ``chown`` a folder to the user, and POSIX ACLs are not on every cluster filesystem), so it
never puts files where users read them. Instead the user's own process (``incloud_kernel.features.catalog()`` in
the workstation, with the user's API token) asks the API for the *manifest* of the partitions it may list
(``permissions.feature_project_codes``, decided at every call), downloads each changed partition as one Parquet
file into a folder of its own (``~/.incloud/catalog``, 0700, files 0600: owned by the user, readable by nobody
else), deletes every local table no longer in the manifest (an expired or revoked grant) and writes
``catalog.yaml`` (``intake.readers.entry.Catalog``: ``PandasParquet``, ``DaskParquet``, ``DuckParquet`` per table,
all on local paths: Intake's DuckDB reader would run ``INSTALL httpfs`` for a URL). The API refuses a partition
the user may not list, so a revoked grant removes access at the next ``catalog()``; docs/library.md says what is
left (a copy already read stays where the user put it, as with any download).

One table per (project, pipeline, version): the long rows (atlas, region, feature, value, unit) of the newest
publication of each scan joined with the scan's attributes (``query.SCAN_FIELDS``). This module must never write
outside the folder it is given, put a URL in a catalog, or decide permissions itself.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from incloud_kernel.archive import permissions
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.archive.projects import audit
from incloud_kernel.archive.storage import replacing
from incloud_kernel.errors import NotFound, StorageError
from incloud_kernel.library.store import check_part, library_root, partition_dir, partitions

if TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy.orm import Session as DB

    from incloud_kernel.client import Client

#: The readers of every table, as catalog entry suffixes (the bare name is pandas).
READERS = {"": "PandasParquet", "_dask": "DaskParquet", "_duckdb": "DuckParquet"}
CATALOG_FILE = "catalog.yaml"
STATE_FILE = ".tables.json"
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class Table:
    """One catalog table: a partition of the library and a stamp that changes when its files change."""

    name: str
    project: str
    pipeline: str
    version: str
    stamp: str


def table_name(project: str, pipeline: str, version: str) -> str:
    """A catalog entry name (a Python identifier): ``P1_features_v1_0`` for P1, features, 1.0."""
    return _NAME_UNSAFE.sub("_", f"{project}_{pipeline}_v{version}")


def _files(root: Path, key: tuple[str, str, str]) -> list[Path]:
    out: list[Path] = []
    for kind in ("scans", "values"):
        folder = partition_dir(root, kind, *key)
        out += sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    return out


def _stamp(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        try:
            info = path.stat()
        except FileNotFoundError:  # compacted away meanwhile: the next manifest has the new part
            continue
        digest.update(f"{path.parent.parent.parent.name}/{path.name}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def manifest(site: Any, db: "DB", actor: Actor) -> list[Table]:
    """The tables ``actor`` may read: every partition of a project ``permissions.feature_project_codes`` allows
    (memberships and unexpired, unrevoked feature grants), decided now."""
    allowed = set(permissions.feature_project_codes(db, actor))
    root = library_root(site)
    return [Table(table_name(*key), *key, _stamp(_files(root, key))) for key in partitions(root) if key[0] in allowed]


def write_table(site: Any, db: "DB", actor: Actor, project: str, pipeline: str, version: str, dest: Path) -> Path:
    """Write one partition's table (long rows joined with scan attributes, the newest publication of each scan)
    to ``dest`` as Parquet, if ``actor`` may list ``project``; NotFound otherwise (the same answer as for a
    partition that does not exist, so a refusal reveals nothing)."""
    import duckdb

    from incloud_kernel.library.query import SCAN_FIELDS, VALUE_FIELDS

    key = (check_part(project, "project"), check_part(pipeline, "pipeline"), check_part(version, "version"))
    root = library_root(site)
    if key[0] not in permissions.feature_project_codes(db, actor) or key not in partitions(root, key[0]):
        raise NotFound(f"no feature table {table_name(*key)} for you")
    scans = [str(p) for p in sorted(partition_dir(root, "scans", *key).glob("*.parquet"))]
    values_dir = partition_dir(root, "values", *key)
    values = [str(p) for p in sorted(values_dir.glob("*.parquet"))] if values_dir.is_dir() else []
    attributes = ", ".join(f"s.{c}" for c in SCAN_FIELDS if c not in ("project", "pipeline", "version"))
    empty = ("SELECT NULL::BIGINT AS series, NULL::VARCHAR AS atlas, NULL::VARCHAR AS region, NULL::VARCHAR AS "
             "feature, NULL::DOUBLE AS value, NULL::VARCHAR AS unit, NULL::TIMESTAMPTZ AS published_at WHERE false")
    query = ("WITH s AS (SELECT * FROM read_parquet(?, hive_partitioning = false) "
             "QUALIFY row_number() OVER (PARTITION BY series ORDER BY published_at DESC) = 1), "
             f"v AS ({'SELECT * FROM read_parquet(?, hive_partitioning = false)' if values else empty}) "
             f"SELECT ?::VARCHAR AS project, ?::VARCHAR AS pipeline, ?::VARCHAR AS version, {attributes}, "
             f"{', '.join(f'v.{c}' for c in VALUE_FIELDS)} FROM s JOIN v ON v.series = s.series "
             "AND v.published_at = s.published_at ORDER BY s.series, v.atlas, v.feature, v.region")
    with replacing(dest) as tmp, duckdb.connect() as con:
        # COPY streams to the file (DuckDB spills a big sort to disk): a partition never sits whole in memory
        target = str(tmp).replace("'", "''")
        rows = con.execute(f"COPY ({query}) TO '{target}' (FORMAT parquet, COMPRESSION zstd)",
                           [scans, *([values] if values else []), *key]).fetchone()
    audit(db, actor, "features.catalog", "feature_table", table_name(*key), project=key[0], pipeline=key[1],
          version=key[2], values=int(rows[0]) if rows else None)
    return dest


# -- the user's side: a folder of tables and its catalog ------------------------------------------------------

def default_folder() -> Path:
    """``$INCLOUD_CATALOG_DIR`` or ``~/.incloud/catalog`` (the user's own; on the cluster's shared home)."""
    return Path(os.environ.get("INCLOUD_CATALOG_DIR") or Path.home() / ".incloud" / "catalog")


def _private(folder: Path) -> Path:
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)  # also when it existed with a looser mode
    except OSError as exc:
        raise StorageError(f"cannot make the catalog folder {folder}: {exc.strerror or type(exc).__name__}") \
            from None
    return folder


def sync(folder: Path, tables: list[Table], fetch: Callable[[Table, Path], Any], *, user: str = "") -> Path:
    """Make ``folder`` hold exactly ``tables``: fetch the new or changed ones (``fetch(table, dest)`` writes a
    Parquet file), delete every other table file, write ``catalog.yaml``; returns its path. The folder and
    its files are made 0700/0600."""
    tables_dir = _private(_private(folder) / "tables")
    state_path = folder / STATE_FILE
    try:
        state = json.loads(state_path.read_text())
    except (FileNotFoundError, ValueError):
        state = {}
    wanted = {t.name: t for t in tables}
    for path in tables_dir.glob("*.parquet"):  # revoked, expired or gone: removed before anything else
        if path.stem not in wanted:
            path.unlink(missing_ok=True)
    for name in list(state):
        if name not in wanted:
            del state[name]
    for table in tables:
        dest = tables_dir / f"{table.name}.parquet"
        if state.get(table.name) != table.stamp or not dest.exists():
            with replacing(dest) as tmp:  # renamed over the old copy when whole
                fetch(table, tmp)
                os.chmod(tmp, 0o600)  # a writer may have made a new file with the umask's mode
            state[table.name] = table.stamp
    with replacing(state_path) as tmp:
        tmp.write_text(json.dumps(state, sort_keys=True))
    target = folder / CATALOG_FILE
    with replacing(target) as tmp:
        build(tables_dir, tables, user=user).to_yaml_file(str(tmp))
        os.chmod(tmp, 0o600)
    return target


def build(tables_dir: Path, tables: list[Table], *, user: str = "") -> Any:
    """The ``intake.readers.entry.Catalog`` of ``tables`` in ``tables_dir``: per table ``<name>`` (pandas),
    ``<name>_dask`` and ``<name>_duckdb``, each with the partition in its metadata."""
    from intake.readers import datatypes, readers
    from intake.readers.entry import Catalog

    cat = Catalog(metadata={"description": "INCloud feature library: the tables you may read", "user": user})
    for table in tables:
        path = (tables_dir / f"{table.name}.parquet").resolve()
        meta = {k: v for k, v in asdict(table).items() if k != "name"}
        data = datatypes.Parquet(url=str(path), metadata=meta)
        for suffix, reader in READERS.items():
            cat[table.name + suffix] = getattr(readers, reader)(data, metadata=meta)
    return cat


def open_catalog(path: Path) -> Any:
    from intake.readers.entry import Catalog

    return Catalog.from_yaml_file(str(path))


def materialise(site: Any, db: "DB", actor: Actor, folder: Path) -> Path:
    """Inside the site (CLI ``incloud features catalog``): ``actor``'s catalog written to ``folder`` directly."""
    tables = manifest(site, db, actor)
    return sync(folder, tables, lambda t, dest: write_table(site, db, actor, t.project, t.pipeline, t.version, dest),
                user=actor.user)


def from_api(client: "Client", folder: Path | None = None) -> Any:
    """In a workstation: sync the user's folder with the API's manifest and open its catalog."""
    folder = Path(folder) if folder is not None else default_folder()
    answer = client._get("api/features/catalog").json()
    tables = [Table(table_name(check_part(t["project"], "project"), check_part(t["pipeline"], "pipeline"),
                               check_part(t["version"], "version")), t["project"], t["pipeline"], t["version"],
                    str(t["stamp"])) for t in answer["tables"]]

    def fetch(table: Table, dest: Path) -> None:
        r = client._get("api/features/catalog/table", {"project": table.project, "pipeline": table.pipeline,
                                                       "version": table.version}, stream=True)
        with open(dest, "wb") as fh:
            for chunk in r.iter_content(1 << 20):
                fh.write(chunk)

    return open_catalog(sync(folder, tables, fetch, user=str(answer.get("user", ""))))


__all__ = ["Table", "READERS", "table_name", "manifest", "write_table", "sync", "build", "open_catalog",
           "materialise", "from_api", "default_folder"]
