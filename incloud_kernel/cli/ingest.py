"""``incloud ingest``: run the ingest chain on a folder, zip or DICOMDIR (no network), run the Orthanc ingest
worker, and show what waits, runs and failed."""
from __future__ import annotations

import json
import logging
import signal
import tempfile
import time
import uuid
import zipfile
from dataclasses import asdict
from pathlib import Path

import click

from incloud_kernel.errors import ValidationError


class _IngestGroup(click.Group):
    """``incloud ingest PATH --project P`` as well as ``incloud ingest worker|status``."""

    def resolve_command(self, ctx: click.Context, args: list[str]):  # type: ignore[no-untyped-def]
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["path", *args]
        return super().resolve_command(ctx, args)


@click.group(cls=_IngestGroup)
def ingest() -> None:
    """Bring scans into the archive: de-identify, reface, convert, name in BIDS, archive.

    \b
    incloud ingest PATH --project P   a folder, zip or DICOMDIR, without any network
    incloud ingest worker             follow the DICOM edge (Orthanc) and ingest stable studies
    incloud ingest status             what waits, what runs, what failed and why
    """


def _files_of(path: Path, scratch: Path) -> list[Path]:
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for member in zf.infolist():
                target = (scratch / member.filename).resolve()
                if not str(target).startswith(str(scratch.resolve())):
                    raise ValidationError(f"zip {path.name} holds an unsafe path")
            zf.extractall(scratch)
        path = scratch
    if path.is_file():
        path = path.parent  # a DICOMDIR (or one file): its folder tree holds the instances
    if not path.is_dir():
        raise ValidationError(f"{path} is not a folder, zip or DICOMDIR")
    return sorted(p for p in path.rglob("*") if p.is_file())


@ingest.command("path", hidden=True)
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--project", "-p", required=True, help="Project code the studies go to.")
def ingest_path(path: Path, project: str) -> None:
    """Ingest a folder, zip or DICOMDIR into PROJECT (same chain as the worker; failures go to quarantine)."""
    from incloud_kernel.ingest.chain import ChainFailure, IngestChain
    from incloud_kernel.ingest.quarantine import quarantine_held_back, quarantine_study
    from incloud_kernel.site import Site

    site = Site.open()
    site.ensure_roots()
    job_id = f"job-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(dir=site.config.spool) as scratch:
        files = _files_of(path, Path(scratch))
        click.echo(f"{job_id}: {len(files)} file(s) to read", err=True)
        chain = IngestChain(site)
        try:
            outcomes = chain.run_files(files, project, job_id=job_id)
        except ChainFailure as exc:
            quarantine_study(site.config.quarantine, job_id, files, reason=exc.reason, step=exc.step,
                             source="path", project=project)
            raise ValidationError(f"{job_id} quarantined at step {exc.step}: {exc.reason}") from None
        held = quarantine_held_back(site.config.quarantine, job_id, outcomes, source="path")
    for folder in held:
        click.echo(f"held back  {folder.name} (quarantined): see incloud quarantine show {folder.name}", err=True)
    for outcome in outcomes:
        for s in outcome.series:
            click.echo(f"{s.status:10} series {s.series_id or '-'} {s.name}")


@ingest.command("worker")
@click.option("--once", is_flag=True, help="Handle what is stable now, then exit.")
def worker(once: bool) -> None:
    """Follow Orthanc's change feed and ingest every stable study (stop with SIGTERM or Ctrl-C)."""
    from incloud_kernel.ingest.feed import IngestWorker
    from incloud_kernel.site import Site

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    site = Site.open()
    site.ensure_roots()
    w = IngestWorker(site)
    if once:
        w.acquire()
        w.sweep()
        w.poll_once()
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: w.stop_event.set())
    click.echo("ingest worker running", err=True)
    w.run_forever()
    click.echo("ingest worker stopped", err=True)


@ingest.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """What waits in Orthanc, what is in progress, what failed and why."""
    from incloud_kernel.ingest.status import ingest_status
    from incloud_kernel.site import Site

    st = ingest_status(Site.open())
    if as_json:
        click.echo(json.dumps(asdict(st), indent=2, default=str))
        return
    if st.orthanc_reachable:
        click.echo(f"waiting in Orthanc: {st.waiting_studies} stud(y/ies), {st.waiting_instances} instance(s)")
    else:
        click.echo("waiting in Orthanc: unknown (Orthanc not reachable)")
    click.echo(f"change feed cursor: {st.cursor}")
    click.echo(f"in progress: {len(st.in_progress)}")
    for j in st.in_progress:
        click.echo(f"  {j['job_id']}  {j.get('instances', '?')} instance(s)  project {j.get('project', '?')}")
    click.echo(f"interrupted (worker gone, not yet retried): {len(st.interrupted)}")
    for j in st.interrupted:
        worker = j.get("worker") or {}
        click.echo(f"  {j['job_id']}  worker pid {worker.get('pid', '?')} on {worker.get('host', '?')}: "
                   "no heartbeat; the next worker ingests the study again")
    click.echo(f"waiting for a retry: {len(st.retrying)}")
    for r in st.retrying:
        click.echo(f"  orthanc study {r['orthanc_study']}  attempt(s) failed {r.get('failures')}  "
                   f"step {r.get('step')}: {r.get('reason')}")
    click.echo(f"failed (quarantined): {len(st.failed)}")
    for f in st.failed:
        click.echo(f"  {f['job_id']}  step {f['step']}: {f['reason']}")
    if st.recent:
        click.echo("recent:")
        for j in st.recent:
            retry = f"  retried by {j['retried_by']}" if j.get("retried_by") else ""
            click.echo(f"  {j['job_id']}  {j.get('state')}  project {j.get('project', '-')}{retry}")
