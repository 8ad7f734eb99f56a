"""NativeAuthenticator (sign-up with admin approval) made to work on JupyterHub 6.

nativeauthenticator 1.3.0's login handler uses ``self.statsd``, which JupyterHub 6 removed (every login POST
then fails with HTTP 500). This subclass swaps in a handler with a no-op timer; nothing else changes. Remove it
when nativeauthenticator supports JupyterHub 6.

It also checks login passwords with bcrypt in a worker thread: upstream runs bcrypt (about 0.3 s of CPU, more on a
loaded node) on the hub's event loop, so 50 concurrent logins queued one after another and stalled every other
request of the hub meanwhile. Sign-up still hashes on the loop (upstream calls ``create_user`` synchronously).

No first-come admin: upstream pre-approves whoever signs up first under an admin name. Here sign-up refuses every
name in ``admin_users``; an admin's password is set by the site operator (``incloud hub admin-password``, which runs
``python -m hub.native set-password NAME`` against the hub's database) and is never printed again.
"""
from __future__ import annotations

import asyncio
import hmac
from typing import Any

import bcrypt

from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import LoginHandler as NativeLoginHandler


class _NoTimer:
    def start(self) -> _NoTimer:
        return self

    def stop(self, send: bool = True) -> None:
        return None


class _NoStatsd:
    def timer(self, name: str) -> _NoTimer:
        return _NoTimer()


class LoginHandler(NativeLoginHandler):
    """NativeAuthenticator's login form without the statsd timer JupyterHub 6 no longer provides."""

    statsd = _NoStatsd()

    def _render(self, login_error: str | None = None, username: str | None = None, **_: Any):  # type: ignore[override]
        return super()._render(login_error=login_error, username=username)


class IncloudNativeAuthenticator(NativeAuthenticator):
    """NativeAuthenticator with the JupyterHub 6 login fix and bcrypt off the event loop."""

    async def authenticate(self, handler: Any, data: dict[str, Any]) -> str | None:  # type: ignore[override]
        """Upstream's checks in upstream's order (approval, lock-out, password, 2FA); the hash runs in a thread."""
        username = self.normalize_username(data["username"])
        user = self.get_user(username)
        if not user:
            return None
        if self.allowed_failed_logins and self.is_blocked(username):
            return None
        stored: bytes = user.password
        password_ok = await asyncio.get_running_loop().run_in_executor(
            None, _password_matches, stored, str(data.get("password", "")))
        validations = [user.is_authorized, password_ok]
        if user.has_2fa:
            validations.append(user.is_valid_token(data.get("2fa")))
        if all(validations):
            self.successful_login(username)
            return username
        self.add_login_attempt(username)
        return None

    def create_user(self, username: str, password: str, **kwargs: Any):  # type: ignore[no-untyped-def]
        """Upstream's sign-up, except that an admin name can never be claimed through the form."""
        if self.normalize_username(username) in self.admin_users:
            self.log.warning("sign-up refused for an admin name (set admin passwords with incloud hub "
                             "admin-password)")
            return None
        return super().create_user(username, password, **kwargs)

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        return [(pattern, LoginHandler if handler is NativeLoginHandler else handler)
                for pattern, handler in super().get_handlers(app)]


def _password_matches(stored: bytes, password: str) -> bool:
    """bcrypt check of ``password`` against the stored salt+hash (releases the GIL while hashing)."""
    return hmac.compare_digest(stored, bcrypt.hashpw(password.encode(), stored))


def set_password(db_url: str, username: str, password: str) -> bool:
    """Create or reset ``username``'s approved NativeAuthenticator account in the hub database ``db_url``.

    Returns True when the account was new. Raises RuntimeError (one line) when the hub has never started on that
    database (its tables are made by the hub, not here) or the password is shorter than 10 characters.
    """
    from nativeauthenticator.orm import UserInfo
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.orm import Session

    if len(password) < 10:
        raise RuntimeError("the password must have at least 10 characters")
    engine = create_engine(db_url)
    try:
        tables = set(inspect(engine).get_table_names())
        if "users" not in tables:
            raise RuntimeError("the hub has not started on this database yet: start it once (incloud hub start)")
        if "users_info" not in tables:
            UserInfo.__table__.create(engine)
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt())
        with Session(engine) as db:
            info = db.query(UserInfo).filter(UserInfo.username == username).first()
            created = info is None
            if created:
                info = UserInfo(username=username, password=hashed, is_authorized=True)
                db.add(info)
            else:
                info.password, info.is_authorized = hashed, True
            db.commit()
        return created
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """``python -m hub.native set-password NAME`` (password on stdin): for ``incloud hub admin-password``."""
    import sys

    from incloud_kernel.config import get_config

    from hub.spawners import state_dir

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "set-password":
        print("usage: python -m hub.native set-password NAME  (password on stdin)", file=sys.stderr)
        return 2
    cfg = get_config()
    db_url = cfg.hub.db_url or f"sqlite:///{state_dir(cfg) / 'jupyterhub.sqlite'}"
    try:
        created = set_password(db_url, args[1], sys.stdin.readline().rstrip("\n"))
    except Exception as exc:  # noqa: BLE001 - one line, never the password
        print(f"incloud hub admin-password: {exc if isinstance(exc, RuntimeError) else type(exc).__name__}",
              file=sys.stderr)
        return 1
    print(f"{'created' if created else 'reset'} the password of {args[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
