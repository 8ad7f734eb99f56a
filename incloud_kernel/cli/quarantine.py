"""``incloud quarantine list|show|release|purge``: review and resolve what ingest, ``incloud deid``, ``incloud deface``
and the archive sweeper held back (``incloud_kernel.quarantine``).

``release`` re-runs the entry's chain, per origin: ingest re-ingests the files into the entry's project; deid
de-identifies the file again into its recorded output folder; deface refaces again into the recorded output;
archive puts a swept orphan back only once a row records it. Success removes the entry; failure keeps it with the
new reason. ``purge`` deletes an entry and needs a reason. Both write an audit event (names, counts, codes: never a
header value) before the entry goes. No output line holds a header value.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from incloud_kernel.errors import ValidationError


def _quarantine(root: Path | None):
    from incloud_kernel.config import get_config
    from incloud_kernel.quarantine import Quarantine

    return Quarantine(root or get_config().quarantine)


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


root_option = click.option("--root", "root", type=click.Path(file_okay=False, path_type=Path), default=None,
                           help="A quarantine folder other than the site's (one given to incloud deface --quarantine).")


@click.group()
def quarantine() -> None:
    """Review what was held back (failed ingests, de-identification, refacing, archive leftovers) and resolve it.

    \b
    incloud quarantine list [--origin ingest|deid|deface|archive]
    incloud quarantine show ENTRY
    incloud quarantine release ENTRY [--project CODE] [--allow-burned-in]
    incloud quarantine purge ENTRY --reason TEXT
    """


@quarantine.command("list")
@root_option
@click.option("--origin", type=click.Choice(["ingest", "deid", "deface", "archive"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(root: Path | None, origin: str | None, as_json: bool) -> None:
    """One line per entry: id, origin, step, files, size, when, reason (never a header value or a path)."""
    q = _quarantine(root)
    entries = q.entries(origin)
    if as_json:
        click.echo(json.dumps([{"id": e.id, "origin": e.origin, "step": e.step, "reason": e.reason,
                                "files": len(e.files), "bytes": e.size, "created": e.created,
                                "attempts": len(e.attempts)} for e in entries], indent=2))
        return
    for e in entries:
        tried = f"  (release tried {len(e.attempts)}x)" if e.attempts else ""
        click.echo(f"{e.id}  {e.origin:7} {e.step:11} {len(e.files):5} file(s) {_size(e.size):>9}  "
                   f"{_when(e.created)}  {e.reason}{tried}")
    click.echo(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
    other = q.unrecorded()
    if other:
        click.echo(f"also {len(other)} folder(s) without a record (being written, or an older layout; inspect by "
                   f"hand under {q.root}): {', '.join(other[:10])}{' ...' if len(other) > 10 else ''}")


@quarantine.command("show")
@click.argument("entry_id")
@root_option
@click.option("--json", "as_json", is_flag=True, help="The record as stored.")
def show(entry_id: str, root: Path | None, as_json: bool) -> None:
    """The entry's record: reason, where it came from, what a release does, its files (name, size, SHA-256)."""
    entry = _quarantine(root).get(entry_id)
    if as_json:
        click.echo(json.dumps(entry.to_record(), indent=2))
        return
    click.echo(f"entry    {entry.id}\norigin   {entry.origin} (step {entry.step}, source {entry.source})\n"
               f"held     {_when(entry.created)}: {entry.reason}\nfolder   {entry.path}")
    click.echo(f"release  {_release_meaning(entry)}")
    if entry.release.get("original"):  # deid: the input's path (the entry holds its identified bytes anyway)
        click.echo(f"original {entry.release['original']}")
    for attempt in entry.attempts:
        click.echo(f"tried    {_when(attempt['at'])} by {attempt['by']}: {attempt['reason']}")
    click.echo(f"files    {len(entry.files)} ({_size(entry.size)})")
    for f in entry.files:
        click.echo(f"  {f.sha256[:16]}  {f.size:>10}  {f.name}")


def _release_meaning(entry) -> str:
    r = entry.release
    if entry.origin == "ingest":
        return f"re-ingest into project {r.get('project') or '(from the ingest journal, or --project)'}"
    if entry.origin == "deid":
        return f"de-identify again into {r.get('out')} (options: {', '.join(r.get('options') or []) or 'none'})"
    if entry.origin == "deface":
        return f"reface again into {r.get('out')}"
    if r.get("kind") == "orphan":
        return "put back into the archive once a row records the file (else purge)"
    return "none: a damaged copy is kept for investigation only (purge it when done)"


@quarantine.command("release")
@click.argument("entry_id")
@root_option
@click.option("--project", default=None, help="Ingest entries without a recorded project: the project to ingest into.")
@click.option("--allow-burned-in", is_flag=True, help="De-identification entries held for possible burned-in text: "
              "a reviewer checked the pixels; pass them this once.")
