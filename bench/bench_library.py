"""Benchmark: the feature library's filtered count plus the first 100 permitted scans, against pandas and one file.

Builds a synthetic library of ``--scans`` scans x 1,000 features (``--full``: 1,000,000 scans, 1e9 values) with
realistic attribute distributions, written straight into the library's layout (``library.store``: one scan-row
file and one long value file per project/pipeline/version partition, values sorted by atlas, feature, series,
region in 64 Ki-row groups) by DuckDB, so nothing holds 1e9 values in memory. 40 projects of Zipf-like sizes; the
asking user is a member of 3 and holds feature grants for 2 (rows from 5 projects, the count over all 40).

The query (the issue's example): diagnosis SCZ, age 18-40, feature gmv, atlas aal (116 regions), QC pass ->
the count over all data (masked below 5) and the first 100 permitted matching scans with their 116 values each.
Three ways, each in its own process (so each one's peak memory is its own), ``--repeats`` timed runs after one
warm-up, median reported:

- ``library``: ``incloud_kernel.library.query.search`` as the API calls it: the user's projects from the site's
  database (SQLite here), the count and page over the process's in-memory scan index (loaded from the scan
  Parquet at the first query: "1st ms"), values from the partitioned Parquet, and the query's audit event;
- ``pandas``: the same scans and values already in memory (scan table as a DataFrame, values as one float32
  array scans x 1,000 features; loading not timed), filtered with boolean masks;
- ``duckdb-one-file``: DuckDB over one unpartitioned Parquet file holding every value row with its scan's
  attributes (the layout without partitions or a separate scan table).

    python bench/bench_library.py                 # 20,000 scans (2e7 values): the session's scaled run
    python bench/bench_library.py --full          # 1,000,000 scans (1e9 values): ~6 GB of Parquet, ~4 GB RAM for pandas
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

#: 1,000 features: (atlas, feature, regions).
FEATURE_SETS = [("aal", "gmv", 116), ("aal", "alff", 116), ("aal", "reho", 116), ("harvardoxford", "thickness", 96),
                ("harvardoxford", "gmv", 96), ("aicha", "gmv", 192), ("jhu", "fa", 48), ("jhu", "md", 48),
                ("jhu", "ad", 48), ("jhu", "rd", 48), ("brodmann", "alff", 76)]
assert sum(n for _, _, n in FEATURE_SETS) == 1000
PROJECTS = [f"P{n:02d}" for n in range(40)]
MEMBER_OF, GRANTED = ["P00", "P07", "P21"], ["P03", "P30"]
USER = "ana"
CRITERIA: dict[str, Any] = {"diagnosis": "SCZ", "age": (18, 40), "feature": "gmv", "atlas": "aal", "qc": "pass"}
LIMIT = 100


def _sizes(total: int) -> list[int]:
    """Zipf-like project sizes summing to ``total``."""
    weights = [1 / (k + 1) ** 0.8 for k in range(len(PROJECTS))]
    sizes = [int(total * w / sum(weights)) for w in weights]
    sizes[0] += total - sum(sizes)
    return sizes


# -- data ---------------------------------------------------------------------------------------------------------

SCAN_SQL = """
SELECT series, participant, '1' AS session, NULL::BIGINT AS provenance,
  CASE WHEN r1 < 0.52 THEN 'F' ELSE 'M' END AS sex,
  round(greatest(18, least(80, 36 + 12 * sqrt(-2 * ln(greatest(r2, 1e-9))) * cos(2 * pi() * r3))), 1) AS age,
  CASE WHEN r4 < 0.9 THEN 'R' ELSE 'L' END AS handedness,
  CASE WHEN r5 < 0.45 THEN ['HC'] WHEN r5 < 0.65 THEN ['SCZ'] WHEN r5 < 0.75 THEN ['BD'] WHEN r5 < 0.90 THEN ['MDD']
       WHEN r5 < 0.95 THEN ['ASD'] ELSE ['BD', 'SCZ'] END AS diagnosis,
  CASE WHEN r5 >= 0.45 AND r5 < 0.75 THEN r6 < 0.3 ELSE NULL END AS first_episode,
  CASE WHEN r5 < 0.45 THEN NULL WHEN r5 < 0.65 THEN 'olanzapine' WHEN r5 < 0.75 THEN 'lithium'
       ELSE 'sertraline' END AS medication,
  r7 < 0.2 AS follow_up, 'scanner-' || (series % 3)::VARCHAR || '-' || ? AS scanner,
  CASE WHEN r8 < 0.85 THEN 'pass' WHEN r8 < 0.92 THEN 'caveat' WHEN r8 < 0.97 THEN 'fail' ELSE 'pending' END AS qc,
  ? AS feature_sets, TIMESTAMPTZ '2026-12-01 00:00:00+00' AS published_at
