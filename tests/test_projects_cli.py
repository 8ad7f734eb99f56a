"""``incloud projects`` and ``incloud grant`` as a user runs them: one-line errors, exit codes, JSON output.

Most calls go through the real entry point (``incloud_kernel.cli.main``) in this process, because a fresh
interpreter per call costs over a second on a loaded 2-core machine; one test per behaviour that depends on
the process boundary (exit status, no traceback on stderr) runs the installed ``incloud`` executable.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Iterator

import pytest

from incloud_kernel.cli import main

INCLOUD = [os.path.join(os.path.dirname(sys.executable), "incloud")]
_capsys: pytest.CaptureFixture[str] | None = None


@pytest.fixture(autouse=True)
def _capture(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    global _capsys
    _capsys = capsys
    yield
    _capsys = None


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``incloud ARGS`` in this process (env is already set by the site_env fixture)."""
    assert _capsys is not None
    _capsys.readouterr()
    umask = os.umask(0o077)  # the CLI sets 077 for its process; this process is pytest's, so put it back after
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.umask(umask)
    out = _capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def run_process(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*INCLOUD, *args], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)


def ok(env: dict[str, str], *args: str) -> str:
    result = run(env, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def cli_env(site_env: dict[str, str]) -> dict[str, str]:
    ok(site_env, "init")
    return site_env


def test_create_list_grant_and_groups(cli_env: dict[str, str]) -> None:
    env = cli_env
    assert "created project STUDY1" in ok(env, "projects", "create", "STUDY1", "--name", "First study",
                                          "--owner", "olivia")
    ok(env, "projects", "create", "OTHER")
    ok(env, "projects", "groups", "add-member", "lab", "max")
    ok(env, "grant", "lab", "STUDY1", "member", "--group")
    ok(env, "grant", "cleo", "STUDY1", "collaborator", "--as", "olivia")  # an owner may grant
    listing = json.loads(ok(env, "projects", "list", "--json", "--as", "max"))
    assert [(p["code"], p["role"]) for p in listing["projects"]] == [("STUDY1", "member")]
    assert json.loads(ok(env, "projects", "list", "--json", "--as", "nobody"))["projects"] == []
    console = json.loads(ok(env, "projects", "list", "--json"))
    assert [p["code"] for p in console["projects"]] == ["STUDY1", "OTHER"]
    members = json.loads(ok(env, "projects", "members", "STUDY1", "--json", "--as", "cleo"))
    assert {(m["kind"], m["principal"], m["role"]) for m in members} == {
        ("user", "olivia", "owner"), ("group", "lab", "member"), ("user", "cleo", "collaborator")}
    ok(env, "projects", "revoke", "cleo", "STUDY1")
    assert json.loads(ok(env, "projects", "list", "--json", "--as", "cleo"))["projects"] == []


def test_site_admins_are_listed_explicitly(cli_env: dict[str, str]) -> None:
    env = cli_env
    assert "no site admins" in ok(env, "projects", "admins", "list")
    one_line_error(run(env, "projects", "create", "X1", "--as", "ada"), 3)
    ok(env, "projects", "admins", "add", "ada")
    assert json.loads(ok(env, "projects", "admins", "list", "--json")) == ["ada"]
    ok(env, "projects", "create", "X1", "--as", "ada")
    ok(env, "projects", "admins", "remove", "ada")
    one_line_error(run(env, "projects", "create", "X2", "--as", "ada"), 3)


def test_bad_project_codes_fail_in_one_line(cli_env: dict[str, str]) -> None:
    for code in ["../evil", "/abs", "a b", "sub-01", "a_b", "ünï", "x" * 65, "A\nB"]:
        line = one_line_error(run(cli_env, "projects", "create", code), 2)
        assert "project code" in line
    assert json.loads(ok(cli_env, "projects", "list", "--json"))["projects"] == []


def test_duplicate_codes_fail_in_one_line(cli_env: dict[str, str]) -> None:
    ok(cli_env, "projects", "create", "STUDY1", "--name", "kept")
    # a real process: non-zero exit status, one line on stderr, no traceback
    assert one_line_error(run_process(cli_env, "projects", "create", "STUDY1", "--name", "lost"), 2) == \
        "error: project code STUDY1 already exists"
    one_line_error(run(cli_env, "projects", "create", "study1"), 2)
    projects = json.loads(ok(cli_env, "projects", "list", "--json"))["projects"]
    assert [(p["code"], p["name"]) for p in projects] == [("STUDY1", "kept")]


def test_grant_errors(cli_env: dict[str, str]) -> None:
    env = cli_env
    ok(env, "projects", "create", "STUDY1", "--owner", "olivia")
    ok(env, "grant", "mia", "STUDY1", "member")
    assert run(env, "grant", "mia", "STUDY1", "boss").returncode == 2  # click's usage error
    assert "not found" in one_line_error(run(env, "grant", "mia", "NOPE", "member"), 4)
    # a member may not grant; somebody without membership is told the project does not exist
    one_line_error(run(env, "grant", "x", "STUDY1", "member", "--as", "mia"), 3)
    assert one_line_error(run(env, "grant", "x", "STUDY1", "member", "--as", "nina"), 4) == \
        "error: project STUDY1 not found"
    one_line_error(run(env, "grant", "../x", "STUDY1", "member"), 2)


def test_unreachable_database_is_one_line(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    env = {"INCLOUD_HOME": str(tmp_path), "INCLOUD_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
           "INCLOUD_DATABASE_CONNECT_TIMEOUT": "2"}
    one_line_error(run_process(env, "projects", "list"), 2)
