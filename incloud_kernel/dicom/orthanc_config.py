"""Orthanc's JSON configuration, derived from the site config, and the REST credentials it is guarded with.

One function decides every Orthanc option INCloud relies on (allow-list at association, durable storage, REST on
loopback with generated credentials, DICOMweb, the worklist folder, SQLite or PostgreSQL index). It must never
write the credentials or the configuration (which holds them) with a mode other than 0600, nor create Orthanc's
folders (storage and index hold identified instances) with a mode other than 0700.
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from incloud_kernel.config import Config
from incloud_kernel.errors import ConfigError, StorageError
from incloud_kernel.site import private_dir

#: SOP classes INCloud expects (MR, enhanced MR, CT, PET, secondary capture); Orthanc 1.10 accepts every
#: storage class DCMTK knows and rejects unknown ones (``UnknownSopClassAccepted`` false).
EXPECTED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
CREDENTIALS_FILE = "orthanc-credentials.json"
REST_USER = "incloud"


@dataclass(frozen=True)
class OrthancPaths:
    """Where the supervised Orthanc keeps its files: everything under ``<spool>/orthanc``."""

    root: Path

    @classmethod
    def of(cls, config: Config) -> OrthancPaths:
        return cls(config.spool / "orthanc")

    @property
    def config_file(self) -> Path:
        return self.root / "orthanc.json"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def worklists(self) -> Path:
        return self.root / "worklists"

    @property
    def log_file(self) -> Path:
        return self.root / "orthanc.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "orthanc.pid"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


def _write_private(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` with mode 0600 (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None


def rest_credentials(config: Config) -> Credentials:
    """The REST credentials of the site's Orthanc, generated once into ``$INCLOUD_HOME`` (mode 0600)."""
    path = config.home / CREDENTIALS_FILE
    if not path.exists():
        _write_private(path, json.dumps({"username": REST_USER, "password": secrets.token_urlsafe(24)}).encode())
    try:
        data = json.loads(path.read_text())
        return Credentials(str(data["username"]), str(data["password"]))
    except (OSError, ValueError, KeyError):
        raise ConfigError(f"Orthanc credentials file {path} is unreadable; remove it to generate new ones") from None


def rest_url(config: Config) -> str:
    return f"http://127.0.0.1:{config.dicom.http_port}"


def _libpq_uri(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as the libpq URI the Orthanc plugin takes."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError("dicom.index_database_url is not a valid URL") from None
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError("dicom.index_database_url must be a PostgreSQL URL")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def _modality_key(aet: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in aet.lower()) or "aet"


def build_config(config: Config, credentials: Credentials, paths: OrthancPaths | None = None) -> dict[str, Any]:
    """Orthanc 1.10's configuration for this site, as a JSON-ready dict.

    Calling AEs: with ``dicom.allowed_calling_aets`` set, ``DicomAlwaysAllow*`` are false and only the listed AEs
    are ``DicomModalities``, so Orthanc refuses any other AE at association. An empty list accepts any AE
    (C-ECHO and C-STORE only). Raises ConfigError on an unusable setting.
    """
    d = config.dicom
    paths = paths or OrthancPaths.of(config)
    plugins_dir = Path(d.plugins_dir)
    plugins: list[str] = []
    if d.dicomweb:
        plugins.append(str(plugins_dir / "libOrthancDicomWeb.so"))
    if d.worklist:
        plugins.append(str(plugins_dir / "libModalityWorklists.so"))
    if d.index_database_url:
        plugins.append(str(plugins_dir / "libOrthancPostgreSQLIndex.so"))
    if len(d.ae_title) > 16 or not d.ae_title.strip():
        raise ConfigError("dicom.ae_title must be 1 to 16 characters")
    uses_called_aet = any("called_aet" in rule for rule in d.routing)
    allow_list = [a for a in d.allowed_calling_aets if a.strip()]
    for aet in allow_list:
        if len(aet) > 16:
            raise ConfigError("dicom.allowed_calling_aets: AE titles are at most 16 characters")
    modalities = {
        _modality_key(aet): {
            "AET": aet, "Host": "127.0.0.1", "Port": 104,
            "AllowEcho": True, "AllowStore": True, "AllowFind": True, "AllowFindWorklist": True,
            "AllowMove": False, "AllowGet": False, "AllowStorageCommitment": False,
        }
        for aet in allow_list
    }
    open_door = not allow_list
    cfg: dict[str, Any] = {
        "Name": config.site.name[:64],
        "StorageDirectory": str(paths.storage),
        "IndexDirectory": str(paths.index),
        "StorageCompression": False,
        "MaximumStorageSize": 0,
        "MaximumPatientCount": 0,
        "Plugins": plugins,
        "ConcurrentJobs": 2,
        # REST: loopback only, authenticated with generated credentials.
        "HttpServerEnabled": True,
        "HttpPort": d.http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {credentials.username: credentials.password},
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "HttpDescribeErrors": True,
        "ExecuteLuaEnabled": False,
        "RestApiWriteToFileSystemEnabled": False,
        "KeepAlive": True,
        "TcpNoDelay": True,
        # DICOM server.
        "DicomServerEnabled": True,
        "DicomAet": d.ae_title,
        "DicomPort": d.port,
        "DicomCheckCalledAet": bool(d.check_called_aet and not uses_called_aet),
        "AcceptedTransferSyntaxes": list(d.accepted_transfer_syntaxes),
        "UnknownSopClassAccepted": False,
        "DicomScpTimeout": 30,
        "DicomThreadsCount": d.dicom_threads,
        "DicomAlwaysAllowEcho": open_door,
        "DicomAlwaysAllowStore": open_door,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowFindWorklist": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomCheckModalityHost": False,
        "DicomModalities": modalities,
        "DicomModalitiesInDatabase": False,
        "OrthancPeers": {},
        # Durability and hand-off.
        "SyncStorageArea": True,
        "StoreMD5ForAttachments": True,
        "OverwriteInstances": False,
        "StableAge": d.stable_age,
        "SaveJobs": False,
        "DeidentifyLogs": True,
        "StorageAccessOnFind": "Never",
    }
    cfg.update(_tls(d))
    if d.dicomweb:
        cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                           "WadoRoot": "/wado", "Ssl": False, "StudiesMetadata": "MainDicomTags",
                           "SeriesMetadata": "MainDicomTags"}
    if d.worklist:
        cfg["Worklists"] = {"Enable": True, "Database": str(paths.worklists)}
    if d.index_database_url:
        cfg["PostgreSQL"] = {"EnableIndex": True, "EnableStorage": False,
                             "ConnectionUri": _libpq_uri(d.index_database_url), "Lock": False,
                             "EnableSsl": False}
    return cfg