FROM (SELECT range AS series, 'S' || range::VARCHAR AS participant, random() AS r1, random() AS r2, random() AS r3,
             random() AS r4, random() AS r5, random() AS r6, random() AS r7, random() AS r8
      FROM range(?, ?)) ORDER BY series
"""


def build(data: Path, scans: int) -> dict[str, Any]:
    """The site (SQLite: projects, memberships, grants) and the library's Parquet under ``data``."""
    import duckdb

    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.archive.projects import create_project, grant
    from incloud_kernel.config import load_config
    from incloud_kernel.db import transaction
    from incloud_kernel.library import sharing
    from incloud_kernel.library.store import VALUE_ROW_GROUP, bump_generation, partition_dir
    from incloud_kernel.site import Site

    env = _env(data)
    site = Site.open(load_config(env=env), migrate=True)
    admin = Actor.console("bench")
    with transaction(site.engine) as db:
        for code in PROJECTS:
            create_project(db, admin, code, owner="owner")
        for code in MEMBER_OF:
            grant(db, admin, code, USER, "member")
        for code in GRANTED:
            sharing.grant(db, admin, code, user=USER, expires="2099-12-31")
    root = data / "library"
    sets = [f"{a}:{f}" for a, f, _ in FEATURE_SETS]
    started, first = time.perf_counter(), 0
    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = true")
    con.execute("CREATE TABLE regions AS SELECT * FROM (VALUES " + ", ".join(
        f"({k}, '{a}', '{f}', {n})" for k, (a, f, n) in enumerate(FEATURE_SETS)) + ") t(k, atlas, feature, n)")
    for code, size in zip(PROJECTS, _sizes(scans)):
        scan_file = partition_dir(root, "scans", code, "features", "1") / "part-0.parquet"
        value_file = partition_dir(root, "values", code, "features", "1") / "part-0.parquet"
        scan_file.parent.mkdir(parents=True, exist_ok=True)
        value_file.parent.mkdir(parents=True, exist_ok=True)
        con.execute(f"CREATE OR REPLACE TABLE s AS {SCAN_SQL}", [code, sets, first, first + size])
        con.execute(f"COPY s TO '{scan_file}' (FORMAT parquet, COMPRESSION zstd)")
        # Values in the order the library's compaction writes them: atlas, feature, series, region.
        parts = []
        for atlas, feature, n in sorted(FEATURE_SETS, key=lambda t: (t[0], t[1])):
            parts.append(
                f"SELECT {first} + (i // {n}) AS series, '{atlas}' AS atlas, "
                f"'R' || lpad(((i % {n}) + 1)::VARCHAR, 3, '0') AS region, '{feature}' AS feature, "
                f"(1000 + 50 * (i % {n})) * (0.9 + 0.2 * random()) AS value, 'mm3' AS unit, "
                f"TIMESTAMPTZ '2026-12-01 00:00:00+00' AS published_at FROM range({size * n}) t(i)")
        con.execute(f"COPY ({' UNION ALL '.join(parts)}) TO '{value_file}' "
                    f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {VALUE_ROW_GROUP})")
        first += size
    # The unpartitioned baseline: every value row with its scan's attributes, one file.
    one = data / "one-file.parquet"
    con.execute(f"""COPY (SELECT v.*, s.* EXCLUDE (series, published_at, feature_sets)
        FROM read_parquet('{root}/values/*/*/*/*.parquet', hive_partitioning = true) v
        JOIN read_parquet('{root}/scans/*/*/*/*.parquet', hive_partitioning = true) s USING (project, series))
        TO '{one}' (FORMAT parquet, COMPRESSION zstd)""")
    con.close()
    bump_generation(root)  # what store.publish/compact do after writing scan files
    size = sum(p.stat().st_size for p in root.rglob("*.parquet"))
    return {"build_s": round(time.perf_counter() - started, 1), "library_bytes": size,
            "one_file_bytes": one.stat().st_size, "scans": scans, "values": scans * 1000}


