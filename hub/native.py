"""NativeAuthenticator (sign-up with admin approval) made to work on JupyterHub 6.

nativeauthenticator 1.3.0's login handler uses ``self.statsd``, which JupyterHub 6 removed (every login POST
then fails with HTTP 500). This subclass swaps in a handler with a no-op timer; nothing else changes. Remove it
when nativeauthenticator supports JupyterHub 6.
"""
from __future__ import annotations

from typing import Any

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
    """NativeAuthenticator with the JupyterHub 6 login fix."""

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        return [(pattern, LoginHandler if handler is NativeLoginHandler else handler)
                for pattern, handler in super().get_handlers(app)]
