"""``incloud archive ls|verify|backup|restore|sweep``, ``incloud backup create|restore`` and ``incloud export bids``.

Thin wrappers over ``archive.integrity`` and ``archive.export``: they open the site, pick the actor (the site
console, an explicit site admin, unless ``--as USER``), show a progress bar on stderr for long work and print
text or ``--json`` on stdout. Exit codes: 0 all good; 1 the archive is inconsistent or some files could not
be handled (the report says which); 2-4 one-line errors as everywhere in ``incloud``. Never prints a traceback
or a patient-identifying value.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import click


def _as_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--as", "as_user", metavar="USER",
                        help="Act as this user (its roles and groups) instead of the site console.")(func)


def _json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")(func)


def _open(as_user: str | None) -> tuple[Any, Any]:
    """The open site and the acting user (resolved from the database when ``--as`` is given)."""
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.db import transaction
    from incloud_kernel.site import Site

    site = Site.open()
    if not as_user:
        return site, Actor.console()
    with transaction(site.engine) as db:
        return site, Actor.resolve(db, as_user)


@contextmanager
def _progress(description: str, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A byte-counting progress bar on stderr (hidden when stderr is not a terminal or ``quiet``)."""
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    console = Console(stderr=True)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn(), console=console, transient=True,
                   disable=quiet or not console.is_terminal)
    with bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _emit(as_json: bool, data: dict[str, Any], lines: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        for line in lines:
            click.echo(line)


def _listing(title: str, items: list[str], limit: int = 20) -> list[str]:
    if not items:
        return []
    shown = [f"  {title}: {item}" for item in items[:limit]]
    if len(items) > limit:
        shown.append(f"  ... and {len(items) - limit} more {title} (use --json for all)")
    return shown


@click.group()
def archive() -> None:
    """Look into the archive and keep it whole: list, verify, back up, restore, sweep."""


@archive.command("ls")
@click.argument("project", required=False)
@click.option("--prefix", default=None, help="Only files whose path starts with this (e.g. sub-01/ses-1/).")
@click.option("--page", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--page-size", default=50, show_default=True, type=click.IntRange(1, 1000))
@_json_option
@_as_option
def ls(project: str | None, prefix: str | None, page: int, page_size: int, as_json: bool,
       as_user: str | None) -> None:
    """List recorded files you may read (of PROJECT, or of every project you may read)."""
    from incloud_kernel.archive import permissions as perm
    from incloud_kernel.archive.models import Project
    from incloud_kernel.db import transaction

    site, actor = _open(as_user)
    with transaction(site.engine) as db:
        result = perm.list_files(db, actor, project=project, page=page, page_size=page_size,
                                 relpath_prefix=prefix)
        codes = {p.id: p.code for p in db.query(Project).filter(
            Project.id.in_({f.project_id for f in result.items}))} if result.items else {}
        rows = [{"relpath": f.relpath, "project": codes.get(f.project_id), "kind": f.kind, "size": f.size,
                 "sha256": f.sha256} for f in result.items]
    data = {"page": result.page, "page_size": result.page_size, "has_more": result.has_more, "files": rows}
    lines = [f"{r['project']}\t{r['kind']}\t{r['size']}\t{r['relpath']}" for r in rows] or ["no files"]
    if result.has_more:
        lines.append(f"(more: --page {page + 1})")
    _emit(as_json, data, lines)


@archive.command()
@_json_option
@_as_option
@click.pass_context
def verify(ctx: click.Context, as_json: bool, as_user: str | None) -> None:
    """Re-hash every recorded file; report missing, extra and corrupt files (exit 1 if any)."""
    from incloud_kernel.archive import integrity

    site, actor = _open(as_user)
    with _progress("verifying", as_json) as progress:
        report = integrity.verify(site, actor, progress=progress)
    lines = [("consistent: " if report.consistent else "INCONSISTENT: ") + report.summary()]
    for title, items in (("missing", report.missing), ("extra", report.extra), ("corrupt", report.corrupt),
                         ("temp", report.temp)):
        lines += _listing(title, items)
    if not report.consistent:
        lines.append("  next: 'incloud archive restore' for missing/corrupt files, 'incloud archive sweep' for extra")
    _emit(as_json, report.to_dict(), lines)
    if not report.consistent:
        click.echo(f"error: archive is inconsistent: {report.summary()}", err=True)
        ctx.exit(1)


@archive.command()
@click.option("--full", is_flag=True, help="Re-hash every backup copy instead of trusting the manifest.")
@_json_option
@_as_option
@click.pass_context
def backup(ctx: click.Context, full: bool, as_json: bool, as_user: str | None) -> None:
    """Mirror the archive to the backup root, copying only what changed (by SHA-256)."""
    from incloud_kernel.archive import integrity

    site, actor = _open(as_user)
    with _progress("backing up", as_json) as progress:
        report = integrity.backup(site, actor, full=full, progress=progress)
    lines = [f"backup {report.backup_root}: {len(report.copied)} copied ({report.bytes_copied} bytes), "
             f"{report.unchanged} unchanged, {len(report.corrupt_source)} corrupt and "
             f"{len(report.missing_source)} missing in the archive (not backed up)"]
    lines += _listing("corrupt", report.corrupt_source) + _listing("missing", report.missing_source)
    _emit(as_json, report.to_dict(), lines)
    if not report.complete:
        click.echo("error: some archive files do not match their records and were not backed up; "
                   "run 'incloud archive restore'", err=True)
        ctx.exit(1)


@archive.command()
@click.argument("relpaths", nargs=-1, metavar="[PATH]...")
@_json_option
@_as_option
@click.pass_context
def restore(ctx: click.Context, relpaths: tuple[str, ...], as_json: bool, as_user: str | None) -> None:
    """Bring back lost or corrupt files from the backup (PATHs relative to the archive root; none: every
    damaged file)."""
    from incloud_kernel.archive import integrity

    site, actor = _open(as_user)
    with _progress("restoring", as_json) as progress:
        report = integrity.restore(site, actor, list(relpaths) if relpaths else None, progress=progress)
    lines = [f"restored {len(report.restored)}, already intact {len(report.already_ok)}, "
             f"failed {len(report.failed)}"]
    lines += _listing("restored", report.restored)
    lines += _listing("failed", [f"{r} ({why})" for r, why in report.failed])
    _emit(as_json, report.to_dict(), lines)
    if not report.complete:
        click.echo(f"error: {len(report.failed)} file(s) could not be restored", err=True)
        ctx.exit(1)


@archive.command()
@click.option("--grace", "grace_seconds", default=3600.0, show_default=True, type=click.FloatRange(min=0),
              help="Only touch leftovers at least this many seconds old (a live writer's are younger).")
@click.option("--dry-run", is_flag=True, help="Only report what would be removed or quarantined.")
@_json_option
@_as_option
def sweep(grace_seconds: float, dry_run: bool, as_json: bool, as_user: str | None) -> None:
    """Remove stale temp files and move files without a record to the quarantine (crash leftovers)."""
    from incloud_kernel.archive import integrity

    site, actor = _open(as_user)
    report = integrity.sweep(site, actor, grace_seconds=grace_seconds, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {len(report.removed_temp)} temp file(s), "
             f"{'would quarantine' if dry_run else 'quarantined'} {len(report.quarantined)} unrecorded file(s)"
             + (f" into {report.quarantine_dir}" if report.quarantine_dir else "")
             + (f"; {len(report.too_recent)} younger than {grace_seconds:g} s left alone" if report.too_recent
                else "")]
    lines += _listing("temp", report.removed_temp) + _listing("quarantined", report.quarantined)
    _emit(as_json, report.to_dict(), lines)


@click.group()
def export() -> None:
    """Export data out of the archive."""


@export.command("bids")
@click.argument("project")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@_json_option
@_as_option
def export_bids_cmd(project: str, dest: Path, as_json: bool, as_user: str | None) -> None:
    """Write PROJECT as a valid BIDS dataset into DEST (a new or empty folder)."""
    from incloud_kernel.archive.export import export_bids

    site, actor = _open(as_user)
    with _progress(f"exporting {project}", as_json) as progress:
        report = export_bids(site, actor, project, dest, progress=progress)
    _emit(as_json, report.to_dict(), [
        f"exported project {report.project} to {report.dest}: {report.participants} participants, "
        f"{report.sessions} sessions, {report.files} files ({report.bytes} bytes), "
        f"{report.sidecars_written} sidecars written"])


@click.group("backup")
def site_backup() -> None:
    """Back up and restore the whole site: the database and the archive's files together (docs/backup.md)."""


@site_backup.command("create")
@click.argument("dest", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--keep", default=7, show_default=True, type=click.IntRange(min=1),
              help="Database dumps to keep in DEST/database (older ones are deleted; files are never pruned).")
@click.option("--keys-to", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also copy the site key and the registry key ring here (never inside DEST).")
@_json_option
@_as_option
@click.pass_context
def backup_create(ctx: click.Context, dest: Path | None, keep: int, keys_to: Path | None, as_json: bool,
                  as_user: str | None) -> None:
    """Dump the database into DEST/database, then mirror the archive's files into DEST (default: the backup
    root). Exit 1 when a file changed between the dump and the mirror (run it again)."""
    from incloud_kernel.archive import sitebackup

    site, actor = _open(as_user)
    dest = dest or site.config.backup_root
    with _progress("backing up", as_json) as progress:
        report = sitebackup.create(site, actor, dest, keep=keep, keys_to=keys_to, progress=progress)
    a = report.archive
    lines = [f"backup {report.dest}: database dump {Path(report.dump).name} ({report.backend}, schema "
             f"{report.revision}, {report.rows} file rows); files {len(a['copied'])} copied, {a['unchanged']} "
             f"unchanged; {len(report.pruned)} old dump(s) pruned"]
    lines += _listing("changed during the backup", report.changed)
    lines += _listing("corrupt in the archive (not backed up)", a["corrupt_source"])
    if report.keys_copied:
        lines.append(f"keys copied to {keys_to}: {', '.join(report.keys_copied)}")
    else:
        lines.append("keys: not in this backup (by design); keep the site key and the registry key ring "
                     "elsewhere (--keys-to, a vault)")
    _emit(as_json, report.to_dict(), lines)
    if not report.complete:
        click.echo("error: the backup is not complete: files changed or are corrupt; run it again "
                   "('incloud archive verify' if it repeats)", err=True)
        ctx.exit(1)


@site_backup.command("restore")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--dump", type=click.Path(path_type=Path), default=None,
              help="This dump instead of the newest in DEST/database.")
@click.option("--keys-from", type=click.Path(path_type=Path), default=None,
              help="Put the keys saved with --keys-to back (an existing different key is never overwritten).")
@_json_option
@click.pass_context
def backup_restore(ctx: click.Context, dest: Path, dump: Path | None, keys_from: Path | None,
                   as_json: bool) -> None:
    """Restore the site from DEST into an EMPTY database: the dump, migrations to this version, every recorded
    file. Exit 1 when a file could not be restored or a key the site used is missing."""
    from incloud_kernel.archive import sitebackup
    from incloud_kernel.config import get_config

    with _progress("restoring", as_json) as progress:
        report = sitebackup.restore(get_config(), dest, dump=dump, keys_from=keys_from, progress=progress)
    a = report.archive
    lines = [f"restored database from {Path(report.dump).name} (schema {report.revision_in_dump or '?'} -> "
             f"{report.revision_now}); files restored {len(a['restored'])}, failed {len(a['failed'])}; "
             f"dataset files {report.dataset_files}"]
    lines += _listing("failed", [f"{f['relpath']} ({f['reason']})" for f in a["failed"]])
    if report.keys_restored:
        lines.append(f"keys put back: {', '.join(report.keys_restored)}")
    lines += _listing("key missing", report.keys_missing)
    lines.append("next: 'incloud archive verify'")
    _emit(as_json, report.to_dict(), lines)
    if a["failed"]:
        click.echo(f"error: {len(a['failed'])} file(s) could not be restored", err=True)
        ctx.exit(1)
    if report.keys_missing:
        click.echo("error: the restored site lacks a key it used: put it back (--keys-from, the vault)", err=True)
        ctx.exit(1)
