"""NativeAuthenticator (sign-up with admin approval) made to work on JupyterHub 6.

nativeauthenticator 1.3.0's login handler uses ``self.statsd``, which JupyterHub 6 removed (every login POST
then fails with HTTP 500). This subclass swaps in a handler with a no-op timer; nothing else changes. Remove it
when nativeauthenticator supports JupyterHub 6.

It also checks login passwords with bcrypt in a worker thread: upstream runs bcrypt (about 0.3 s of CPU, more on a
loaded node) on the hub's event loop, so 50 concurrent logins queued one after another and stalled every other
request of the hub meanwhile. Sign-up still hashes on the loop (upstream calls ``create_user`` synchronously).
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

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        return [(pattern, LoginHandler if handler is NativeLoginHandler else handler)
                for pattern, handler in super().get_handlers(app)]


def _password_matches(stored: bytes, password: str) -> bool:
    """bcrypt check of ``password`` against the stored salt+hash (releases the GIL while hashing)."""
    return hmac.compare_digest(stored, bcrypt.hashpw(password.encode(), stored))
