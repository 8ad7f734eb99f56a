"""Authenticator set-ups: NativeAuthenticator (sign-up with admin approval, the embedded default), a shared demo
password, and the documented LDAP and generic OAuth (hospital single sign-on) configurations.

Groups named after INCloud roles (hub.roles) are what the API's scopes come from; LDAP and OAuth map the
directory's groups onto them. Never log a password or a token; never enable open sign-up by default.
"""
from __future__ import annotations

import os
from typing import Any

from incloud_kernel.config import Config
from incloud_kernel.errors import ConfigError


def native(c: Any, cfg: Config) -> None:
    """Users sign up at /hub/signup; an admin approves them at /hub/authorize before they can log in."""
    import nativeauthenticator

    c.JupyterHub.authenticator_class = "hub.native.IncloudNativeAuthenticator"
    c.NativeAuthenticator.open_signup = False
    c.NativeAuthenticator.minimum_password_length = 10
    c.NativeAuthenticator.check_common_password = True
    c.NativeAuthenticator.allowed_failed_logins = 5
    c.NativeAuthenticator.seconds_before_next_try = 60
    # Approval is the gate; JupyterHub 5+ would otherwise also need an allow list.
    c.NativeAuthenticator.allow_all = True
    c.JupyterHub.template_paths = [os.path.join(os.path.dirname(nativeauthenticator.__file__), "templates")]


def shared(c: Any, cfg: Config) -> None:
    """Demos and workshops: the listed users log in with one shared password; admins with their own.

    Only the users named in the site config (``hub.group_members`` and ``hub.admin_users``) may log in (the admin
    adds more in the hub's admin page), so the shared password cannot mint new accounts, and an admin name is never
    reached with the shared password: admins need ``hub.admin_password`` (set and printed once by scripts/start.sh).
    """
    hub = cfg.hub
    if len(hub.shared_password) < 8:
        raise ConfigError("hub.shared_password must have at least 8 characters for authenticator = 'shared'")
    if hub.admin_users and len(hub.admin_password) < 32:
        raise ConfigError("hub.admin_password must have at least 32 characters for the admin users of "
                          "authenticator = 'shared' (scripts/start.sh sets one)")
    if hub.admin_password and hub.admin_password == hub.shared_password:
        raise ConfigError("hub.admin_password must differ from hub.shared_password")
    c.JupyterHub.authenticator_class = "shared-password"
    c.SharedPasswordAuthenticator.user_password = hub.shared_password
    if hub.admin_users:
        c.SharedPasswordAuthenticator.admin_password = hub.admin_password
    c.SharedPasswordAuthenticator.allow_all = False
    c.SharedPasswordAuthenticator.allowed_users = set(hub.admin_users).union(
        *(set(names) for names in hub.group_members.values()))


def ldap(c: Any, cfg: Config) -> None:
    """A hospital directory (``pip install jupyterhub-ldapauthenticator``); values come from the environment.

    INCLOUD_LDAP_SERVER (ldaps://host), INCLOUD_LDAP_BIND_TEMPLATE (uid={username},ou=people,dc=example,dc=org),
    INCLOUD_LDAP_ALLOWED_GROUPS (comma-separated group DNs). Directory groups become hub groups when their
    names are INCloud roles (``manage_groups``).
    """
    c.JupyterHub.authenticator_class = "ldapauthenticator.LDAPAuthenticator"
    c.LDAPAuthenticator.server_address = os.environ.get("INCLOUD_LDAP_SERVER", "")
    c.LDAPAuthenticator.bind_dn_template = [os.environ.get("INCLOUD_LDAP_BIND_TEMPLATE", "")]
    c.LDAPAuthenticator.use_ssl = True
    groups = [g for g in os.environ.get("INCLOUD_LDAP_ALLOWED_GROUPS", "").split(",") if g]
    if groups:
        c.LDAPAuthenticator.allowed_groups = groups
    else:
        c.LDAPAuthenticator.allow_all = True


def oauth(c: Any, cfg: Config) -> None:
    """Generic OAuth2/OpenID Connect single sign-on (``pip install oauthenticator``), e.g. Keycloak.

    INCLOUD_OAUTH_CLIENT_ID, INCLOUD_OAUTH_CLIENT_SECRET, INCLOUD_OAUTH_AUTHORIZE_URL, INCLOUD_OAUTH_TOKEN_URL,
    INCLOUD_OAUTH_USERDATA_URL, INCLOUD_OAUTH_CALLBACK_URL; the ``groups`` claim becomes hub groups.
    """
    c.JupyterHub.authenticator_class = "generic-oauth"
    env = os.environ.get
    c.GenericOAuthenticator.client_id = env("INCLOUD_OAUTH_CLIENT_ID", "")
    c.GenericOAuthenticator.client_secret = env("INCLOUD_OAUTH_CLIENT_SECRET", "")
    c.GenericOAuthenticator.authorize_url = env("INCLOUD_OAUTH_AUTHORIZE_URL", "")
    c.GenericOAuthenticator.token_url = env("INCLOUD_OAUTH_TOKEN_URL", "")
    c.GenericOAuthenticator.userdata_url = env("INCLOUD_OAUTH_USERDATA_URL", "")
    c.GenericOAuthenticator.oauth_callback_url = env("INCLOUD_OAUTH_CALLBACK_URL", "")
    c.GenericOAuthenticator.scope = ["openid", "profile", "groups"]
    c.GenericOAuthenticator.username_claim = "preferred_username"
    c.GenericOAuthenticator.manage_groups = True
    c.GenericOAuthenticator.auth_state_groups_key = "oauth_user.groups"
    c.GenericOAuthenticator.allow_all = False
    from hub.roles import ROLE_SCOPES

    c.GenericOAuthenticator.allowed_groups = list(ROLE_SCOPES)  # every INCloud role group, from its one source
    c.GenericOAuthenticator.admin_groups = ["admin"]


SETUPS = {"native": native, "shared": shared, "ldap": ldap, "oauth": oauth}
