"""``incloud projects ...`` and ``incloud grant``: projects, roles, site admins and groups from the console.

Commands act as the site console (an explicit site admin, audited as ``console:<login>``: whoever runs them
holds the database credentials) unless ``--as USER`` is given, in which case they run with exactly that
user's rights (groups and admin flag from the database). Thin wrappers: the rules live in
``archive.projects`` and ``archive.permissions``. Never prints a traceback or a patient-identifying value.
"""
from __future__ import annotations

import json
from typing import Any, Callable

import click

ROLES = click.Choice(["owner", "member", "collaborator"])


def _as_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--as", "as_user", metavar="USER",
                        help="Act as this user (its roles and groups) instead of the site console.")(func)


def _run(as_user: str | None, work: Callable[[Any, Any], Any]) -> Any:
    """Open the site, resolve the actor, run ``work(db, actor)`` in one transaction."""
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.db import transaction
    from incloud_kernel.site import Site

    site = Site.open()
    with transaction(site.engine) as db:
        actor = Actor.resolve(db, as_user) if as_user else Actor.console()
        return work(db, actor)


def _project_dict(p: Any, role: str | None = None) -> dict[str, Any]:
    out = {"id": p.id, "code": p.code, "name": p.name, "description": p.description,
           "created_at": p.created_at.isoformat() if p.created_at else None}
    if role is not None:
        out["role"] = role
    return out


@click.group()
def projects() -> None:
    """Create and list projects; manage site admins and groups."""


@projects.command("create")
@click.argument("code")
@click.option("--name", default="", help="Human-readable project name (one line).")
@click.option("--description", default="", help="One-line description.")
@click.option("--owner", metavar="USER", help="Make this user the project's first owner.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_as_option
def create(code: str, name: str, description: str, owner: str | None, as_json: bool, as_user: str | None) -> None:
    """Create project CODE (letters and digits only; unique, case-insensitively)."""
    from incloud_kernel.archive.projects import create_project

    result = _run(as_user, lambda db, actor: _project_dict(
        create_project(db, actor, code, name, description, owner=owner)))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"created project {result['code']} (id {result['id']})"
                   + (f", owner {owner}" if owner else ""))


@projects.command("list")
@click.option("--page", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--page-size", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_as_option
def list_(page: int, page_size: int, as_json: bool, as_user: str | None) -> None:
    """List the projects you may read, with your role in each."""
    from incloud_kernel.archive import permissions as perm

    def work(db: Any, actor: Any) -> dict[str, Any]:
        result = perm.list_projects(db, actor, page=page, page_size=page_size)
        rows = [_project_dict(p, perm.role_in(db, actor, p.id) or ("admin" if actor.site_admin else None))
                for p in result]
        return {"page": result.page, "page_size": result.page_size, "has_more": result.has_more,
                "projects": rows}

    result = _run(as_user, work)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    if not result["projects"]:
        click.echo("no projects")
        return
    width = max(len(p["code"]) for p in result["projects"])
    for p in result["projects"]:
        click.echo(f"{p['code']:<{width}}  {p['role'] or '-':<12}  {p['name']}")
    if result["has_more"]:
        click.echo(f"(more: --page {page + 1})")


@projects.command("members")
@click.argument("project")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_as_option
def members(project: str, as_json: bool, as_user: str | None) -> None:
    """Show who holds which role in PROJECT."""
    from incloud_kernel.archive.permissions import memberships

    rows = _run(as_user, lambda db, actor: [
        {"kind": m.principal_kind, "principal": m.principal, "role": m.role}
        for m in memberships(db, actor, project)])
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['kind']:<6} {r['principal']:<32} {r['role']}")
    if not rows:
        click.echo("no members")


@projects.command("revoke")
@click.argument("principal", metavar="USER_OR_GROUP")
@click.argument("project")
@click.option("--group", "is_group", is_flag=True, help="USER_OR_GROUP names a group.")
@_as_option
def revoke_cmd(principal: str, project: str, is_group: bool, as_user: str | None) -> None:
    """Take away USER_OR_GROUP's role in PROJECT."""
    from incloud_kernel.archive.projects import revoke

    kind = "group" if is_group else "user"
    _run(as_user, lambda db, actor: revoke(db, actor, project, principal, kind=kind))
    click.echo(f"revoked {kind} {principal} from project {project}")


@click.command()
@click.argument("principal", metavar="USER_OR_GROUP")
@click.argument("project")
@click.argument("role", type=ROLES, metavar="ROLE")
@click.option("--group", "is_group", is_flag=True, help="USER_OR_GROUP names a group.")
@_as_option
def grant(principal: str, project: str, role: str, is_group: bool, as_user: str | None) -> None:
    """Give USER_OR_GROUP the ROLE (owner, member, collaborator) in PROJECT."""
    from incloud_kernel.archive.projects import grant as do_grant

    kind = "group" if is_group else "user"
    _run(as_user, lambda db, actor: do_grant(db, actor, project, principal, role, kind=kind))
    click.echo(f"granted {role} in project {project} to {kind} {principal}")


# ---- site admins ------------------------------------------------------------------------------------------------

@projects.group("admins")
def admins() -> None:
    """Site admins: users who may do everything in every project (listed explicitly, none by default)."""


@admins.command("add")
@click.argument("user")
@_as_option
def admins_add(user: str, as_user: str | None) -> None:
    from incloud_kernel.archive.projects import add_site_admin

    _run(as_user, lambda db, actor: add_site_admin(db, actor, user))
    click.echo(f"{user} is a site admin")


@admins.command("remove")
@click.argument("user")
@_as_option
def admins_remove(user: str, as_user: str | None) -> None:
    from incloud_kernel.archive.projects import remove_site_admin

    _run(as_user, lambda db, actor: remove_site_admin(db, actor, user))
    click.echo(f"{user} is no longer a site admin")


@admins.command("list")
@click.option("--json", "as_json", is_flag=True)
@_as_option
def admins_list(as_json: bool, as_user: str | None) -> None:
    from incloud_kernel.archive.projects import list_site_admins

    names = _run(as_user, list_site_admins)
    click.echo(json.dumps(names) if as_json else ("\n".join(names) or "no site admins"))


# ---- groups -----------------------------------------------------------------------------------------------------

@projects.group("groups")
def groups() -> None:
    """Group membership (the hub supplies groups later; until then the console does)."""


@groups.command("add-member")
@click.argument("group")
@click.argument("user")
@_as_option
def groups_add(group: str, user: str, as_user: str | None) -> None:
    from incloud_kernel.archive.projects import add_group_member

    _run(as_user, lambda db, actor: add_group_member(db, actor, group, user))
    click.echo(f"{user} is in group {group}")


@groups.command("remove-member")
@click.argument("group")
@click.argument("user")
@_as_option
def groups_remove(group: str, user: str, as_user: str | None) -> None:
    from incloud_kernel.archive.projects import remove_group_member

    _run(as_user, lambda db, actor: remove_group_member(db, actor, group, user))
    click.echo(f"{user} is no longer in group {group}")


@groups.command("list")
@click.argument("group", required=False)
@click.option("--json", "as_json", is_flag=True)
@_as_option
def groups_list(group: str | None, as_json: bool, as_user: str | None) -> None:
    from incloud_kernel.archive.projects import list_group_members

    pairs = _run(as_user, lambda db, actor: list_group_members(db, actor, group))
    if as_json:
        click.echo(json.dumps([{"group": g, "user": u} for g, u in pairs], indent=2))
    else:
        click.echo("\n".join(f"{g}\t{u}" for g, u in pairs) or "no group members")
