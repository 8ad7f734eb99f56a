"""``incloud_kernel.connect()`` finds its URL and token: workstation, environment, config file; clear errors."""
from __future__ import annotations

import subprocess
import sys

import pytest

from incloud_kernel.client import ApiError, TokenError, connect, resolve_credentials


def test_inside_a_workstation_the_hub_environment_is_enough() -> None:
    url, token, source = resolve_credentials(env={"JUPYTERHUB_API_TOKEN": "abc",
                                                  "INCLOUD_API_URL": "http://h/services/incloud-api"})
    assert (url, token, source) == ("http://h/services/incloud-api/", "abc", "workstation")


def test_outside_a_config_file_is_read(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "client.toml"
    f.write_text('url = "https://hub.example.org/services/incloud-api/"\ntoken = "t0k"\n')
    url, token, source = resolve_credentials(env={"INCLOUD_CLIENT_CONFIG": str(f)})
    assert token == "t0k" and source.startswith("file")


def test_missing_token_or_url_is_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TokenError, match="no API token"):
        resolve_credentials(env={"INCLOUD_CLIENT_CONFIG": str(tmp_path / "none.toml")})
    with pytest.raises(ApiError, match="no API URL"):
        resolve_credentials(env={"INCLOUD_API_TOKEN": "x", "INCLOUD_CLIENT_CONFIG": str(tmp_path / "n.toml")})


def test_unreachable_api_is_one_line() -> None:
    with pytest.raises(ApiError, match="cannot reach the INCloud API") as info:
        connect("http://127.0.0.1:9/services/incloud-api/", "x", timeout=2)
    assert "\n" not in str(info.value) and "x" not in str(info.value).split("at")[0]


def test_importing_incloud_kernel_and_its_client_stays_light() -> None:
    """Workstation kernels import incloud_kernel; heavy libraries load only when a call needs them."""
    code = ("import sys, incloud_kernel, incloud_kernel.client\n"
            "print(sorted(m for m in ('pandas', 'numpy', 'sqlalchemy', 'nibabel', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-1000:]
    assert out.stdout.strip() == "[]"


def test_series_can_be_named_by_id_row_or_dict() -> None:
    import pandas as pd

    from incloud_kernel.client import _series_id
    from incloud_kernel.errors import ValidationError

    frame = pd.DataFrame([{"id": 7, "suffix": "T1w"}])
    assert _series_id(7) == _series_id("7") == _series_id({"id": 7}) == _series_id(frame.iloc[0]) == 7
    for bad in (None, "x", {"suffix": "T1w"}):
        with pytest.raises(ValidationError, match="series"):
            _series_id(bad)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_listing_filter_may_be_called_kind(site) -> None:  # type: ignore[no-untyped-def]
    """``client.files(kind="derivative")`` (the documented filter) once clashed with the listing's own
    parameter name and raised TypeError; the filter now reaches the real API as a query parameter, which
    answers the project's derivative files only (a raw file of the same session is left out)."""
    from api_thread import ACCESS, TableAuth, serving

    from hub.roles import scopes_of
    from hub.services.api.app import make_app
    from incloud_kernel.archive import records
    from incloud_kernel.archive.permissions import Actor
    from incloud_kernel.archive.projects import create_project, grant
    from incloud_kernel.client import Client

    console = Actor.console("tester")
    with records.transaction(site) as db:
        create_project(db, console, "DEMO", "Demo")
        grant(db, console, "DEMO", "max", "member")
        session = records.add_session(db, console, records.add_participant(db, console, "DEMO", "P01"), "1")
        series = records.add_series(db, console, session, "anat", "T1w").id
        derivative = records.add_derivative(db, console, session, "toy", "1").id
    records.add_files(site, console, series, {"json": b"{}"})
    derived = records.add_files(site, console, derivative, {"anat/desc-brain_mask.json": b"{}"}, derivative=True)
    tokens = {"t-max": {"name": "max", "kind": "user", "groups": ["researcher"],
                        "scopes": sorted({ACCESS, *scopes_of(["researcher"], False)})}}
    with serving(make_app(site.config, hub_auth=TableAuth(tokens))) as url:
        frame = Client(url, "t-max").files(project="DEMO", kind="derivative")
    assert list(frame["relpath"]) == [derived[0].relpath]
    assert derived[0].relpath.startswith("derivatives/toy-1/sub-P01/ses-1/anat/")
