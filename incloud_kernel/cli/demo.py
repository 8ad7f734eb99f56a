"""``incloud demo populate``: the embedded demo's QC, features, CADS model and first report (``incloud_kernel.demo``).

README command A (``scripts/start.sh``) runs it in the background as the service user after the hub started
(never as root: start.sh runs every INCloud command through ``as_service``); it is safe to run again (done steps
are skipped).
"""
from __future__ import annotations

import fcntl
from pathlib import Path

import click


@click.group()
def demo() -> None:
    """The embedded demo site's content."""


@demo.command()
@click.option("--project", default="DEMO", show_default=True, help="The demo project.")
@click.option("--clinician", default="clinician", show_default=True, help="The demo user who opens the report.")
def populate(project: str, clinician: str) -> None:
    """Run the demo through QC, features, the library, a CADS model and a report, then print what to open."""
    from incloud_kernel import demo as content
    from incloud_kernel.site import Site, private_dir

    site = Site.open()
    lock = (private_dir(Path(site.config.home) / "demo") / "populate.lock").open("w")
    try:  # a second start.sh while the first one's populate still runs: that one finishes the job
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        click.echo("the demo is being populated by another process already: nothing to do")
        return
    summary = content.populate(site, project=project, clinician=clinician, say=click.echo)
    click.echo("what to open first:")
    for line in content.what_to_open(summary, project):
        click.echo(f"  {line}")