def _tls(d: Any) -> dict[str, Any]:
    """Orthanc's DICOM TLS settings (Orthanc >= 1.9) from ``[dicom] tls_*``; nothing while no certificate is set.

    A half-made setting (a certificate without its key, mutual TLS without a trusted bundle, a file that is not
    there) is a one-line ConfigError at start, never an edge that silently falls back to plain DICOM."""
    if not (d.tls_certificate or d.tls_private_key):
        return {}
    files = {"tls_certificate": d.tls_certificate, "tls_private_key": d.tls_private_key}
    if d.tls_require_sender_certificate:
        files["tls_trusted_certificates"] = d.tls_trusted_certificates
    for key, value in files.items():
        if not value:
            raise ConfigError(f"[dicom] {key} is empty: DICOM TLS needs the certificate, its private key"
                              + (" and the trusted senders' certificates" if d.tls_require_sender_certificate
                                 else ""))
        if not Path(value).is_file():
            raise ConfigError(f"[dicom] {key}: {value} is not a readable file")
    tls = {"DicomTlsEnabled": True, "DicomTlsCertificate": d.tls_certificate,
           "DicomTlsPrivateKey": d.tls_private_key,
           "DicomTlsRemoteCertificateRequired": bool(d.tls_require_sender_certificate)}
    if d.tls_trusted_certificates:
        tls["DicomTlsTrustedCertificates"] = d.tls_trusted_certificates
    return tls


def write_config(config: Config) -> tuple[Path, Credentials]:
    """Write Orthanc's configuration (0600: it holds the REST password) and create its folders."""
    paths = OrthancPaths.of(config)
    credentials = rest_credentials(config)
    for folder in (paths.root, paths.storage, paths.index, paths.worklists):
        try:
            private_dir(folder)  # Orthanc's storage holds identified instances (docs/security.md)
        except OSError as exc:
            raise StorageError(f"cannot create {folder}: {exc.strerror or type(exc).__name__}") from None
    data = build_config(config, credentials, paths)
    for plugin in data["Plugins"]:
        if not Path(plugin).exists():
            raise ConfigError(f"Orthanc plugin {plugin} not found (install the Debian package or set dicom.plugins_dir)")
    _write_private(paths.config_file, json.dumps(data, indent=2).encode())
    return paths.config_file, credentials
