"""The workstation launcher (hub.workstation): the slow rfc3987_syntax import is deferred, validation still works."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CODE = """
import sys, hub.workstation as w
w._lazy_rfc3987_syntax()
import jsonschema
assert "lark" not in sys.modules, "rfc3987_syntax was imported eagerly"
checker = jsonschema.Draft7Validator.FORMAT_CHECKER
print(checker.conforms("http://example.org/a", "iri"), checker.conforms("not an iri", "iri"))
"""


def test_launcher_defers_rfc3987_syntax_and_iri_validation_still_works() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "False"]


def test_launcher_runs_a_console_script_in_process() -> None:
    out = subprocess.run([sys.executable, "-m", "hub.workstation", str(Path(sys.executable).with_name("jupyter")), "--version"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "jupyter_server" in out.stdout


def test_launcher_skips_jupyterlabs_yarn_probe_at_import() -> None:
    code = ("import subprocess, hub.workstation as w\nw._no_yarn_config_probe()\ncalls = []\n"
            "real = subprocess.check_output\nsubprocess.check_output = lambda *a, **k: calls.append(a) or real(*a, **k)\n"
            "import jupyterlab.labapp\nprint(len(calls))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "0"  # no `node yarn config` subprocess while importing JupyterLab
