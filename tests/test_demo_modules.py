"""The demo users' tiles follow the scopes of the APIs behind them: a tile shown to a user whose token the API
refuses is a broken promise, and an API a user may call with no tile is a hidden page (the feature library's
query page needed ``write`` for its tile while its API needs ``read``: a QC reviewer could open it only by URL)."""
from __future__ import annotations

from hub.roles import MODULES, modules_for
from hub.services.api.features import FeatureQueryHandler


def test_the_feature_library_tile_follows_its_query_api_scope() -> None:
    tile = next(m for m in MODULES if m.key == "features")
    assert tile.scope == FeatureQueryHandler.scope
    assert "features" in {m.key for m in modules_for(["qc_reviewer"])}  # the demo reviewer reads DEMO's features
    assert "features" not in {m.key for m in modules_for(["clinician"])}  # no read scope: no tile, API 403
