"""The "features" pipeline (issue 15): T1w, BOLD and DWI feature stages over a project's archived series.

``T1Stage`` runs per T1w; ``BoldStage`` and ``DwiStage`` wait for their session's T1 stage
(``Stage.session_after``) and read its brain mask, tissue maps and T1w -> MNI transform, or register on their
own when the session has no T1w. Registered in ``incloud_kernel.pipeline.pipeline.REGISTRY`` as "features".
Importing this module imports the three stage modules, which import no heavy library at module level (they do
inside ``compute``): the API and the workers can import it cheaply. It must hold no state about runs.
"""
from __future__ import annotations

from incloud_kernel.features.bold import BoldStage
from incloud_kernel.features.dwi import DwiStage
from incloud_kernel.features.t1 import T1Stage
from incloud_kernel.pipeline.pipeline import Pipeline

FEATURES = Pipeline(
    "features", "1", [T1Stage(), BoldStage(), DwiStage()],
    description="Regional features per atlas region: T1w grey-matter volumes and cortical thickness, BOLD "
                "ALFF/fALFF/ReHo and ROI connectivity, DWI FA/MD (docs/features.md).")

__all__ = ["FEATURES"]
