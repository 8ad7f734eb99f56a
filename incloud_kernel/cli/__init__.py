"""The one ``incloud`` command; each component adds its subcommands in ``COMMANDS`` below.

Subcommands are imported lazily, so ``incloud --version`` does not pay for pydicom, SimpleITK or Dask.
Errors: an ``IncloudError`` becomes ``error: <one line>`` and its exit code; anything unexpected becomes a
one-line ``internal error`` naming only the exception type (a message could hold a header value), with the
traceback shown only when ``INCLOUD_DEBUG=1``. Every command runs with umask 077 (``site.restrict_umask``): what
it writes is the service user's alone (docs/security.md).
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from incloud_kernel import __version__
from incloud_kernel.errors import IncloudError

#: name -> "module:attribute" of a click command or group. A component registers itself with one line here.
COMMANDS: dict[str, str] = {
    "init": "incloud_kernel.cli.site:init",
    "config": "incloud_kernel.cli.site:config",
    "projects": "incloud_kernel.cli.projects:projects",
    "grant": "incloud_kernel.cli.projects:grant",
    "archive": "incloud_kernel.cli.archive:archive",
    "backup": "incloud_kernel.cli.archive:site_backup",
    "export": "incloud_kernel.cli.archive:export",
    "synth": "incloud_kernel.cli.synth:synth",
    "deid": "incloud_kernel.cli.deid:deid",
    "deface": "incloud_kernel.cli.deface:deface",
    "serve": "incloud_kernel.cli.serve:serve",
    "ingest": "incloud_kernel.cli.ingest:ingest",
    "hub": "incloud_kernel.cli.hub:hub",
    "quarantine": "incloud_kernel.cli.quarantine:quarantine",
    "protocols": "incloud_kernel.cli.protocols:protocols",
    "scanners": "incloud_kernel.cli.booking:scanners",
    "book": "incloud_kernel.cli.booking:book",
    "registry": "incloud_kernel.cli.registry:registry",
    "pipeline": "incloud_kernel.cli.pipeline:pipeline",
    "features": "incloud_kernel.cli.library:features",
    "workshop": "incloud_kernel.cli.workshop:workshop",
    "cads": "incloud_kernel.cli.cads:cads",
    "demo": "incloud_kernel.cli.demo:demo",
    "deploy": "incloud_kernel.cli.deploy:deploy",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when used (click's documented lazy pattern)."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module_name, attr = self.lazy[name].split(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name == module_name:  # a component not present in this build
                    return None
                raise
            return getattr(module, attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="incloud")
def cli() -> None:
    """INCloud: archive, de-identify, reface, process and share brain scans."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI and turn failures into one line and an exit code."""
    from incloud_kernel.site import restrict_umask

    restrict_umask()
    try:
        code = cli.main(args=argv, prog_name="incloud", standalone_mode=False)
    except IncloudError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("INCLOUD_DEBUG") == "1":
            raise
        click.echo(f"internal error: {type(exc).__name__} (set INCLOUD_DEBUG=1 for details)", err=True)
        sys.exit(70)
    sys.exit(code if isinstance(code, int) else 0)
