"""``incloud pipeline list|run|status|cancel|resume``: processing runs on Dask from the site's command line.

``run`` creates the run and drives it here with a progress bar on stderr (or ``--detach``: a background driver
whose output goes to ``$INCLOUD_HOME/pipeline-logs/``); ``resume`` drives a run whose driver was killed.
Acts as the site console unless ``--as USER``. Never prints a traceback, a token or a patient-identifying value.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from incloud_kernel.cli.archive import _as_option, _json_option, _open


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v))


def _counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in counts.items() if n) or "no tasks"


@click.group()
def pipeline() -> None:
    """Run pipelines (QC, features) over a project's archived series on Dask (local or Slurm)."""


@pipeline.command("list")
@_json_option
def list_cmd(as_json: bool) -> None:
    """The pipelines this site knows: name, version, stages, and whether they need QC-usable series."""
    from incloud_kernel.pipeline.pipeline import available

    rows = [{"name": p.name, "version": p.version, "stages": [f"{s.name} {s.version}" for s in p.stages],
             "requires_qc": p.requires_qc, "description": p.description} for p in available()]
    if as_json:
        click.echo(_dump(rows))
        return
    for r in rows:
        click.echo(f"{r['name']}\t{r['version']}\t{', '.join(r['stages'])}\t"
                   f"{'usable series only' if r['requires_qc'] else 'every series'}\t{r['description']}")


