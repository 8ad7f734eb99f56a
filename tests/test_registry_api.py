"""The registry's API routes (issue 18 items 3 and 6): a non-registrar gets 403 on every identity endpoint.

The real INCloud API application (``hub.services.api.app.make_app``: its handlers, scopes, route table and the
permission layer) serves on a local port in a thread; only the hub's token check is replaced, by a table of
tokens whose scopes come from ``hub.roles`` exactly as the hub would grant them (registrar, researcher, hub admin,
and a registrar whose token lacks the registry scope). The client is ``incloud_kernel.client.Client``.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Iterator

import pytest
import requests
from api_thread import ACCESS, TableAuth, serving

from hub.roles import scopes_of
from incloud_kernel.archive import projects
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.client import Client
from incloud_kernel.db import transaction
from incloud_kernel.errors import PermissionDenied, ValidationError
from registry_data import PEOPLE, find_leaks


def _model(name: str, groups: list[str], admin: bool = False, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    scopes = {ACCESS, *scopes_of(groups, admin)} - set(drop)
    return {"name": name, "kind": "user", "groups": groups, "scopes": sorted(scopes)}


TOKENS: dict[str, dict[str, Any]] = {
    "t-rita": _model("rita", ["registrar"]),
    "t-max": _model("max", ["researcher"]),
    "t-boss": _model("boss", ["admin"], admin=True),                      # every scope, but not a registrar
    "t-ghost": _model("ghost", ["registrar"], drop=("custom:incloud:registry",)),  # a token without the scope
}


@pytest.fixture
def api(site) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from hub.services.api.app import make_app

    console = Actor.console("tester")
    with transaction(site.engine) as db:
        projects.create_project(db, console, "DEMO", owner="olivia")
        projects.grant(db, console, "DEMO", "max", "member")
    auth = TableAuth(TOKENS)
    app = make_app(site.config, hub_auth=auth)
    with serving(app) as url:
        yield url


def test_a_non_registrar_gets_403_on_every_identity_endpoint(api, caplog) -> None:  # type: ignore
    caplog.set_level(logging.DEBUG)
    rita = Client(api, "t-rita")
    made = rita.register_person(PEOPLE[0], project="DEMO")
    uid, label = made["uid"], made["pseudonym"]
    other = rita.register_person(PEOPLE[1])["uid"]
    reason = {"X-Incloud-Reason": "visit planning"}
    endpoints = [
        ("POST", "api/registry/persons", {"identity": PEOPLE[2]}, {}),
        ("POST", "api/registry/find", {"record_number": PEOPLE[0]["record_number"]}, reason),
        ("GET", f"api/registry/persons/{uid}", None, reason),
        ("POST", f"api/registry/persons/{uid}/enrol", {"project": "DEMO"}, {}),
        ("POST", "api/registry/decisions", {"keep": uid, "other": other, "decision": "keep-apart"}, {}),
    ]
    for token in ("t-max", "t-boss", "t-ghost"):
        for method, path, body, headers in endpoints:
            r = requests.request(method, api + path, json=body, timeout=30,
                                 headers={"Authorization": f"token {token}", **headers})
            assert r.status_code == 403, (token, method, path, r.status_code)
            assert find_leaks(r.content, f"{token} {path}") == []
    r = requests.get(api + f"api/registry/persons/{uid}", headers=reason, timeout=30)
    assert r.status_code == 401  # no token at all
    with pytest.raises(PermissionDenied):
        Client(api, "t-boss").person(uid, "visit planning")
    # the registrar: every identity endpoint answers
    assert rita.person(uid, "visit planning")["identity"]["record_number"] == PEOPLE[0]["record_number"]
    assert rita.find_person("visit planning", record_number=PEOPLE[0]["record_number"]) == [uid]
    assert rita.enrol(uid, "DEMO") == label
    assert rita.decide_persons(uid, other, "keep-apart")["decision"] == "keep-apart"
    with pytest.raises(ValidationError, match="possible duplicate"):  # the API's 409, as the client raises it
        rita.register_person({**PEOPLE[0], "family_name": "Quennevillire", "record_number": ""})
    r = requests.get(api + f"api/registry/persons/{uid}", timeout=30, headers={"Authorization": "token t-rita"})
    assert r.status_code == 400 and "reason" in r.json()["message"]  # no reason, no identity
    # research attributes: project members, by pseudonym
    max_ = Client(api, "t-max")
    assert max_.attributes(label, handedness="L", education_years=12)["handedness"] == "L"
    assert max_.attributes(label)["education_years"] == 12
    assert find_leaks(caplog.text.encode(), "API logs") == []
    assert json.dumps(rita.whoami())
