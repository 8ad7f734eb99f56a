"""The hub's settings come from the site config: modes, profiles as data, roles and custom scopes, services."""
from __future__ import annotations

import os
from unittest import mock

import pytest
from traitlets.config import Config as Traits

from incloud_kernel.config import load_config
from incloud_kernel.errors import ConfigError


def _configure(tmp_path, **env):  # type: ignore[no-untyped-def]
    """The hub's settings for ``env``; as a non-root hub unless a test patches ``os.geteuid`` itself."""
    from unittest import mock

    from hub.hubconfig import configure

    c = Traits()
    cfg = load_config(env={"INCLOUD_HOME": str(tmp_path), **env})
    if isinstance(os.geteuid, mock.Mock) or not hasattr(os, "geteuid"):
        configure(c, cfg)
    else:
        with mock.patch("os.geteuid", lambda: 1000):
            configure(c, cfg)
    return c


def test_embedded_default_is_a_local_spawner_with_native_sign_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = _configure(tmp_path)  # a laptop: the hub and its workstations run as one (non-root) person
    assert c.JupyterHub.spawner_class.endswith("SimpleLocalProcessSpawner")
    assert "--allow-root" not in c.Spawner.args
    from hub.native import IncloudNativeAuthenticator

    # The site's authenticator, with workshop accounts' logins in front of it (hub.workshops).
    assert c.JupyterHub.authenticator_class.__mro__[2] is IncloudNativeAuthenticator
    assert c.NativeAuthenticator.open_signup is False
    assert c.Spawner.environment["INCLOUD_API_URL"] == "http://127.0.0.1:8000/services/incloud-api/"


def test_embedded_hub_never_gives_root_workstations(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("os.geteuid", mock.Mock(return_value=0))
    with pytest.raises(ConfigError, match="refuses to run workstations as root"):
        _configure(tmp_path)
    c = _configure(tmp_path, INCLOUD_HUB_LAUNCHER="/usr/local/sbin/incloud-workstation")
    assert c.JupyterHub.spawner_class == "hub.isolated.IsolatedSpawner"
    assert c.IsolatedSpawner.launcher == ["sudo", "-n", "/usr/local/sbin/incloud-workstation"]
    assert callable(c.Authenticator.post_auth_hook)  # the system account is made at first login
    assert "--allow-root" not in c.Spawner.args


def test_shared_demo_password_never_opens_an_admin_account(tmp_path) -> None:  # type: ignore[no-untyped-def]
    shared = {"INCLOUD_HUB_AUTHENTICATOR": "shared", "INCLOUD_HUB_SHARED_PASSWORD": "demo-password",
              "INCLOUD_HUB_GROUP_MEMBERS": '{"researcher": ["ana"]}'}
    with pytest.raises(ConfigError, match="admin_password must have at least 32"):
        _configure(tmp_path, **shared)
    c = _configure(tmp_path, **shared, INCLOUD_HUB_ADMIN_PASSWORD="x" * 32)
    assert c.SharedPasswordAuthenticator.admin_password == "x" * 32
    assert c.SharedPasswordAuthenticator.allow_all is False
    assert c.SharedPasswordAuthenticator.allowed_users == {"admin", "ana"}


def test_cluster_profiles_are_site_config_data(tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = _configure(tmp_path, INCLOUD_HUB_MODE="cluster", INCLOUD_HUB_PROFILES='[{"name": "tiny", "cores": 1, '
                   '"memory": "1G", "walltime": "01:00:00"}]')
    assert c.JupyterHub.spawner_class == "wrapspawner.ProfilesSpawner"
    [(display, key, cls, conf)] = c.ProfilesSpawner.profiles
    assert (key, conf["req_nprocs"], conf["req_memory"], conf["req_runtime"]) == ("tiny", "1", "1G", "01:00:00")
    assert cls.__name__ == "IncloudSlurmSpawner"
    assert c.BatchSpawnerBase.batchspawner_singleuser_cmd.endswith("/bin/python -m hub.workstation --report-port")
    # Only JupyterLab's, terminals and Voila (dashboards) load in a workstation; no argument needs shell quoting.
    assert "--ServerApp.jpserver_extensions=voila.server_extension=True" in c.Spawner.args
    assert not any(ch in arg for arg in c.Spawner.args for ch in "{}'\" $")
    assert "timeout" in c.SlurmSpawner.batch_submit_cmd  # a dead controller cannot hang the spawn


def test_bad_profile_and_mode_are_one_line_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="unknown key"):
        _configure(tmp_path, INCLOUD_HUB_MODE="cluster", INCLOUD_HUB_PROFILES='[{"name": "x", "gpus": 1}]')
    with pytest.raises(ConfigError, match="hub.mode"):
        _configure(tmp_path, INCLOUD_HUB_MODE="kubernetes")


def test_roles_map_to_groups_and_custom_scopes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from hub.roles import ROLE_SCOPES

    c = _configure(tmp_path)
    assert all(s.startswith("custom:incloud:") for s in c.JupyterHub.custom_scopes)
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    for name in ("researcher", "qc_reviewer", "clinician", "registrar"):
        assert roles[name]["groups"] == [name]
        assert set(ROLE_SCOPES[name]) <= set(roles[name]["scopes"])
    assert "custom:incloud:registry" not in roles["researcher"]["scopes"]  # only registrars see identities
    assert roles["idle-culler"]["services"] == ["idle-culler"]
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert services["incloud-api"]["command"][-1] == "hub.services.api"
    assert "incloud-api" not in [s for r in c.JupyterHub.load_roles for s in r.get("services", [])]  # no scopes
    assert any("--timeout=3600" in a for a in services["idle-culler"]["command"])
    assert c.JupyterHub.allow_named_servers is True


def test_docker_setup_is_documented_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = _configure(tmp_path, INCLOUD_HUB_MODE="docker")
    assert c.JupyterHub.spawner_class == "dockerspawner.DockerSpawner"
    assert c.DockerSpawner.image == "localhost/incloud-workstation:latest"


def test_group_members_from_the_site_config_become_hub_groups() -> None:
    from hub.roles import ROLE_SCOPES, load_groups
    from incloud_kernel.errors import ConfigError

    groups = load_groups({"researcher": ["ana"], "admin": ["root1"]})
    assert set(groups) == set(ROLE_SCOPES)
    assert groups["researcher"] == {"users": ["ana"]} and groups["qc_reviewer"] == {"users": []}
    with pytest.raises(ConfigError, match="unknown role group"):
        load_groups({"superuser": ["x"]})


def test_group_members_env_override_is_json(tmp_path) -> None:
    from incloud_kernel.config import load_config

    cfg = load_config(env={"INCLOUD_HOME": str(tmp_path), "INCLOUD_HUB_GROUP_MEMBERS": '{"clinician": ["cy"]}'})
    assert cfg.hub.group_members == {"clinician": ["cy"]}
