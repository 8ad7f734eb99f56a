"""The workstation's launcher: ``python -m hub.workstation [--report-port] COMMAND ARGS...`` runs the single-user
server (``jupyterhub-singleuser``) with a faster start, unchanged behaviour otherwise.

Why it exists: spawn-to-ready is dominated by Python imports in the workstation, and one import alone,
``rfc3987_syntax`` (pulled in by ``jsonschema._format`` through jupyter_events, which every Jupyter server imports),
compiles about 35 Lark parsers at import time: 1.3 to 3 s on a loaded 2-core node, for an ``iri`` format that no
Jupyter schema uses (jupyter_server issue 1559). The launcher puts a lazy stand-in for that module in
``sys.modules``: the real module is imported the first time an IRI is actually validated, so validation stays
correct. ``--report-port`` does batchspawner's part (pick a port, tell the hub; ``batchspawner-singleuser``).

Must never print or log the hub token, and must stay import-light itself (standard library only at module level).
"""
from __future__ import annotations

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


def main(argv: list[str] | None = None) -> None:
    """Start ``COMMAND`` (a console script on PATH or an absolute path) in this process."""
    args = list(sys.argv[1:] if argv is None else argv)
    report = bool(args) and args[0] == "--report-port"
    if report:
        args = args[1:]
    if not args:
        sys.exit("usage: python -m hub.workstation [--report-port] COMMAND [ARGS...]")
    _lazy_rfc3987_syntax()
    if report:
        from batchspawner.singleuser import main as batch_main  # reports the port, then runs COMMAND

        sys.argv = ["batchspawner-singleuser", *args]
        batch_main()
        return
    path = shutil.which(args[0])
    if path is None:
        sys.exit(f"hub.workstation: command not found: {args[0]}")
    sys.argv = args
    runpy.run_path(path, run_name="__main__")


if __name__ == "__main__":
    main()
