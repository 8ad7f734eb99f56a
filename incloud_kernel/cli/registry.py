"""``incloud registry ...``: the participant registry (add, find, show, merge, enrol, rotate-key, attributes).

Thin wrappers over ``acquisition.registry``. Identities are read as JSON from a file or standard input, never
from the command line (another user could read a command line in the process list). ``--as USER`` runs with
that user's rights (registrars read identities; project members edit research attributes); the console is a
registrar. Never prints an identity except to the registrar who asked ``show`` for it, with a reason.
"""
from __future__ import annotations

import json
import sys
from typing import Any

import click

from incloud_kernel.cli.projects import _as_option, _run
from incloud_kernel.errors import ValidationError


def _read_json(source: str) -> Any:
    try:
        text = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()
    except OSError:
        raise ValidationError(f"cannot read {source}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{'standard input' if source == '-' else source} is not JSON (line {exc.lineno})") from None


def _config() -> Any:
    from incloud_kernel.config import get_config

    return get_config()


@click.group()
def registry() -> None:
    """The participant registry: sealed identities, one internal id per person, per-project pseudonyms."""


@registry.command("add")
@click.argument("source", default="-", metavar="[FILE|-]")
@click.option("--project", metavar="CODE", help="Enrol the person in this project too (prints its pseudonym).")
@click.option("--same-as", metavar="UID", help="The registrar's decision: this is that registered person.")
@click.option("--keep-apart", is_flag=True, help="The registrar's decision: not any of the suspected duplicates.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_as_option
def add(source: str, project: str | None, same_as: str | None, keep_apart: bool, as_json: bool,
        as_user: str | None) -> None:
    """Register a person from JSON (family_name, given_names, birth_date YYYY-MM-DD, sex, record_number, contact).

    Exit 5 when the person resembles registered ones: decide with --same-as UID or --keep-apart."""
    from incloud_kernel.acquisition.registry import register

    data = _read_json(source)
    result = _run(as_user, lambda db, actor: register(db, actor, data, config=_config(), same_as=same_as,
                                                      keep_apart=keep_apart, project=project))
    if as_json:
        click.echo(json.dumps(vars(result)))
        return
    click.echo(f"{result.status} {result.uid}" + (f" pseudonym {result.pseudonym} in {project}" if project else "")
               + (f" (kept apart from {', '.join(result.kept_apart_from)})" if result.kept_apart_from else ""))


@registry.command("find")
@click.argument("source", default="-", metavar="[FILE|-]")
@click.option("--reason", required=True, help="Why you look (audited; must not name the person).")
@_as_option
def find(source: str, reason: str, as_user: str | None) -> None:
    """Internal ids found by an exact look-up: JSON with record_number, or family_name, given_names, birth_date."""
    from incloud_kernel.acquisition.registry import find as find_

    query = _read_json(source)
    if not isinstance(query, dict) or set(query) - {"record_number", "family_name", "given_names", "birth_date"}:
        raise ValidationError("find takes record_number, or family_name, given_names and birth_date")
    uids = _run(as_user, lambda db, actor: find_(db, actor, reason, config=_config(), **query))
    for uid in uids:
        click.echo(uid)
    if not uids:
        click.echo("no registered person found", err=True)
        sys.exit(1)


@registry.command("show")
@click.argument("uid")
@click.option("--reason", required=True, help="Why you read this identity (audited; must not name the person).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_as_option
def show(uid: str, reason: str, as_json: bool, as_user: str | None) -> None:
    """A person's identity, enrolments and scans in every project (registrars; audited)."""
    from incloud_kernel.acquisition.registry import show as show_

    data = _run(as_user, lambda db, actor: show_(db, actor, uid, reason, config=_config()))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(data["uid"] + (f" (merged into {data['merged_into']})" if data["merged_into"] else ""))
    for key, value in data["identity"].items():
        click.echo(f"  {key:<14} {value}")
    for e in data["enrolments"]:
        scans = ", ".join(f"ses-{s['session']} {s['scan_date'] or ''}".strip() for s in e["sessions"]) or "no scans"
        click.echo(f"  {e['project']}: {e['pseudonym']} ({scans})")


@registry.command("merge")
@click.argument("keep")
@click.argument("other")
@click.option("--keep-apart", is_flag=True, help="Record that KEEP and OTHER are different persons instead.")
@_as_option
def merge(keep: str, other: str, keep_apart: bool, as_user: str | None) -> None:
    """Merge OTHER into KEEP (same person), or record --keep-apart (different persons)."""
    from incloud_kernel.acquisition.registry import decide

    decision = _run(as_user, lambda db, actor: decide(db, actor, keep, other, keep_apart=keep_apart))
    click.echo(f"{decision}: {keep} {other}")


@registry.command("enrol")
@click.argument("uid")
@click.argument("project")
@_as_option
def enrol(uid: str, project: str, as_user: str | None) -> None:
    """Enrol a registered person in PROJECT: prints the project's pseudonym (the participant label)."""
    from incloud_kernel.acquisition.registry import enrol as enrol_

    label = _run(as_user, lambda db, actor: enrol_(db, actor, uid, project, config=_config()).pseudonym)
    click.echo(label)


@registry.command("rotate-key")
@_as_option
def rotate_key(as_user: str | None) -> None:
    """Re-encrypt every identity under a new data key while the site runs; old keys are dropped after."""
    from incloud_kernel.acquisition.registry import rotate_key as rotate
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.db import transaction
    from incloud_kernel.site import Site

    site = Site.open()
    if as_user:
        with transaction(site.engine) as db:
            actor = Actor.resolve(db, as_user)
    else:
        actor = Actor.console()
    result = rotate(site.engine, site.config, actor)
    click.echo(f"re-encrypted {result['resealed']} record(s) under key {result['active']}"
               + (f"; dropped {', '.join(result['dropped'])}" if result["dropped"] else ""))


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@registry.command("attributes")
@click.argument("pseudonym")
@click.option("--set", "settings", multiple=True, metavar="NAME=VALUE",
              help="Change a research attribute (JSON value: 12, true, [\"F20\"]; else text). Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_as_option
def attributes(pseudonym: str, settings: tuple[str, ...], as_json: bool, as_user: str | None) -> None:
    """Show or change a participant's pseudonymous research attributes (project members)."""
    from incloud_kernel.acquisition.registry import attributes as attrs

    changes: dict[str, Any] = {}
    for item in settings:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValidationError(f"--set takes NAME=VALUE, got {name!r}")
        changes[name] = _value(value)
    data = _run(as_user, lambda db, actor: attrs(db, actor, pseudonym, changes or None))
    if as_json:
        click.echo(json.dumps(data))
        return
    for key, value in data.items():
        click.echo(f"{key:<16} {value}")
