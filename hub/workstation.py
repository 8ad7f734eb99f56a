"""The workstation's launcher: ``python -m hub.workstation [--report-port] COMMAND ARGS...`` runs the single-user
server (``jupyterhub-singleuser``) with a faster start, unchanged behaviour otherwise.

Why it exists: spawn-to-ready is dominated by Python imports in the workstation, and one import alone,
``rfc3987_syntax`` (pulled in by ``jsonschema._format`` through jupyter_events, which every Jupyter server imports),
compiles about 35 Lark parsers at import time: 1.3 to 3 s on a loaded 2-core node, for an ``iri`` format that no
Jupyter schema uses (jupyter_server issue 1559). The launcher puts a lazy stand-in for that module in
``sys.modules``: the real module is imported the first time an IRI is actually validated, so validation stays
correct. JupyterLab's ``labapp`` module asks ``node yarn config`` for an npm registry at import time (a subprocess,
about 1.5 s on a loaded node) that only matters for building lab extensions, which a workstation never does (its
extension manager is read-only, hub.spawners): the launcher answers "no yarn configuration" instead, in this
process only (``jupyter lab build`` in a terminal is unaffected).
``--report-port`` does ``batchspawner-singleuser``'s part (pick a port, tell the hub at ``/batchspawner``) without
importing the ``batchspawner`` package, whose ``__init__`` loads the hub-side spawner, JupyterHub's ORM and
SQLAlchemy (1 to 3 s) into every workstation, and tells the hub only once the server listens.

Must never print or log the hub token, and must stay import-light itself (standard library only at module level).
"""
from __future__ import annotations

import importlib.util
import os
import runpy
import shutil
import sys
import types
from typing import Any


def _lazy_rfc3987_syntax() -> None:
    """Register a stand-in ``rfc3987_syntax`` whose ``is_valid_syntax`` imports the real one on first use."""
    if "rfc3987_syntax" in sys.modules:
        return
    stub = types.ModuleType("rfc3987_syntax")
    stub.__doc__ = "Lazy stand-in installed by hub.workstation; the real module loads on first call."

    def is_valid_syntax(rule: str, value: str) -> Any:
        real = sys.modules.get("rfc3987_syntax")
        if real is stub:
            del sys.modules["rfc3987_syntax"]
        import rfc3987_syntax as real_module  # the real package (Lark parsers built here, once)

        return real_module.is_valid_syntax(rule, value)

    stub.is_valid_syntax = is_valid_syntax  # type: ignore[attr-defined]
    sys.modules["rfc3987_syntax"] = stub


def _no_yarn_config_probe() -> None:
    """Make JupyterLab's import-time ``node yarn config`` probe answer "nothing configured" (see the module doc)."""
    if importlib.util.find_spec("jupyterlab") is None:
        return
    import jupyterlab.commands as commands

    if hasattr(commands, "_yarn_config"):
        commands._yarn_config = lambda logger=None: {"yarn config": {}, "npm config": {}}


def _report_port(wait_listening: float = 60.0) -> None:
    """batchspawner's protocol: choose a free port, put it into ``JUPYTERHUB_SERVICE_URL`` (JupyterHub >= 2) and
    POST it to the hub's ``/batchspawner`` with the server's token.

    Unlike ``batchspawner-singleuser``, the POST waits (in a thread) until the server accepts connections, at most
    ``wait_listening`` s: the hub polls a reported port with exponential back-off (0.2 s doubling up to 5 s), so a
    port reported seconds before the server listens cost up to a few seconds of idle waiting per spawn. A refused
    POST is written to stderr (the job log) and the hub's own start timeout applies, as upstream.
    """
    import socket
    import threading
    import time
    from urllib.parse import urlparse, urlunparse

    from jupyterhub.utils import random_port

    port = random_port()
    url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    os.environ["JUPYTERHUB_SERVICE_URL"] = urlunparse(url._replace(netloc=f"{url.hostname}:{port}"))
    host = url.hostname if url.hostname not in (None, "", "0.0.0.0", "::") else "127.0.0.1"

    def post_when_listening() -> None:
        deadline = time.monotonic() + wait_listening
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host, port), timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        try:
            import requests
            from jupyterhub.services.auth import HubAuth
            from jupyterhub.utils import url_path_join

            hub_auth = HubAuth()
            kwargs: dict[str, Any] = {}
            if hub_auth.certfile and hub_auth.keyfile:
                kwargs["cert"] = (hub_auth.certfile, hub_auth.keyfile)
            if hub_auth.client_ca:
                kwargs["verify"] = hub_auth.client_ca
            r = requests.post(url_path_join(hub_auth.api_url, "batchspawner"), json={"port": port}, timeout=30,
                              headers={"Authorization": f"token {hub_auth.api_token}"}, **kwargs)
            if r.status_code >= 400:
                print(f"hub.workstation: the hub refused the port report (HTTP {r.status_code})", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - the job log is the only place a user can read this
            print(f"hub.workstation: could not report the port to the hub: {type(exc).__name__}", file=sys.stderr)

    threading.Thread(target=post_when_listening, name="report-port", daemon=True).start()


def _seed_root() -> None:
    """Put INCloud's dashboards (always the site's current ones) and example notebooks (once: they become the
    user's own) into the server's root folder, as the user, before the server starts. A failure is one line in the
    workstation log, never a failed start."""
    root = os.path.expanduser(os.environ.get("JUPYTERHUB_ROOT_DIR") or os.getcwd())
    try:
        from pathlib import Path

        import voila_apps
        from incloud_kernel import notebooks

        voila_apps.install(Path(root))
        notebooks.install(Path(root))
    except Exception as exc:  # noqa: BLE001 - the user still gets a workstation
        print(f"hub.workstation: could not add INCloud's notebooks: {type(exc).__name__}: {exc}", file=sys.stderr)
    try:
        from pathlib import Path

        from hub.workshops import seed_course  # a workshop student's course notebooks (nothing for others)

        seed_course(Path(root))
    except Exception as exc:  # noqa: BLE001 - the student still gets a workstation
        print(f"hub.workstation: could not add the course notebooks: {type(exc).__name__}: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Start ``COMMAND`` (a console script on PATH or an absolute path) in this process."""
    args = list(sys.argv[1:] if argv is None else argv)
    report = bool(args) and args[0] == "--report-port"
    if report:
        args = args[1:]
    if not args:
        sys.exit("usage: python -m hub.workstation [--report-port] COMMAND [ARGS...]")
    _lazy_rfc3987_syntax()
    _no_yarn_config_probe()
    _seed_root()
    if report:
        _report_port()
    path = shutil.which(args[0])
    if path is None:
        sys.exit(f"hub.workstation: command not found: {args[0]}")
    sys.argv = args
    runpy.run_path(path, run_name="__main__")


if __name__ == "__main__":
    main()
