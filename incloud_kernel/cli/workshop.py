"""``incloud workshop create|list|accounts|expire``: teaching workshops (``incloud_kernel.workshops``).

The site console is a site admin; ``--as USER`` acts as that user (a teacher must own the dataset project). The
join code and passwords are printed once, by the command that makes them, and never stored in clear. Removing
the accounts, servers and files of an ended workshop is the hub's ``workshop-expiry`` service (docs/workshops.md);
``expire`` ends workshops and says what that service will remove. Errors are one line (``cli.main``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from incloud_kernel.cli.projects import _as_option, _run


@click.group()
def workshop() -> None:
    """Teaching workshops: a read-only dataset, course notebooks and temporary accounts until an end date."""


def _read_notebooks(paths: tuple[str, ...]) -> dict[str, str]:
    from incloud_kernel.errors import ValidationError

    out: dict[str, str] = {}
    for given in paths:
        path = Path(given)
        files = sorted(path.glob("*.ipynb")) if path.is_dir() else [path]
        for f in files:
            try:
                out[f.name] = f.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValidationError(f"cannot read course notebook {f.name}: {type(exc).__name__}") from None
    return out


@workshop.command("create")
@click.option("--title", required=True)
@click.option("--start", "starts_on", required=True, metavar="YYYY-MM-DD")
@click.option("--end", "ends_on", required=True, metavar="YYYY-MM-DD", help="Last day (included).")
@click.option("--size", required=True, type=int, help="Number of students.")
@click.option("--dataset", required=True, metavar="PROJECT", help="The project lent read-only to the students.")
@click.option("--notebook", "notebooks", multiple=True, metavar="PATH",
              help="A course notebook, or a folder of them (repeat); copied into each student's workstation.")
@click.option("--cores", default=1.0, show_default=True, type=float, help="Cores of each student's workstation.")
@click.option("--memory", default="1G", show_default=True, help="Memory of each student's workstation.")
@click.option("--code", default=None, help="The workshop's code (user names start with it); default: random.")
@click.option("--accounts", "n_accounts", default=0, type=int, help="Also make this many temporary accounts.")
@click.option("--json", "as_json", is_flag=True)
@_as_option
def create(title: str, starts_on: str, ends_on: str, size: int, dataset: str, notebooks: tuple[str, ...],
           cores: float, memory: str, code: str | None, n_accounts: int, as_json: bool, as_user: str | None) -> None:
    """Create a workshop; prints its join code (once) and, with --accounts, user names and passwords (once)."""
    from incloud_kernel import workshops

    course = _read_notebooks(notebooks)

    def work(db: Any, actor: Any) -> dict[str, Any]:
        shown, join_code = workshops.create(db, actor, title=title, starts_on=starts_on, ends_on=ends_on, size=size,
                                            dataset=dataset, notebooks=course, cores=cores, memory=memory, code=code)
        made = workshops.make_accounts(db, actor, shown.code, n_accounts) if n_accounts else []
        return {**shown.as_dict(), "join_code": join_code,
                "accounts": [{"username": u, "password": p} for u, p in made]}

    result = _run(as_user, work)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"created workshop {result['code']} on {result['dataset']} for {result['size']} students, "
               f"{result['starts_on']} to {result['ends_on']}")
    click.echo(f"join code (shown once): {result['join_code']}  (students open /hub/workshop/join)")
    _print_accounts(result["accounts"])


def _print_accounts(accounts: list[dict[str, str]]) -> None:
    if accounts:
        click.echo("user name\tpassword (shown once)")
        for a in accounts:
            click.echo(f"{a['username']}\t{a['password']}")


@workshop.command("list")
@click.option("--json", "as_json", is_flag=True)
@_as_option
def list_(as_json: bool, as_user: str | None) -> None:
    """The workshops you teach (the console: all) and the one you attend."""
    from incloud_kernel import workshops

    found = _run(as_user, lambda db, actor: {k: [v.as_dict() for v in views]
                                             for k, views in workshops.list_workshops(db, actor).items()})
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    rows = found["teaching"] + [w for w in found["attending"] if w not in found["teaching"]]
    if not rows:
        click.echo("no workshops")
    for w in rows:
        click.echo(f"{w['code']}\t{w['state']}\t{w['starts_on']}..{w['ends_on']}\t{w['students']}/{w['size']}\t"
                   f"{w['dataset']}\t{w['teacher']}\t{w['title']}")


@workshop.command("accounts")
@click.argument("code")
@click.option("--add", "count", default=0, type=int, help="Make this many new accounts (passwords shown once).")
@click.option("--json", "as_json", is_flag=True)
@_as_option
def accounts(code: str, count: int, as_json: bool, as_user: str | None) -> None:
    """List workshop CODE's accounts, or make --add N more."""
    from incloud_kernel import workshops

    if count:
        made = _run(as_user, lambda db, actor: workshops.make_accounts(db, actor, code, count))
        rows: list[dict[str, Any]] = [{"username": u, "password": p} for u, p in made]
        if as_json:
            click.echo(json.dumps(rows, indent=2))
        else:
            _print_accounts(rows)
        return
    rows = _run(as_user, lambda db, actor: workshops.accounts_of(db, actor, code))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for a in rows:
        click.echo(f"{a['username']}\t{'removed ' + a['removed_at'] if a['removed_at'] else 'active'}")


@workshop.command("expire")
@click.argument("code", required=False)
@click.option("--json", "as_json", is_flag=True)
@_as_option
def expire(code: str | None, as_json: bool, as_user: str | None) -> None:
    """End workshop CODE now (without CODE: nothing is ended); list the accounts of ended workshops that the hub's
    workshop-expiry service removes on its next round (accounts, servers, processes, home folders)."""
    from incloud_kernel import workshops

    def work(db: Any, actor: Any) -> dict[str, Any]:
        ended = workshops.end(db, actor, code).as_dict() if code else None
        return {"ended": ended, "due": workshops.due_accounts(db)}

    result = _run(as_user, work)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    if result["ended"]:
        click.echo(f"ended workshop {result['ended']['code']}: its students can no longer log in or read its dataset")
    click.echo(f"{len(result['due'])} account(s) of ended workshops wait for the hub's workshop-expiry service")
