"""Test helpers for the clinic uploader: a small synthetic head study with identities planted everywhere (the
hardening corpus of ``ingest_data.plant_identities``), the uploader package on ``sys.path``, and the API's token
table (scopes from ``hub.roles`` as the hub grants them)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from jupyterhub.services.auth import HubOAuth

from hub.roles import API_SERVICE, scopes_of
from ingest_data import PLANTED, PLANTED_TEXT, plant_identities

UPLOADER = Path(__file__).resolve().parents[1] / "uploader"
if str(UPLOADER) not in sys.path:
    sys.path.insert(0, str(UPLOADER))

ACCESS = f"access:services!service={API_SERVICE}"


def model(name: str, groups: list[str], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    scopes = {ACCESS, *scopes_of(groups)} - set(drop)
    return {"name": name, "kind": "user", "groups": groups, "scopes": sorted(scopes)}


TOKENS: dict[str, dict[str, Any]] = {
    "t-cleo": model("cleo", ["clinician"]),        # a clinic user: upload scope, member of CLIN
    "t-max": model("max", ["researcher"]),         # member of CLIN, no upload scope
    "t-cleo-noscope": model("cleo", ["clinician"], drop=("custom:incloud:upload",)),
}


class TableHubAuth(HubOAuth):
    """HubOAuth whose token check is a table lookup (everything after it is the real service); a token can be
    expired in the middle of a test with ``TOKENS.pop``."""

    async def get_user(self, handler, sync=True):  # type: ignore[no-untyped-def, override]
        header = handler.request.headers.get("Authorization", "")
        return TOKENS.get(header.split(" ", 1)[-1]) if header.startswith("token ") else None


def planted_study(out: Path, seed: int = 11, modalities: tuple[str, ...] = ("T1w",),
                  screen_save: bool = False) -> tuple[Path, set[str]]:
    """A small synthetic study (2 mm T1w by default; with ``screen_save`` a burned-in secondary capture too) with
    the planted identities; returns its folder and the original UIDs now in its files."""
    from incloud_kernel.synth import make_study

    truth = make_study(out, seed=seed, small=True, modalities=modalities, secondary_capture=screen_save,
                       labels=False)
    folder = Path(truth.study_dir)
    uids = plant_identities(sorted(folder.rglob("*.dcm")))
    uids.discard("None")  # an attribute the synthetic series lacks, not a UID
    return folder, uids


PLANTED_VALUES = [*PLANTED.values(), *PLANTED_TEXT.values()]
