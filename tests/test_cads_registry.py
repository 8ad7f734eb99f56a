"""CADS item 3: versioned models and retraining, on the same held-out scans.

With twice the training data the candidate is promoted and scores better on the same held-out scans than the
model it replaces; with shuffled training labels it is refused and the current model stays; every version keeps
its training snapshot, versions, metrics and a checksummed file; only a site administrator retrains."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from incloud_kernel.archive.models import AuditEvent, CadsModel
from incloud_kernel.archive.permissions import Actor
from incloud_kernel.cads import data, registry, synthetic
from incloud_kernel.db import transaction
from incloud_kernel.errors import PermissionDenied, StorageError

ADMIN = Actor.console("tester")


def _frame(n: int, seed: int, start: int = 0) -> pd.DataFrame:
    """Cohort rows as ``data.library_frame`` gives them (project, series, label)."""
    frame = synthetic.cohort(n, seed=seed, start=start)
    return frame.assign(project="CADS", series=np.arange(start, start + n) + 1, label=frame["diagnosis"])


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_twice_the_data_is_promoted_and_better_shuffled_labels_are_refused(site) -> None:  # type: ignore
    first = _frame(120, seed=31)
    doubled = pd.concat([first, _frame(120, seed=32, start=120)], ignore_index=True)
    with transaction(site.engine) as db:
        one = registry.retrain(site, db, ADMIN, {"qc": "pass"}, frame=first, validate=True)
    assert one.promoted and one.version == 1, one.decision
    assert one.metrics["leave_site_out"]["pooled"]["balanced_accuracy"] > 0.6
    with transaction(site.engine) as db:
        two = registry.retrain(site, db, ADMIN, {"qc": "pass"}, frame=doubled, validate=False)
    print(f"v2 (twice the data): {two.decision}")
    assert two.promoted, two.decision
    held, old = two.metrics["heldout"], two.metrics["current_on_heldout"]
    assert old["version"] == 1 and held["n"] == old["n"]  # the same held-out scans
    print(f"same held-out scans (n={held['n']}): v1 Brier {old['brier']:.3f} calibration error "
          f"{old['calibration_error']:.3f} balanced accuracy {old['balanced_accuracy']:.3f}; v2 Brier "
          f"{held['brier']:.3f} calibration error {held['calibration_error']:.3f} balanced accuracy "
          f"{held['balanced_accuracy']:.3f}")
    assert held["brier"] < old["brier"] and held["balanced_accuracy"] >= old["balanced_accuracy"]
    # shuffled training labels (the held-out scans keep their true labels): refused, v2 stays current
    shuffled = doubled.copy()
    train = ~data.heldout(shuffled)
    shuffled.loc[train, "label"] = np.random.default_rng(3).permutation(shuffled.loc[train, "label"].to_numpy())
    with transaction(site.engine) as db:
        three = registry.retrain(site, db, ADMIN, {"qc": "pass"}, frame=shuffled, validate=False)
    print(f"v3 (shuffled labels): {three.decision}")
    assert not three.promoted and three.decision.startswith("refused")
    with transaction(site.engine) as db:
        rows = {r.version: r for r in db.scalars(select(CadsModel))}
        assert {v: r.status for v, r in rows.items()} == {1: "retired", 2: "current", 3: "refused"}
        assert registry.current(db).version == 2
        two_row = rows[2]
        assert two_row.query == {"qc": "pass"} and two_row.classes == ["BD", "HC", "SCZ"]
        assert not set(two_row.training_series) & set(two_row.heldout_series)
        assert len(two_row.training_series) + len(two_row.heldout_series) == len(doubled)
        assert set(rows[1].heldout_series) <= set(two_row.heldout_series)  # a held-out participant stays held out
        assert two_row.libraries["scikit-learn"] and two_row.code_version and len(two_row.sha256) == 64
        assert registry.describe(two_row)["harmoniser"] == {"method": "site", "sites": sorted(synthetic.SITES)}
        assert [r["version"] for r in registry.list_models(db)] == [1, 2, 3]
        assert "training_series" not in registry.list_models(db)[0]
        events = db.scalars(select(AuditEvent).where(AuditEvent.action == "cads.retrain")).all()
        assert len(events) == 3
        # every file kept, private, and checked: a changed file is not loaded
        for row in rows.values():
            assert Path(row.path).is_file() and Path(row.path).stat().st_mode & 0o077 == 0
        assert registry.load(rows[1]).classes_ == ["BD", "HC", "SCZ"]
        Path(rows[1].path).write_bytes(Path(rows[1].path).read_bytes() + b"x")
        with pytest.raises(StorageError, match="does not match its checksum"):
            registry.load(rows[1])
        with pytest.raises(PermissionDenied, match="site administrator"):
            registry.retrain(site, db, Actor("olivia"), frame=first)
