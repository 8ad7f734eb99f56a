"""``incloud init`` and ``incloud config show``: set up a site and show its effective configuration."""
from __future__ import annotations

import json

import click

from incloud_kernel.config import get_config


@click.command()
def init() -> None:
    """Create the site's folders and database schema (idempotent)."""
    from incloud_kernel.archive.storage import ensure_dataset
    from incloud_kernel.site import Site

    site = Site.open(migrate=True)
    site.ensure_roots()
    ensure_dataset(site.archive_root, name=site.config.site.name)
    click.echo(f"site ready: home {site.config.home}, archive {site.archive_root}")


@click.group()
def config() -> None:
    """Inspect the site configuration."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(as_json: bool) -> None:
    """Print every effective setting and where its value came from (default, file or environment)."""
    cfg = get_config()
    rows = cfg.effective()
    if as_json:
        click.echo(json.dumps([{"name": n, "value": v, "source": s} for n, v, s in rows], indent=2))
        return
    click.echo(f"# config file: {cfg.file or '(none: embedded defaults)'}")
    width = max(len(n) for n, _, _ in rows)
    for name, value, source in rows:
        click.echo(f"{name:<{width}}  {json.dumps(value)}  [{source}]")