def _drive(site: Any, run_id: int, quiet: bool) -> str:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from incloud_kernel.pipeline.executor import drive

    console = Console(stderr=True)
    bar = Progress(TextColumn(f"run #{run_id}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console, transient=False,
                   disable=quiet or not console.is_terminal)
    with bar:
        task = bar.add_task("run", total=None, detail="starting the cluster")

        def update(counts: dict[str, int]) -> None:
            finished = counts["done"] + counts["failed"] + counts["cancelled"]
            bar.update(task, completed=finished, total=sum(counts.values()), detail=_counts_line(counts))

        return drive(site, run_id, on_progress=update)


@pipeline.command()
@click.argument("name")
@click.argument("project")
@click.option("--detach", is_flag=True, help="Drive the run in the background and return its id at once.")
@click.option("--once", is_flag=True, help="Start nothing if a run of this pipeline version over PROJECT is "
              "waiting, going or has ended (cancelled ones aside): a start script's first computation.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_json_option
@_as_option
@click.pass_context
def run(ctx: click.Context, name: str, project: str, detach: bool, once: bool, quiet: bool, as_json: bool,
        as_user: str | None) -> None:
    """Run pipeline NAME over PROJECT's series (exit 1 if some input failed; 'status' says which)."""
    from incloud_kernel.db import transaction
    from incloud_kernel.pipeline import runs
    from incloud_kernel.pipeline.pipeline import get

    site, actor = _open(as_user)
    with transaction(site.engine) as db:
        earlier = [r for r in runs.list_runs(db, actor, project) if r.pipeline == name
                   and r.version == get(name).version and r.state != runs.CANCELLED] if once else []
        if earlier:
            click.echo(_dump({"run": earlier[0].id, "state": earlier[0].state, "started": False}) if as_json
                       else f"run #{earlier[0].id} of {name} over {project} exists ({earlier[0].state}): "
                            "nothing started")
            return
        row = runs.create_run(db, actor, name, project, backend=site.config.compute.backend)
        run_id, total = row.id, len(row.tasks)
    if detach:
        from incloud_kernel.pipeline.executor import spawn_driver

        spawn_driver(site.config.home, run_id)
        click.echo(_dump({"run": run_id, "tasks": total, "state": "waiting"}) if as_json
                   else f"run #{run_id}: {total} task(s), driving in the background "
                        f"('incloud pipeline status {run_id}')")
        return
    _finish(ctx, site, actor, run_id, _drive(site, run_id, quiet or as_json), as_json)


@pipeline.command()
@click.argument("run_id", type=int)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_json_option
@_as_option
@click.pass_context
def resume(ctx: click.Context, run_id: int, quiet: bool, as_json: bool, as_user: str | None) -> None:
    """Drive RUN_ID again after its driver was killed: finished inputs are not recomputed."""
    from incloud_kernel.db import transaction
    from incloud_kernel.pipeline import runs

    site, actor = _open(as_user)
    with transaction(site.engine) as db:
        runs.get_run(db, actor, run_id, "manage")
    _finish(ctx, site, actor, run_id, _drive(site, run_id, quiet or as_json), as_json)


def _finish(ctx: click.Context, site: Any, actor: Any, run_id: int, state: str, as_json: bool) -> None:
    from incloud_kernel.db import transaction
    from incloud_kernel.pipeline import runs

    with transaction(site.engine) as db:
        report = runs.progress(db, actor, run_id, site.config.compute.heartbeat_interval, with_tasks=as_json)
    click.echo(_dump(report) if as_json else f"run #{run_id} {state}: {_counts_line(report['counts'])}")
    if state == "failed":
        ctx.exit(1)


@pipeline.command()
@click.argument("run_id", type=int, required=False)
@click.option("--project", default=None, help="Only runs of this project (without RUN_ID).")
@click.option("--tasks", "show_tasks", is_flag=True, help="Every input: state, attempts, error, outputs.")
@_json_option
@_as_option
def status(run_id: int | None, project: str | None, show_tasks: bool, as_json: bool, as_user: str | None) -> None:
    """Progress of RUN_ID per stage and subject (without RUN_ID: the newest runs you may see)."""
    from incloud_kernel.db import transaction
    from incloud_kernel.pipeline import runs

    site, actor = _open(as_user)
    beat = site.config.compute.heartbeat_interval
    with transaction(site.engine) as db:
        if run_id is None:
            rows = [runs.progress(db, actor, r.id, beat, with_tasks=False) for r in runs.list_runs(db, actor, project)]
            if as_json:
                click.echo(_dump(rows))
            for r in [] if as_json else rows:
                click.echo(f"#{r['run']}\t{r['project']}\t{r['pipeline']} {r['version']}\t"
                           f"{'interrupted' if r['interrupted'] else r['state']}\t{_counts_line(r['counts'])}")
            return
        report = runs.progress(db, actor, run_id, beat, with_tasks=show_tasks or as_json)
    if report.get("dashboard"):  # a path behind the hub's proxy: on the hub's public address
        from urllib.parse import urlparse

        hub = urlparse(site.config.hub.bind_url)
        report["dashboard"] = f"{hub.scheme}://{hub.netloc}{report['dashboard']}"
    if as_json:
        click.echo(_dump(report))
        return
    state = "interrupted (driver gone: 'incloud pipeline resume')" if report["interrupted"] else report["state"]
    click.echo(f"run #{report['run']} {report['pipeline']} {report['version']} on {report['project']}: {state}; "
               f"{_counts_line(report['counts'])} of {report['total']} ({report['reused']} reused)")
    if report.get("dashboard"):
        click.echo(f"  dashboard (yours only, while it runs): {report['dashboard']}")
    for stage, counts in report["stages"].items():
        click.echo(f"  stage {stage}: {_counts_line(counts)}")
    for subject, counts in report["subjects"].items():
        click.echo(f"  sub-{subject}: {_counts_line(counts)}")
    for t in report.get("tasks", []):
        click.echo(f"  {t['stage']}\tseries #{t['series']}\tsub-{t['subject']}\t{t['state']}\t"
                   f"attempts {t['attempts']}\t{t['error'] or ', '.join(t['outputs'])}")


@pipeline.command()
@click.argument("run_id", type=int)
@_json_option
@_as_option
def provenance(run_id: int, as_json: bool, as_user: str | None) -> None:
    """How each derivative of RUN_ID was made: versions, parameters, inputs' checksums, libraries, image, host."""
    from incloud_kernel.db import transaction
    from incloud_kernel.pipeline import runs

    site, actor = _open(as_user)
    with transaction(site.engine) as db:
        records = runs.provenance_of(db, actor, run_id)
    if as_json:
        click.echo(_dump(records))
        return
    if not records:
        click.echo(f"run #{run_id} has no derivative yet")
    for r in records:
        libraries = ", ".join(f"{k} {v}" for k, v in sorted(r["libraries"].items()))
        click.echo(f"{r['stage']} {r['stage_version']} ({r['pipeline']} {r['pipeline_version']})\tseries "
                   f"#{r['series']}\tsub-{r['subject']}{' (reused)' if r['reused'] else ''}\t{r['host']}, "
                   f"{r['runtime_seconds']:.1f} s")
        click.echo(f"  parameters: {json.dumps(r['parameters'], sort_keys=True)}")
        for i in r["inputs"]:
            click.echo(f"  input {i['relpath']}  sha256 {i['sha256']}")
        click.echo(f"  libraries: {libraries}")
        for o in r["outputs"]:
            click.echo(f"  output {o}")


@pipeline.command()
@click.argument("run_id", type=int)
@_as_option
def cancel(run_id: int, as_user: str | None) -> None:
    """Cancel RUN_ID: waiting inputs are dropped, running ones finish, the run ends cancelled."""
    from incloud_kernel.db import transaction
    from incloud_kernel.pipeline import runs

    site, actor = _open(as_user)
    with transaction(site.engine) as db:
        row = runs.cancel(db, actor, run_id, site.config.compute.heartbeat_interval)
        click.echo(f"run #{run_id}: {row.state}")
