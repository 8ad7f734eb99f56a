"""``incloud deid``: de-identify DICOM (PS3.15 Basic Profile + options) and check outputs for leaks.

``incloud deid SRC... -o OUT`` is shorthand for ``incloud deid run SRC... -o OUT``; ``incloud deid verify OUT
--against SRC`` runs the leak checker. Output lines name files and counts, never a header value.
"""
from __future__ import annotations

import sys

import click

from incloud_kernel.errors import IncloudError


class DeidGroup(click.Group):
    """A group whose default subcommand is ``run``: a first argument that is not a subcommand goes to ``run``."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


@click.group(cls=DeidGroup, context_settings={"help_option_names": ["-h", "--help"]})
def deid() -> None:
    """De-identify DICOM files (PS3.15 Basic Profile with options) and verify outputs leak nothing.

    \b
    incloud deid SRC... -o OUT [--option NAME ...] [--jobs N]   (same as: incloud deid run ...)
    incloud deid verify OUT --against SRC
    """


def _option_names() -> list[str]:
    from incloud_kernel.deid.options import OPTIONS

    return list(OPTIONS)


@deid.command("run")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--option", "options", multiple=True, type=click.Choice(_option_names()),
              help="PS3.15 option (repeatable). Default: the site's [deid] options.")
@click.option("--basic-only", is_flag=True, help="Basic profile without any option.")
@click.option("--jobs", "-j", default=1, show_default=True, type=click.IntRange(1, 64), help="Worker processes.")
@click.option("--allow-burned-in", is_flag=True, default=None, help="Pass instances that may carry burned-in text.")
def run(sources: tuple[str, ...], out: str, options: tuple[str, ...], basic_only: bool, jobs: int,
        allow_burned_in: bool | None) -> None:
    """De-identify files, folders, DICOMDIR files and zip archives into OUT/<pseudonym>/<study>/<series>/."""
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from incloud_kernel.deid.audit import AuditLog
    from incloud_kernel.deid.context import DeidContext
    from incloud_kernel.deid.runner import enumerate_jobs, run_batch
    from incloud_kernel.site import Site

    site = Site.open()
    chosen = () if basic_only else (options or None)
    context = DeidContext.for_site(site, options=chosen, allow_burned_in=allow_burned_in)
    job_list = enumerate_jobs(list(sources))
    if not job_list:
        raise IncloudError("no input files found")
    with AuditLog(site.config.home) as audit, Progress(
        TextColumn("de-identifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        transient=True, disable=not sys.stderr.isatty(),
    ) as progress:
        task = progress.add_task("deid", total=len(job_list))

        def on_result(result) -> None:
            if result.status == "done":
                audit.record(result.output, result.record, result.job.label)
            progress.advance(task)

        summary = run_batch(job_list, context, Path(out), site.config.quarantine, n_jobs=jobs, on_result=on_result)
    rate = summary.total / summary.seconds if summary.seconds else 0.0
    click.echo(f"done {summary.done}, quarantined {summary.quarantined}, failed {summary.failed} "
               f"of {summary.total} files in {summary.seconds:.1f} s ({rate:.0f} files/s); options: "
               f"{', '.join(context.options) or 'basic profile only'}")
    for reason, count in sorted(summary.reasons.items()):
        click.echo(f"  {count} x {reason}")
    if summary.quarantined:
        click.echo(f"quarantine: {site.config.quarantine} (incloud quarantine list --origin deid)")
    click.echo(f"audit: {audit.audit_path}")
    if summary.failed:
        sys.exit(1)


@deid.command("verify")
@click.argument("outputs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--against", "sources", multiple=True, required=True, type=click.Path(exists=True),
              help="The identified sources (repeatable).")
def verify_cmd(outputs: tuple[str, ...], sources: tuple[str, ...]) -> None:
    """Search every element and the raw bytes of OUTPUTS for every identifying value of the sources."""
    from incloud_kernel.deid.verify import verify

    report = verify(list(outputs), list(sources))
    for leak in report.leaks:
        click.echo(f"LEAK {leak}")
    for kept in report.retained:  # identifying, but kept where the user chose to keep it: listed, not a leak
        click.echo(f"RETAINED {kept}")
    for same in report.coincidences:  # a coded value equal to the source's own value of that attribute
        click.echo(f"CODED {same}, equal to that attribute's own coded value in the sources")
    click.echo(f"checked {report.outputs} outputs against {report.identities} identifying values from "
               f"{report.sources} sources: {len(report.leaks)} leak(s), {len(report.retained)} value(s) "
               f"retained by option, {len(report.coincidences)} coded coincidence(s)")
    if report.leaks:
        sys.exit(1)
