"""``incloud features ...``: query and export the brain feature library, share a project's features, maintain it.

Thin wrappers over ``incloud_kernel.library``. ``--as USER`` queries with that user's rights (the count is the same
for everybody, the rows are that user's); the console is a site admin and lists everything. Errors are one line
(``cli.main``); nothing printed holds more than pseudonymous labels and numbers.
"""
from __future__ import annotations

import json
from typing import Any, Callable

import click

from incloud_kernel.cli.projects import _as_option, _run

_TEXT = ("project", "pipeline", "version", "participant", "session", "sex", "diagnosis", "medication", "scanner",
         "qc", "feature", "atlas", "region")


def _criteria_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Every query criterion as an option (a text option repeated means "any of")."""
    for name in reversed(_TEXT):
        func = click.option(f"--{name}", name, multiple=True, metavar="VALUE",
                            help=f"Only scans whose {name} is this (repeat: any of).")(func)
    func = click.option("--age", metavar="LOW-HIGH", help="Age at scan in years, both ends included.")(func)
    func = click.option("--first-episode/--not-first-episode", "first_episode", default=None)(func)
    func = click.option("--follow-up/--no-follow-up", "follow_up", default=None)(func)
    return func


def _criteria(options: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in options.items():
        if value is None or value == ():
            continue
        out[name] = (value[0] if len(value) == 1 else list(value)) if isinstance(value, tuple) else value
    return out


def _site() -> Any:
    from incloud_kernel.site import Site

    return Site.open()


@click.group()
def features() -> None:
    """The brain feature library: count over all data, list what you may, export, share features."""


@features.command("query")
@_criteria_options
@click.option("--shape", type=click.Choice(["long", "wide"]), default="long", show_default=True)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000), help="Scans to list.")
@click.option("--offset", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_as_option
def query_(shape: str, limit: int, offset: int, as_json: bool, as_user: str | None, **options: Any) -> None:
    """Count the matching scans in every project and list those you may (e.g. --diagnosis SCZ --age 18-40
    --feature gmv --atlas aal --qc pass)."""
    from incloud_kernel.library import query

    criteria = _criteria(options)
    site = _site()
    result = _run(as_user, lambda db, actor: query.search(site, db, actor, limit=limit, offset=offset, **criteria))
    frame = result.frame(shape)
    if as_json:
        click.echo(json.dumps({"count": result.count, "listed": result.listed,
                               "rows": json.loads(frame.to_json(orient="records"))}, indent=2))
        return
    click.echo(f"count: {result.count} matching scans in all projects; you may list {result.listed}")
    if not frame.empty:
        click.echo(frame.to_string(index=False, max_rows=60))


@features.command("export")
@click.argument("dest", type=click.Path(dir_okay=False))
@_criteria_options
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default=None,
              help="File format (default: DEST's ending).")
@click.option("--shape", type=click.Choice(["long", "wide"]), default="long", show_default=True)
@_as_option
def export(dest: str, fmt: str | None, shape: str, as_user: str | None, **options: Any) -> None:
    """Save every matching row you may list to DEST (CSV or Parquet)."""
    from incloud_kernel.library import query

    criteria = _criteria(options)
    site = _site()
    result = _run(as_user, lambda db, actor: query.search(site, db, actor, limit=None, **criteria))
    path = query.export(result.frame(shape), dest, fmt)
    click.echo(f"wrote {result.listed} scans ({len(result.rows)} values) to {path}; count over all data: "
               f"{result.count}")


@features.command("grant")
@click.argument("project")
@click.option("--user", default=None)
@click.option("--group", default=None)
@click.option("--to-project", "to_project", default=None, metavar="CODE", help="Share with that project's members.")
@click.option("--expires", required=True, metavar="YYYY-MM-DD", help="The grant ends at the end of this day (UTC).")
@_as_option
def grant(project: str, user: str | None, group: str | None, to_project: str | None, expires: str,
          as_user: str | None) -> None:
    """Share PROJECT's features (not its images) with a user, a group or a project until a date (owners)."""
    from incloud_kernel.library import sharing

    view = _run(as_user, lambda db, actor: sharing.grant(db, actor, project, expires=expires, user=user,
                                                         group=group, to_project=to_project))
    click.echo(f"grant {view.id}: {view.project} features shared with {view.grantee_kind} {view.grantee} until "
               f"{view.expires_at}")


@features.command("revoke")
@click.argument("grant_id", type=int)
@_as_option
def revoke(grant_id: int, as_user: str | None) -> None:
    """End feature grant GRANT_ID now (owners of its project)."""
    from incloud_kernel.library import sharing

    view = _run(as_user, lambda db, actor: sharing.revoke(db, actor, grant_id))
    click.echo(f"grant {view.id} revoked")


@features.command("grants")
@click.argument("project")
@click.option("--json", "as_json", is_flag=True)
@_as_option
def grants(project: str, as_json: bool, as_user: str | None) -> None:
    """PROJECT's feature grants, newest first (owners)."""
    from incloud_kernel.library import sharing

    views = _run(as_user, lambda db, actor: sharing.list_grants(db, actor, project))
    if as_json:
        click.echo(json.dumps([vars(v) for v in views], indent=2))
        return
    for v in views:
        state = "active" if v.active else ("revoked" if v.revoked_at else "expired")
        click.echo(f"{v.id}\t{v.grantee_kind} {v.grantee}\tuntil {v.expires_at}\t{state}")


@features.command("compact")
@click.option("--project", default=None, metavar="CODE")
def compact(project: str | None) -> None:
    """Merge the library's per-scan files into one file per partition (run after a pipeline run)."""
    from incloud_kernel.library import store

    click.echo(f"{store.compact(_site(), project)} scans in compacted partitions")


@features.command("refresh")
@click.argument("project")
def refresh(project: str) -> None:
    """Take PROJECT's current QC states and participant attributes from the archive into the library."""
    from incloud_kernel.library import store

    site = _site()
    done = _run(None, lambda db, actor: store.refresh(site, db, project))
    click.echo(f"{done} scans refreshed")


@features.command("catalog")
@click.argument("folder", type=click.Path(file_okay=False))
@_as_option
def catalog_(folder: str, as_user: str | None) -> None:
    """Write the Intake catalog of the feature tables you may read (one Parquet per project, pipeline and
    version) to FOLDER (0700): tables no longer permitted are deleted. In a workstation use
    ``incloud_kernel.features.catalog()`` instead (it syncs ~/.incloud/catalog through the API)."""
    from pathlib import Path

    from incloud_kernel.library import catalog

    site = _site()
    path = _run(as_user, lambda db, actor: catalog.materialise(site, db, actor, Path(folder)))
    click.echo(f"wrote {path}")
