"""``incloud serve``: long-running services of a site. ``incloud serve dicom`` runs the DICOM edge (Orthanc)."""
from __future__ import annotations

import logging

import click


@click.group()
def serve() -> None:
    """Run a site service in the foreground (the hub runs them as managed services)."""


@serve.command("dicom")
@click.option("--write-config-only", is_flag=True, help="Write Orthanc's configuration and exit.")
def dicom(write_config_only: bool) -> None:
    """Configure Orthanc from the site config and run it under supervision (restart on crash, clean stop)."""
    from incloud_kernel.config import get_config
    from incloud_kernel.dicom.orthanc_config import OrthancPaths, rest_url, write_config
    from incloud_kernel.dicom.supervisor import OrthancSupervisor
    from incloud_kernel.errors import ConfigError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = get_config()
    config_file, creds = write_config(config)
    if write_config_only:
        click.echo(f"Orthanc configuration written to {config_file}")
        return
    paths = OrthancPaths.of(config)
    d = config.dicom
    if d.scrub_quiet_time <= 0:
        raise ConfigError("dicom.scrub_quiet_time must be a positive number of seconds")
    supervisor = OrthancSupervisor(d.orthanc_binary, config_file, rest_url(config),
                                   (creds.username, creds.password), paths.log_file, paths.pid_file,
                                   index_file=None if d.index_database_url else paths.index / "index",
                                   scrub_quiet=d.scrub_quiet_time)

    def ready() -> None:
        click.echo(f"DICOM edge ready: AE {d.ae_title} on port {d.port}, REST on {rest_url(config)} "
                   f"(credentials in {config.home}/orthanc-credentials.json)", err=True)

    supervisor.run_forever(on_ready=ready)
    click.echo("DICOM edge stopped", err=True)
