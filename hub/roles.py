"""INCloud roles as JupyterHub roles and the ``custom:incloud:*`` scopes the INCloud API checks.

Each INCloud role is a JupyterHub group of the same name; a JupyterHub role of the same name grants that group
its scopes. Project membership (which projects a user sees) is NOT decided here: that is the archive's
permission layer. Scopes only say which kinds of API call a user may make at all. Never grant a custom scope
to everybody by default.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable

from incloud_kernel.errors import ConfigError

API_SERVICE = "incloud-api"

#: Custom scopes (JupyterHub 3+ ``c.JupyterHub.custom_scopes``); the API names the one each route needs.
CUSTOM_SCOPES: dict[str, dict[str, str]] = {
    "custom:incloud:read": {"description": "List and read archive metadata of projects you are a member of."},
    "custom:incloud:files": {"description": "Download archived files of projects you are a member of."},
    "custom:incloud:write": {"description": "Add participants, sessions, series and files to your projects."},
    "custom:incloud:qc": {"description": "Pass or fail scans in quality control."},
    "custom:incloud:upload": {"description": "Send de-identified scans from a clinic."},
    "custom:incloud:reports": {"description": "Read computer-aided diagnosis reports."},
    "custom:incloud:lookup": {"description": "Upload under a patient's registry pseudonym: the clinic's upload "
                                             "looks the patient up in the participant registry (no identity is "
                                             "shown back)."},
    "custom:incloud:registry": {"description": "Register participants and see identities (registrar only)."},
    "custom:incloud:admin": {"description": "Manage projects, grants and users of the INCloud archive."},
    "custom:incloud:book": {"description": "Book scanner time for participants of your projects."},
    "custom:incloud:approve": {"description": "Approve bookings of scanners you manage."},
    "custom:incloud:workshop": {"description": "See your teaching workshops (as teacher or student)."},
    "custom:incloud:teach": {"description": "Run teaching workshops on projects you own."},
}

#: What every INCloud role needs besides its custom scopes: to reach the API service at all.
_BASE = [f"access:services!service={API_SERVICE}"]

#: INCloud role (= JupyterHub group) -> custom scopes.
ROLE_SCOPES: dict[str, list[str]] = {
    "researcher": ["custom:incloud:read", "custom:incloud:files", "custom:incloud:write", "custom:incloud:book"],
    "qc_reviewer": ["custom:incloud:read", "custom:incloud:files", "custom:incloud:qc"],
    "clinician": ["custom:incloud:upload", "custom:incloud:reports"],
    # A clinic the site lets look patients up (with the clinician role): uploads join the registered person.
    "clinic_lookup": ["custom:incloud:lookup"],
    "registrar": ["custom:incloud:read", "custom:incloud:registry"],
    "scanner_manager": ["custom:incloud:read", "custom:incloud:book", "custom:incloud:approve"],
    "teacher": ["custom:incloud:read", "custom:incloud:files", "custom:incloud:workshop", "custom:incloud:teach"],
    # Temporary workshop accounts (incloud_kernel.workshops): they read their workshop's dataset and nothing else
    # (which project is decided by incloud_kernel.archive.permissions, not by these scopes).
    "student": ["custom:incloud:read", "custom:incloud:files", "custom:incloud:workshop"],
    "admin": sorted(CUSTOM_SCOPES),
}

#: Scopes of the idle culler service (from jupyterhub-idle-culler's documentation), and nothing more.
CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]


def load_groups(members: dict[str, list[str]]) -> dict[str, dict]:
    """``c.JupyterHub.load_groups``: one group per INCloud role, with the site config's initial members."""
    unknown = set(members) - set(ROLE_SCOPES)
    if unknown:
        raise ConfigError(f"hub.group_members names unknown role group(s): {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(ROLE_SCOPES)}")
    return {name: {"users": list(members.get(name, []))} for name in ROLE_SCOPES}


def load_roles(admin_group: str = "admin") -> list[dict]:
    """``c.JupyterHub.load_roles``: one role per INCloud role, bound to the group of the same name, plus the
    built-in hub ``admin`` role for the admin group and the culler's role."""
    roles = [
        {"name": name, "description": f"INCloud {name}", "scopes": _BASE + scopes, "groups": [name]}
        for name, scopes in ROLE_SCOPES.items() if name != "admin"
    ]
    roles.append({"name": "incloud-admin", "description": "INCloud site administration",
                  "scopes": _BASE + ROLE_SCOPES["admin"], "groups": [admin_group]})
    roles.append({"name": "admin", "groups": [admin_group]})
    roles.append({"name": "idle-culler", "description": "Stop idle workstations", "scopes": CULLER_SCOPES,
                  "services": ["idle-culler"]})
    return roles


def workstation_token_scopes() -> list[str]:
    """Scopes asked for the workstation's ``$JUPYTERHUB_API_TOKEN``; the hub grants the subset the user holds.

    The first two are JupyterHub's default ``server`` role; the rest let ``incloud_kernel.connect()`` call the
    API with exactly the user's INCloud permissions.
    """
    return ["users:activity!user", "access:servers!server", *_BASE, *sorted(CUSTOM_SCOPES)]


# -- the portal's modules ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Module:
    """One tile of the home page: shown to users holding ``scope`` (None: every user); ``built`` False says
    honestly that the module is not built yet (shown only to the roles that will have it)."""

    key: str
    title: str
    blurb: str
    scope: str | None
    built: bool = True

    def open_to(self, scopes: Collection[str]) -> bool:
        """Whether a user holding ``scopes`` sees this module (the home page, its live status, result links)."""
        return self.scope is None or self.scope in scopes


#: The home page's modules, in display order. Which roles see one follows from ROLE_SCOPES (one source).
MODULES: list[Module] = [
    Module("archive", "Archive", "Projects, participants, sessions and series you may read.", "custom:incloud:read"),
    Module("qc", "QC review", "Series waiting for a quality decision.", "custom:incloud:qc"),
    Module("workstation", "Workstation", "JupyterLab with incloud_kernel, and SSH into it.", None),
    Module("reservation", "Reservation", "Book scanner slots with a standard protocol.", "custom:incloud:book"),
    Module("processing", "Processing", "Pipelines on the cluster: running and failed.", "custom:incloud:write"),
    Module("features", "Feature library", "Query brain features across your projects.", "custom:incloud:read"),
    Module("reports", "CADS reports", "Computer-aided diagnosis reports of your patients.",
           "custom:incloud:reports"),
    Module("upload", "Upload from a clinic", "Send scans de-identified and defaced from your browser.",
           "custom:incloud:upload"),
    Module("workshops", "Workshops", "Teaching classes on a read-only dataset.", "custom:incloud:workshop"),
    Module("health", "Site health", "Services, disk and queues of this site.", "custom:incloud:admin"),
]


def scopes_of(groups: Iterable[str], admin: bool = False) -> set[str]:
    """The ``custom:incloud:*`` scopes that membership in ``groups`` grants (a hub admin holds them all)."""
    if admin:
        return set(CUSTOM_SCOPES)
    return {scope for group in groups for scope in ROLE_SCOPES.get(group, [])}


def modules_for(groups: Iterable[str], admin: bool = False) -> list[Module]:
    """The modules a user with these groups sees on the home page: the built ones first, then those planned."""
    scopes = scopes_of(groups, admin)
    shown = [m for m in MODULES if m.open_to(scopes)]
    return [m for m in shown if m.built] + [m for m in shown if not m.built]
