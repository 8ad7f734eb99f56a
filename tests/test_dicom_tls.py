"""DICOM TLS on the edge (issue 20 item 3, "DICOM TLS optional on the edge"): Orthanc speaks TLS with the site's
certificate and accepts only senders whose certificate the trusted bundle holds; plain DICOM and an unknown
certificate are refused and store nothing. dcmtk's storescu (a real client) is the sender; the certificates are
made by openssl for the test (a site uses its own)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from conftest import require_tool
from dicom_edge import start_edge
from incloud_kernel.config import load_config
from incloud_kernel.dicom.orthanc_config import build_config, rest_credentials
from incloud_kernel.errors import ConfigError

MR = Path(get_testdata_file("MR_small.dcm"))


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _pair(folder: Path, name: str, ca: tuple[Path, Path] | None) -> tuple[Path, Path]:
    """A key and a certificate signed by ``ca`` (self-signed when None), CN ``name``, SAN 127.0.0.1."""
    key, crt = folder / f"{name}.key", folder / f"{name}.crt"
    subj = ["-subj", f"/CN={name}"]
    if ca is None:
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", str(key), "-out",
                 str(crt), *subj, "-addext", "basicConstraints=critical,CA:TRUE")
        return key, crt
    csr = folder / f"{name}.csr"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), *subj)
    ext = folder / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]), "-CAcreateserial",
             "-days", "2", "-out", str(crt), "-extfile", str(ext))
    key.chmod(0o600)
    return key, crt


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    require_tool("openssl")
    folder = tmp_path_factory.mktemp("pki")
    ca = _pair(folder, "site-ca", None)
    stranger_ca = _pair(folder, "stranger-ca", None)
    return {"ca": ca, "edge": _pair(folder, "edge", ca), "scanner": _pair(folder, "scanner", ca),
            "stranger": _pair(folder, "stranger", stranger_ca)}


def _tls_env(pki: dict[str, tuple[Path, Path]]) -> dict[str, str]:
    return {"INCLOUD_DICOM_TLS_CERTIFICATE": str(pki["edge"][1]), "INCLOUD_DICOM_TLS_PRIVATE_KEY": str(pki["edge"][0]),
            "INCLOUD_DICOM_TLS_TRUSTED_CERTIFICATES": str(pki["ca"][1])}


def test_a_half_made_tls_setting_is_one_line(tmp_path: Path, pki) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config(env={"INCLOUD_HOME": str(tmp_path), "INCLOUD_DICOM_TLS_CERTIFICATE": str(pki["edge"][1])})
    with pytest.raises(ConfigError, match="tls_private_key is empty"):
        build_config(cfg, rest_credentials(cfg))
    cfg = load_config(env={"INCLOUD_HOME": str(tmp_path), **_tls_env(pki),
                           "INCLOUD_DICOM_TLS_TRUSTED_CERTIFICATES": str(tmp_path / "none.pem")})
    with pytest.raises(ConfigError, match="none.pem is not a readable file"):
        build_config(cfg, rest_credentials(cfg))
    cfg = load_config(env={"INCLOUD_HOME": str(tmp_path)})
    assert "DicomTlsEnabled" not in build_config(cfg, rest_credentials(cfg))  # off by default


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_edge_takes_only_tls_from_a_trusted_sender(site_env: dict[str, str], pki) -> None:  # type: ignore[no-untyped-def]
    require_tool("storescu")
    require_tool("Orthanc")
    edge = start_edge(site_env, extra_env=_tls_env(pki))
    try:
        trust = ("+cf", str(pki["ca"][1]))
        sent = edge.store(MR, extra=("+tls", str(pki["scanner"][0]), str(pki["scanner"][1]), *trust))
        assert sent.returncode == 0, sent.stderr
        assert edge.get("/statistics").json()["CountInstances"] == 1

        plain = edge.store(MR)  # no TLS at all
        stranger = edge.store(MR, extra=("+tls", str(pki["stranger"][0]), str(pki["stranger"][1]), *trust))
        assert plain.returncode != 0 and stranger.returncode != 0
        assert edge.get("/statistics").json()["CountInstances"] == 1  # nothing more arrived
    finally:
        edge.stop()
