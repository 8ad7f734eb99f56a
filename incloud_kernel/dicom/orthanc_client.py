"""A small REST client for the site's Orthanc: the change feed, studies, instances, deletion, C-FIND helpers.

It carries the generated credentials and talks to loopback only. It must never log a response body (those hold
identified header values); errors name the endpoint and the HTTP status only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import requests

from incloud_kernel.config import Config
from incloud_kernel.dicom.orthanc_config import rest_credentials, rest_url
from incloud_kernel.errors import IncloudError


class OrthancUnavailable(IncloudError):
    """Orthanc's REST API cannot be reached or refused a request."""


@dataclass
class Change:
    """One entry of Orthanc's ``/changes`` feed."""

    seq: int
    change_type: str
    resource_type: str
    resource_id: str


class OrthancClient:
    def __init__(self, base_url: str, auth: tuple[str, str], timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.auth = auth
        self.timeout = timeout

    @classmethod
    def for_site(cls, config: Config) -> OrthancClient:
        creds = rest_credentials(config)
        return cls(rest_url(config), (creds.username, creds.password))

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(method, f"{self.base_url}{path}", timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise OrthancUnavailable(f"Orthanc REST {method} {path.split('?')[0]} failed: {type(exc).__name__}") from None
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code != 200:
            raise OrthancUnavailable(f"Orthanc REST {method} {path.split('?')[0]} answered {response.status_code}")
        return response.json()

    def system(self) -> dict[str, Any]:
        return self._json("GET", "/system")

    def statistics(self) -> dict[str, Any]:
        return self._json("GET", "/statistics")

    def changes(self, since: int, limit: int = 100) -> tuple[list[Change], int, bool]:
        """Changes after sequence number ``since``: (changes, last sequence, done)."""
        data = self._json("GET", f"/changes?since={since}&limit={limit}")
        changes = [Change(int(c["Seq"]), c["ChangeType"], c.get("ResourceType", ""), c.get("ID", ""))
                   for c in data.get("Changes", [])]
        return changes, int(data.get("Last", since)), bool(data.get("Done", True))

    def last_change(self) -> int:
        data = self._json("GET", "/changes?last")
        return int(data.get("Last", 0))

    def studies(self) -> list[str]:
        return list(self._json("GET", "/studies"))

    def study(self, study_id: str) -> dict[str, Any] | None:
        """The study's Orthanc record (``IsStable``, ``Series``, ``MainDicomTags``), or None when gone."""
        response = self._request("GET", f"/studies/{study_id}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise OrthancUnavailable(f"Orthanc REST GET /studies/... answered {response.status_code}")
        return response.json()

    def study_instances(self, study_id: str) -> list[str]:
        response = self._request("GET", f"/studies/{study_id}/instances")
        if response.status_code == 404:
            return []
        if response.status_code != 200:
            raise OrthancUnavailable(f"Orthanc REST GET /studies/.../instances answered {response.status_code}")
        return [item["ID"] for item in response.json()]

    def instance_metadata(self, instance_id: str, name: str) -> str | None:
        response = self._request("GET", f"/instances/{instance_id}/metadata/{name}")
        return response.text if response.status_code == 200 else None

    def download_instance(self, instance_id: str, target: Path) -> bool:
        """Write the instance's DICOM file to ``target``; False when Orthanc no longer has it."""
        response = self._request("GET", f"/instances/{instance_id}/file", stream=True)
        if response.status_code == 404:
            return False
        if response.status_code != 200:
            raise OrthancUnavailable(f"Orthanc REST GET /instances/.../file answered {response.status_code}")
        with open(target, "wb") as fh:
            for chunk in response.iter_content(1 << 20):
                fh.write(chunk)
        return True

    def delete_instances(self, instance_ids: list[str]) -> None:
        """Delete exactly these instances (not the whole study: a late instance must survive for the next run)."""
        for start in range(0, len(instance_ids), 500):
            chunk = instance_ids[start:start + 500]
            response = self._request("POST", "/tools/bulk-delete", json={"Resources": chunk})
            if response.status_code == 200:
                continue
            for instance_id in chunk:  # older Orthanc: one by one
                r = self._request("DELETE", f"/instances/{instance_id}")
                if r.status_code not in (200, 404):
                    raise OrthancUnavailable(f"Orthanc REST DELETE /instances/... answered {r.status_code}")

    def iter_stable_studies(self) -> Iterator[str]:
        for study_id in self.studies():
            info = self.study(study_id)
            if info is not None and info.get("IsStable"):
                yield study_id