def _env(data: Path) -> dict[str, str]:
    return {"INCLOUD_HOME": str(data / "home"), "INCLOUD_LIBRARY_ROOT": str(data / "library"),
            "INCLOUD_DATABASE_URL": f"sqlite:///{data / 'home' / 'incloud.sqlite'}"}


# -- the three ways, each in a worker process --------------------------------------------------------------------

def _library(data: Path) -> Any:
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.config import load_config
    from incloud_kernel.db import transaction
    from incloud_kernel.library import query
    from incloud_kernel.site import Site

    site = Site.open(load_config(env=_env(data)))

    def run() -> tuple[Any, int]:
        with transaction(site.engine) as db:
            result = query.search(site, db, Actor.resolve(db, USER), limit=LIMIT, **CRITERIA)
        return result.count, result.rows["series"].nunique()
    return run


def _pandas(data: Path) -> Any:
    import numpy as np
    import pandas as pd

    root = data / "library"
    scans = pd.read_parquet(root / "scans")  # hive partitions -> project column
    scans["project"] = scans["project"].astype(str)
    scans = scans.sort_values(["project", "series"]).reset_index(drop=True)
    position = pd.Series(np.arange(len(scans)), index=scans["series"].to_numpy())
    values = np.zeros((len(scans), sum(n for _, _, n in FEATURE_SETS)), dtype=np.float32)
    start = 0
    offsets = {}
    for a, f, n in FEATURE_SETS:
        offsets[(a, f)] = (start, n)
        start += n
    for path in (root / "values").rglob("*.parquet"):
        # One feature set at a time (Parquet filters), so the temporaries stay one set of one project: rows are
        # sorted by series then zero-padded region, so each set is a (scans x regions) block already.
        for a, f, n in FEATURE_SETS:
            part = pd.read_parquet(path, columns=["series", "value"],
                                   filters=[("atlas", "=", a), ("feature", "=", f)])
            block = part["value"].to_numpy(dtype=np.float32).reshape(-1, n)
            rows = position.loc[part["series"].to_numpy()[::n]].to_numpy()
            off = offsets[(a, f)][0]
            values[rows, off:off + n] = block
            del part, block
    allowed = set(MEMBER_OF + GRANTED)
    diagnosis_scz = scans["diagnosis"].map(lambda d: "SCZ" in d).to_numpy()
    off, n = offsets[("aal", "gmv")]

    def run() -> tuple[Any, int]:
        low, high = CRITERIA["age"]
        match = (diagnosis_scz & scans["age"].between(low, high).to_numpy()
                 & (scans["qc"] == "pass").to_numpy())
        count = int(match.sum())
        permitted = match & scans["project"].isin(allowed).to_numpy()
        page = scans[permitted].head(LIMIT)
        block = values[page.index.to_numpy(), off:off + n]
        rows = pd.DataFrame(block, index=page["series"]).stack()
        return (f"< 5" if 0 < count < 5 else count), rows.index.get_level_values(0).nunique()
    return run


