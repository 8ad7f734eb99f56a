"""``incloud protocols ...``: the acquisition protocol library (list, show, add a version, the one-key sets).

Thin wrappers over ``acquisition.protocols``; the standard sets are loaded on first use, so a new site lists them
without a separate step. As everywhere in the CLI, ``--as USER`` runs with that user's rights instead of the
site console's.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from incloud_kernel.cli.projects import _as_option, _run
from incloud_kernel.errors import ValidationError


def _with_standard(work: Any) -> Any:
    """``work(db, actor)`` after the standard sets are in the library (idempotent)."""
    from incloud_kernel.acquisition.protocols import ensure_standard

    def run(db: Any, actor: Any) -> Any:
        ensure_standard(db)
        return work(db, actor)
    return run


def _format(value: Any) -> str:
    if isinstance(value, list):
        return " x ".join(_format(v) for v in value) if all(isinstance(v, (int, float)) for v in value) else str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@click.group()
def protocols() -> None:
    """The acquisition protocol library: standard sets and each project's own, versioned."""


@protocols.command("list")
@click.option("--project", metavar="CODE", help="Include this project's own protocols (they hide site ones).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_as_option
def list_(project: str | None, as_json: bool, as_user: str | None) -> None:
    """List the latest version of every protocol you may book."""
    from incloud_kernel.acquisition.protocols import as_dict, list_latest

    rows = _run(as_user, _with_standard(lambda db, actor: [as_dict(p) for p in list_latest(db, actor, project=project)]))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max((len(r["key"]) for r in rows), default=3)
    for r in rows:
        click.echo(f"{r['key']:<{width}}  v{r['version']:<3} {r['suffix']:<6} {r['vendor']:<8} {r['name']}")


@protocols.command("show")
@click.argument("key")
@click.option("--project", metavar="CODE", help="Look in this project's own protocols first.")
@click.option("--version", "version", type=click.IntRange(min=1), help="A given version (default: the latest).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_as_option
def show(key: str, project: str | None, version: int | None, as_json: bool, as_user: str | None) -> None:
    """Show one protocol's parameters and where they come from."""
    from incloud_kernel.acquisition.protocols import as_dict, get

    row = _run(as_user, _with_standard(lambda db, actor: as_dict(get(db, actor, key, project=project,
                                                                      version=version))))
    if as_json:
        click.echo(json.dumps(row, indent=2))
        return
    click.echo(f"{row['key']} v{row['version']} ({row['owner']}): {row['name']} [{row['suffix']}, {row['vendor']}]")
    for name, value in row["params"].items():
        click.echo(f"  {name:<22} {_format(value)}")
    if row["source"]:
        click.echo(f"  source: {row['source']}")


@protocols.command("add")
@click.argument("key")
@click.argument("params_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--project", metavar="CODE", help="Add to this project's own set (default: the site's, admins only).")
@click.option("--name", required=True, help="Human-readable name.")
@click.option("--suffix", required=True, help="BIDS suffix of what it acquires (T1w, FLAIR, bold, dwi...).")
@click.option("--vendor", default="any", show_default=True)
@click.option("--source", default="", help="Where the values come from (a paper, a scanner export).")
@_as_option
def add(key: str, params_file: Path, project: str | None, name: str, suffix: str, vendor: str, source: str,
        as_user: str | None) -> None:
    """Add the next version of KEY from a JSON file of parameters (versions are never edited in place)."""
    from incloud_kernel.acquisition.protocols import add_version

    try:
        params = json.loads(params_file.read_text())
    except OSError:
        raise ValidationError(f"cannot read {params_file}") from None
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{params_file} is not JSON (line {exc.lineno})") from None
    version = _run(as_user, _with_standard(lambda db, actor: add_version(
        db, actor, key, params, name=name, suffix=suffix, vendor=vendor, source=source, project=project).version))
    click.echo(f"added {key} version {version}" + (f" to project {project}" if project else " to the site"))


@protocols.command("sets")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def sets(as_json: bool) -> None:
    """The one-key standard sets a booking can name."""
    from incloud_kernel.acquisition.standard import SETS

    if as_json:
        click.echo(json.dumps({k: list(v) for k, v in SETS.items()}, indent=2))
        return
    for key, members in SETS.items():
        click.echo(f"{key:<14} {', '.join(members)}")
