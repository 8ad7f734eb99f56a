"""Planted grey-matter loss recovered by the T1w features at any resolution (issue 15 "done when": regional
volume change within 2 percentage points, thinning within 0.2 mm), with the diagnostics that say why a
region misses.

The same synthetic participant and noise as ``tests/test_features_t1_synth.py`` (which runs it at 2 mm only),
rendered without and with the effects at ``--mm`` and run through ``T1Features`` with the planted regions as
the atlas. Printed per region: the truth (``synth.atrophy.planted_truth``), the recovered change, and the same
segmentation summed over the generator's *own* region (the voxels whose MNI point, through the generator's
affine, lies in the ellipsoid) instead of the atlas pulled back by the pipeline's registration: the difference
between the two is the registration's share of the error.

  PYTHONPATH=. /opt/incloud/venv/bin/python bench/eval_planted_t1.py [--mm 2] [--out FOLDER] [--margin MM]

``--demons 40,20`` sets ``T1Features.demons_iterations`` (``none``: affine only). Each row also gives the
pulled-back region's size over the generator's own, the shift of its centre (mm, RAS) and their Dice: the
registration's share of a miss.
``--margin`` sets ``features.t1.BRAIN_MARGIN_MM`` for the run (the figures must not depend on it: session 8).

Evaluation only: never used by the product; writes only under ``--out`` (default a temporary folder, removed).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

REGIONS = ("hippocampus_left", "posterior_cingulate", "visual_cortex")
EFFECTS = (("hippocampus_left", "atrophy", 20.0), ("posterior_cingulate", "thinning", 1.0),
           ("visual_cortex", "thinning", 0.5))


def _own_regions(participant, t1) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Each region as the generator places it on ``t1`` (closest-canonical RAS order, as T1Features' maps)."""
    import nibabel as nib
    import SimpleITK as sitk

    from incloud_kernel.synth import atrophy
    from incloud_kernel.synth.deform import axial_twin

    twin, to_ref = axial_twin(t1)
    mni = atrophy.region_points_mni(participant.points(twin))
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in REGIONS:
            img = sitk.GetImageFromArray(to_ref((atrophy.region_rho(r, mni) <= 1.0).astype(np.uint8)))
            img.CopyInformation(t1)
            sitk.WriteImage(img, f"{tmp}/m.nii.gz")
            out[r] = np.asarray(nib.as_closest_canonical(nib.load(f"{tmp}/m.nii.gz")).dataobj) > 0
    return out


def main() -> None:
    import SimpleITK as sitk

    from incloud_kernel.features.atlases import Atlas
    from incloud_kernel.features.t1 import T1Features
    from incloud_kernel.synth import atrophy
    from incloud_kernel.synth.deform import Participant
    from incloud_kernel.synth.sites import make_sites
    from incloud_kernel.synth.structural import render_t1

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mm", type=float, default=2.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--margin", type=float, help="brain-mask margin (mm); default features.t1's")
    parser.add_argument("--demons", default="40,20", help="demons iterations per level, or 'none' (affine only)")
    args = parser.parse_args()
    from incloud_kernel.features import t1 as t1_module

    if args.margin is not None:
        t1_module.BRAIN_MARGIN_MM = args.margin
    out = args.out or Path(tempfile.mkdtemp(prefix="planted-"))
    out.mkdir(parents=True, exist_ok=True)
    image, labels = atrophy.regions_label_image(REGIONS)
    atlas = Atlas(name="planted", image=image, labels=labels, licence="synthetic", kind="cortical")
    participant = Participant.random(np.random.default_rng([0, 2]), [])
    site = make_sites(1, 0)[0]
    fits, truth, own, seconds = {}, [], {}, {}
    for tag, effects in (("before", []), ("after", [atrophy.TissueEffect(*e) for e in EFFECTS])):
        participant.tissue_effects = effects
        t1 = render_t1(participant, site, args.mm, np.random.default_rng(5))
        if effects:
            truth = atrophy.planted_truth(participant, t1)
            own = _own_regions(participant, t1)
        sitk.WriteImage(t1, str(out / f"{tag}.nii.gz"))
        start = time.perf_counter()
        demons = () if args.demons == "none" else tuple(int(v) for v in args.demons.split(","))
        fits[tag] = T1Features(atlas=atlas, n4_shrink_mm=8.0, demons_iterations=demons).fit(out / f"{tag}.nii.gz")
        seconds[tag] = round(time.perf_counter() - start, 1)
    tables = {k: (lambda t: t[t.atlas == "planted"].set_index(["region", "feature"]).value.to_dict())(f.transform())
              for k, f in fits.items()}
    gm = {k: np.asarray(f.probseg_["GM"].dataobj, dtype=np.float64) for k, f in fits.items()}
    rows = []
    for t in truth:
        r = t["region"]
        b, a = tables["before"], tables["after"]
        row = {"region": r, "kind": t["kind"], "truth_percent": t["percent"],
               "percent": round((a[(r, "gm_volume")] / b[(r, "gm_volume")] - 1) * 100, 2),
               "percent_own_region": round((gm["after"][own[r]].sum() / gm["before"][own[r]].sum() - 1) * 100, 2),
               "truth_thinning_mm": t["thinning_mm"],
               "thinning_mm": round(b[(r, "thickness")] - a[(r, "thickness")], 3)}
        pulled = np.asarray(fits["after"].labels_.dataobj) == 1 + REGIONS.index(r)
        row["region_voxels_atlas_over_own"] = round(float(pulled.sum() / own[r].sum()), 3)
        zooms = np.asarray(fits["after"].zooms_)
        row["region_shift_mm"] = [round(float(v), 2) for v in
                                  (np.argwhere(pulled).mean(0) - np.argwhere(own[r]).mean(0)) * zooms]
        row["region_dice"] = round(float(2 * (pulled & own[r]).sum() / (pulled.sum() + own[r].sum())), 3)
        row["volume_met"] = abs(row["percent"] - row["truth_percent"]) < 2.0
        row["thinning_met"] = abs(row["thinning_mm"] - row["truth_thinning_mm"]) < 0.2 if t["kind"] == "thinning" else None
        rows.append(row)
        print(json.dumps(row))
    print(json.dumps({"mm": args.mm, "margin_mm": t1_module.BRAIN_MARGIN_MM, "seconds": seconds}))
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