def _one_file(data: Path) -> Any:
    import duckdb

    path = str(data / "one-file.parquet")
    allowed = MEMBER_OF + GRANTED
    low, high = CRITERIA["age"]
    where = "list_contains(diagnosis, 'SCZ') AND age BETWEEN ? AND ? AND qc = 'pass' AND atlas = 'aal' " \
            "AND feature = 'gmv'"

    def run() -> tuple[Any, int]:
        with duckdb.connect() as con:
            count = con.execute(f"SELECT count(DISTINCT series) FROM read_parquet(?) WHERE {where}",
                                [path, low, high]).fetchone()[0]
            rows = con.execute(
                f"WITH s AS (SELECT DISTINCT project, series FROM read_parquet(?) WHERE {where} AND project IN "
                f"({', '.join('?' * len(allowed))}) ORDER BY project, series LIMIT {LIMIT}) "
                f"SELECT f.* FROM read_parquet(?) f JOIN s USING (project, series) WHERE {where}",
                [path, low, high, *allowed, path, low, high]).fetchdf()
        return (f"< 5" if 0 < count < 5 else int(count)), rows["series"].nunique()
    return run


WAYS = {"library": _library, "pandas": _pandas, "duckdb-one-file": _one_file}


def worker(way: str, data: Path, repeats: int) -> dict[str, Any]:
    started = time.perf_counter()
    run = WAYS[way](data)
    load = time.perf_counter() - started
    t0 = time.perf_counter()
    answer = run()  # warm-up (and the answer every way must agree on); the library loads its scan index here
    cold = (time.perf_counter() - t0) * 1000
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1000)
    return {"way": way, "load_s": round(load, 2), "cold_ms": round(cold), "median_ms": round(statistics.median(times), 1),
            "min_ms": round(min(times), 1), "max_ms": round(max(times), 1), "count": answer[0],
            "listed_scans": answer[1], "peak_rss_mb": _peak_mb()}


def _peak_mb() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it does not carry the parent's peak over
    the exec that started the worker)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


@click.command()
@click.option("--scans", default=20_000, show_default=True, help="Scans (each with 1,000 features).")
@click.option("--full", is_flag=True, help="1,000,000 scans: the issue's size (for a machine left alone).")
@click.option("--repeats", default=7, show_default=True)
@click.option("--data", type=click.Path(file_okay=False), default=None, help="Keep the data here (default: temp).")
@click.option("--worker", "way", type=click.Choice(sorted(WAYS)), default=None, hidden=True)
def main(scans: int, full: bool, repeats: int, data: str | None, way: str | None) -> None:
    if way:
        click.echo(json.dumps(worker(way, Path(data or "."), repeats)))
        return
    scans = 1_000_000 if full else scans
    with tempfile.TemporaryDirectory(prefix="bench_library_") as tmp:
        folder = Path(data) if data else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        built = build(folder, scans) if not (folder / "one-file.parquet").exists() else {"reused": str(folder)}
        click.echo(f"data: {json.dumps(built)}")
        click.echo(f"query: {CRITERIA}, first {LIMIT} permitted scans; user member of {len(MEMBER_OF)} projects, "
                   f"grants for {len(GRANTED)}, of {len(PROJECTS)}")
        results = []
        for name in WAYS:
            proc = subprocess.run([sys.executable, __file__, "--worker", name, "--data", str(folder), "--repeats",
                                   str(repeats)], capture_output=True, text=True, env={**os.environ, **_env(folder)})
            if proc.returncode != 0:
                click.echo(f"{name}: failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        click.echo(f"{'way':<16} {'median ms':>10} {'min':>8} {'max':>8} {'load s':>8} {'1st ms':>8} "
                   f"{'peak RSS MB':>12} {'count':>8} {'scans':>6}")
        for r in results:
            click.echo(f"{r['way']:<16} {r['median_ms']:>10} {r['min_ms']:>8} {r['max_ms']:>8} {r['load_s']:>8} "
                       f"{r['cold_ms']:>8} "
                       f"{r['peak_rss_mb']:>12} {str(r['count']):>8} {r['listed_scans']:>6}")
        if len({str(r["count"]) for r in results}) > 1 or len({r["listed_scans"] for r in results}) > 1:
            click.echo("WARNING: the ways disagree on the answer")
        click.echo(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