@click.option("--threads", type=int, default=None, help="SimpleITK threads for deface entries.")
def release(entry_id: str, root: Path | None, project: str | None, allow_burned_in: bool,
            threads: int | None) -> None:
    """Re-run the chain that held ENTRY back; on success the entry is removed, else it stays with the new reason."""
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.quarantine import ReleaseFailed
    from incloud_kernel.site import Site

    q = _quarantine(root)
    entry = q.get(entry_id)
    site = Site.open()
    actor = Actor.console()
    try:
        result = _run_release(site, actor, entry, project=project, allow_burned_in=allow_burned_in,
                              threads=threads)
    except ReleaseFailed as exc:
        q.note_attempt(entry, by=actor.user, reason=exc.reason)
        _audit(site, actor, "quarantine.release_failed", entry, reason=exc.reason)
        raise ReleaseFailed(f"{exc.reason}; entry {entry.id} stays in the quarantine") from None
    _audit(site, actor, "quarantine.release", entry)
    q.remove(entry)
    click.echo(f"released {entry.id}: {result}")


def _run_release(site, actor, entry, *, project: str | None, allow_burned_in: bool, threads: int | None) -> str:
    """Dispatch to the origin's release; any failure becomes ReleaseFailed with a value-free reason."""
    from incloud_kernel.errors import IncloudError
    from incloud_kernel.quarantine import ReleaseFailed

    if project and entry.origin != "ingest":
        raise ValidationError("--project applies to ingest entries only")
    try:
        if entry.origin == "ingest":
            from incloud_kernel.ingest.chain import ChainFailure
            from incloud_kernel.ingest.quarantine import release_ingest

            try:
                return release_ingest(site, entry, project=project)
            except ChainFailure as exc:
                raise ReleaseFailed(f"step {exc.step}: {exc.reason}") from None
        if entry.origin == "deid":
            return _release_deid(site, entry, allow_burned_in)
        if entry.origin == "deface":
            from incloud_kernel.cli.deface import release_deface

            return release_deface(entry, threads=threads)
        from incloud_kernel.archive.integrity import release_archive

        return release_archive(site, actor, entry)
    except (ReleaseFailed, ValidationError):
        raise
    except IncloudError as exc:
        raise ReleaseFailed(getattr(exc, "reason", None) or type(exc).__name__) from None
    except Exception as exc:  # noqa: BLE001 - type only: a message could hold a header value
        raise ReleaseFailed(f"error:{type(exc).__name__}") from None


def _release_deid(site, entry, allow_burned_in: bool) -> str:
    from incloud_kernel.deid.audit import AuditLog
    from incloud_kernel.deid.context import DeidContext
    from incloud_kernel.deid.errors import DeidError
    from incloud_kernel.deid.runner import release_deid
    from incloud_kernel.quarantine import ReleaseFailed

    context = DeidContext.for_site(site, options=tuple(entry.release.get("options") or ()),
                                   allow_burned_in=allow_burned_in or bool(entry.release.get("allow_burned_in")))
    try:
        result = release_deid(entry, context)
    except DeidError as exc:
        raise ReleaseFailed(exc.reason) from None
    with AuditLog(site.config.home) as audit:
        audit.record(result.output, result.record, str(entry.release.get("original") or entry.id))
    return f"written {result.output} under {entry.release['out']}"


@quarantine.command("purge")
@click.argument("entry_id")
@root_option
@click.option("--reason", required=True, help="Why the held data may go (kept in the audit trail).")
def purge(entry_id: str, root: Path | None, reason: str) -> None:
    """Delete ENTRY and its files for good; the audit trail keeps who, when, why, and the files' SHA-256."""
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.site import Site

    why = " ".join(reason.split())
    if len(why) < 3 or len(why) > 200:
        raise ValidationError("--reason must say why, in 3 to 200 characters")
    q = _quarantine(root)
    entry = q.get(entry_id)
    site = Site.open()
    _audit(site, Actor.console(), "quarantine.purge", entry, purge_reason=why)
    q.remove(entry)
    click.echo(f"purged {entry.id}: {len(entry.files)} file(s), {_size(entry.size)}")


def _audit(site, actor, action: str, entry, **detail: object) -> None:
    """One audit event: the entry's origin, step, value-free reason code, file count and checksums."""
    from incloud_kernel.archive.projects import audit
    from incloud_kernel.db import transaction

    with transaction(site.engine) as db:
        audit(db, actor, action, "quarantine", entry.id, origin=entry.origin, step=entry.step,
              held_for=entry.reason, files=len(entry.files), bytes=entry.size,
              sha256=[f.sha256 for f in entry.files][:1000], **detail)
