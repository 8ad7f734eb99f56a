"""Issue 12 item 1: how much identity refacing removes, on heads the refacer never saw.

For every packaged real head that is not the refacer's template (bench/eval_heads.py), plants several seeded
faces (displacements at landmarks found by the head's own MNI registration; zero within 15 mm of the brain),
then refaces each, and runs the cutting defacers (quickshear, pydeface's face mask) on the same heads.
Reports per head and face: protected voxels changed (brain dilated 5 mm), edge ratio, MNI registration shift,
seconds; per pair of faces of the same head: face-shape identity kept (depth maps after / before); across
the set: rank-1 and top-5 re-identification by dlib's ResNet face recogniser of renders (refaced, quickshear,
pydeface, and the originals at other angles) against the originals' frontal renders.
Run: /opt/incloud/venv/bin/python bench/eval_reface.py [--faces 8] [--json eval_reface.json] [--nonlinear on|off]
(``--no-mni``/``--no-1mm``/``--no-recogniser`` leave parts out; ``--renders DIR`` writes the first two faces' renders).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable (bench.*)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from bench.eval_heads import (
    Head,
    independent_heads,
    plant_face,
    protected,
    pydeface_deface,
    quickshear_deface,
    surface_threshold,
)
from incloud_kernel.deface.headmask import head_mask
from incloud_kernel.deface.identity import edge_ratio, identity_kept, project, render_mesh, skin_mesh, surface_depths
from incloud_kernel.deface.reface import NONLINEAR, Refacer
from incloud_kernel.deface.register import brain_displacement, register_to_mni
from incloud_kernel.deface.template import mni_head_path

CONDITIONS = ("original", "refaced", "quickshear", "pydeface")
#: The gallery is each original face seen from the front; probes are seen from these other angles
#: (yaw, pitch in degrees), for every condition alike, so the originals' own rate is not trivially 1.
GALLERY_VIEW = (0.0, 0.0)
PROBE_VIEWS = ((-25.0, 0.0), (25.0, 0.0), (0.0, 12.0), (0.0, -12.0))
#: Render geometry: 0.5 mm pixels, 320 x 320 (16 cm: the whole face at about 250 pixels tall).
PIXEL_MM, SIZE = 0.5, 320
FACE_MARKS = ("brow_r", "brow_l", "cheek_r", "cheek_l", "nose_tip", "upper_lip", "chin")


@dataclass
class Settings:
    faces: int = 8
    first_seed: int = 1
    mni_shift: bool = True
    one_mm: bool = True
    recognise: bool = True
    probe_views: tuple[tuple[float, float], ...] = PROBE_VIEWS
    threads: int = 1
    renders_dir: Path | None = None
    nonlinear: bool = NONLINEAR


def _canonical(head: Head, data: np.ndarray) -> np.ndarray:
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data, dtype=np.float32), head.affine))
    return np.asarray(img.dataobj, dtype=np.float32)


def _face_centre(head: Head) -> np.ndarray:
    return np.mean([head.landmarks[m] for m in FACE_MARKS], axis=0)


def _face_box(head: Head, view: tuple[float, float]) -> tuple[int, int, int, int]:
    """The planted landmarks' bounding box in the render (pixels), 15 % larger: the face where detectors miss it."""
    pts = project(np.array([head.landmarks[m] for m in FACE_MARKS]), centre=_face_centre(head), yaw_deg=view[0],
                  pitch_deg=view[1], pixel_mm=PIXEL_MM, size=SIZE)
    lo, hi = pts.min(0), pts.max(0)
    pad = 0.15 * (hi - lo)
    lo, hi = np.clip(lo - pad, 0, SIZE - 1), np.clip(hi + pad, 0, SIZE - 1)
    return int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])


def renders(head: Head, data: np.ndarray, views, threshold: float) -> list[np.ndarray]:
    mesh = skin_mesh(data, head.affine, threshold)
    return [render_mesh(mesh, centre=_face_centre(head), yaw_deg=y, pitch_deg=p, pixel_mm=PIXEL_MM, size=SIZE)
            for y, p in views]


def deface_all(head: Head, data: np.ndarray, s: Settings, mni) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every condition's volume for one planted face, and the refacer's own figures."""
    img = head.image(data)
    t0 = time.perf_counter()
    ref = Refacer(threads=s.threads, nonlinear=s.nonlinear)
    out = ref.fit_transform(img)
    seconds = time.perf_counter() - t0
    refaced = np.asarray(out.dataobj, dtype=np.float32)
    prot = protected(head, 5.0)
    changed = ref.result_.weights() > 0
    figures = {
        "seconds": seconds,
        "protected_changed": int((refaced != data)[prot].sum()),
        "protected_voxels": int(prot.sum()),
        "edge_ratio": edge_ratio(data, refaced, changed, head_mask(data, surface_threshold(data))),
        "registration_score": float(ref.registration_.score),
        "warp_mm": float(ref.registration_.details.get("warp_mm", 0.0)),
        "warp_used": ref.registration_.warp is not None,
    }
    if s.mni_shift:
        ta = register_to_mni(data, head.affine, *mni)
        tb = register_to_mni(refaced, head.affine, *mni)
        figures["mni_shift_mm"] = brain_displacement(ta, tb, head.brain, head.affine)
    vols = {"original": data, "refaced": refaced, "quickshear": quickshear_deface(head, data),
            "pydeface": pydeface_deface(head, data)}
    return vols, figures


def one_mm_seconds(head: Head, data: np.ndarray, threads: int, nonlinear: bool = NONLINEAR) -> dict[str, float]:
    """Seconds to reface the planted head resampled (linearly) onto a 1 mm grid: the issue's speed goal."""
    src = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    src.SetSpacing(tuple(float(v) for v in head.voxel_mm))
    size = [int(round(n * v)) for n, v in zip(data.shape, head.voxel_mm)]
    fine = sitk.Resample(src, size, sitk.Transform(), sitk.sitkLinear, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    arr = sitk.GetArrayFromImage(fine).transpose(2, 1, 0)
    affine = head.affine @ np.diag([*(1.0 / head.voxel_mm), 1.0])
    img = nib.Nifti1Image(np.rint(arr * 10).astype(np.int16), affine)  # stored like a scanner's integers
    t0 = time.perf_counter()
    Refacer(threads=threads, nonlinear=nonlinear).fit_transform(img)
    return {"shape": list(img.shape), "seconds": time.perf_counter() - t0}


def _log(line: str) -> None:
    print(line, flush=True)


def evaluate(s: Settings, log=_log) -> dict:
    """Run the whole evaluation; returns the figures as a JSON-ready dict (see the module docstring)."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(s.threads)
    mni_img = nib.load(mni_head_path())
    mni = (mni_img.get_fdata(dtype=np.float32), mni_img.affine)
    recogniser = None
    if s.recognise:
        from bench.eval_recognise import Recogniser

        recogniser = Recogniser()
    result: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(s).items()},
                    "heads": []}
    gallery, probes = [], {c: ([], []) for c in CONDITIONS}
    identity = 0
    for head in independent_heads():
        thr = surface_threshold(head.data)
        vox = float(head.voxel_mm.min())
        entry = {"head": head.name, "source": head.source, "faces": [], "pairs": [],
                 "landmarks_mm": {k: [round(float(x), 1) for x in v] for k, v in head.landmarks.items()}}
        depths: list[dict[str, dict[str, np.ndarray]]] = []
        for k in range(s.faces):
            seed = s.first_seed + k
            data = plant_face(head, seed)
            vols, figures = deface_all(head, data, s, mni)
            figures["seed"] = seed
            depths.append({c: surface_depths(_canonical(head, v), thr) for c, v in vols.items()})
            if recogniser is not None:
                views = [GALLERY_VIEW, *s.probe_views]
                for c, v in vols.items():
                    pics = renders(head, v, views if c == "original" else s.probe_views, thr)
                    if c == "original":
                        gallery.append(recogniser.embed(pics[0], _face_box(head, GALLERY_VIEW), "gallery"))
                        pics = pics[1:]
                    for view, pic in zip(s.probe_views, pics):
                        probes[c][0].append(recogniser.embed(pic, _face_box(head, view), c))
                        probes[c][1].append(identity)
                    if s.renders_dir is not None and k < 2:
                        from PIL import Image

                        s.renders_dir.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(np.concatenate(pics, axis=1)).save(s.renders_dir / f"face{seed}_{c}.png")
                identity += 1
            entry["faces"].append(figures)
            log(f"{head.name} face {seed}: {figures['seconds']:.1f} s, protected changed "
                f"{figures['protected_changed']}, edge ratio {figures['edge_ratio']:.2f}"
                + (f", MNI shift {figures['mni_shift_mm']:.3f} mm" if "mni_shift_mm" in figures else ""))
        for i, j in itertools.combinations(range(len(depths)), 2):
            pair = {"faces": [s.first_seed + i, s.first_seed + j]}
            for c in CONDITIONS[1:]:
                pair[c] = identity_kept(depths[i]["original"], depths[j]["original"], depths[i][c], depths[j][c],
                                        voxel_mm=vox)
            entry["pairs"].append(pair)
        if s.one_mm:
            entry["one_mm"] = one_mm_seconds(head, plant_face(head, s.first_seed), s.threads, s.nonlinear)
            log(f"{head.name} at 1 mm {tuple(entry['one_mm']['shape'])}: {entry['one_mm']['seconds']:.1f} s")
        result["heads"].append(entry)
    if recogniser is not None:
        from bench.eval_recognise import match_rates

        g = np.array(gallery)
        result["recognition"] = {c: {**match_rates(g, np.array(p), np.array(ids)), "probes": len(ids)}
                                 for c, (p, ids) in probes.items()}
        result["recognition_found"] = dict(recogniser.found)
    return result


def _summary(values: list[float]) -> str:
    v = np.array([x for x in values if np.isfinite(x)])
    if not v.size:
        return "n/a"
    return f"{np.median(v):.2f} ({v.min():.2f}-{v.max():.2f})"


def print_tables(result: dict) -> None:
    for h in result["heads"]:
        print(f"\n{h['head']} ({h['source']}), {len(h['faces'])} faces")
        print(f"{'face':>5} {'s':>6} {'prot.chg':>9} {'edge':>6} {'MNI mm':>7} {'score':>6}")
        for f in h["faces"]:
            print(f"{f['seed']:>5} {f['seconds']:>6.1f} {f['protected_changed']:>9} {f['edge_ratio']:>6.2f} "
                  f"{f.get('mni_shift_mm', float('nan')):>7.3f} {f['registration_score']:>6.3f}")
        if "one_mm" in h:
            print(f"1 mm {tuple(h['one_mm']['shape'])}: {h['one_mm']['seconds']:.1f} s")
        print(f"identity kept over {len(h['pairs'])} pairs, median (min-max); before: "
              f"{_summary([p['refaced']['before_mm'] for p in h['pairs']])} mm mean depth difference")
        for c in CONDITIONS[1:]:
            print(f"  {c:>10}: all {_summary([p[c]['all'] for p in h['pairs']])}, front "
                  f"{_summary([p[c]['front'] for p in h['pairs']])}, sides "
                  f"{_summary([p[c]['right'] for p in h['pairs']] + [p[c]['left'] for p in h['pairs']])}")
    if "recognition" in result:
        found = result["recognition_found"]

        def how(label: str) -> str:
            return ", ".join(f"{k}: {found.get(f'{label}:{k}', 0)}" for k in ("hog", "cnn", "box"))

        print(f"\nre-identification against the originals' frontal renders (gallery faces found by {how('gallery')})")
        for c, r in result["recognition"].items():
            print(f"  {c:>10}: rank-1 {r['rank1']:.2f}, top-5 {r['top5']:.2f} over {r['probes']} probes "
                  f"(chance {r['chance_rank1']:.2f} / {r['chance_top5']:.2f}); faces found by {how(c)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=8, help="planted faces per head")
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=Path("eval_reface.json"))
    ap.add_argument("--renders", type=Path, default=None, help="write the first two faces' renders here (PNG)")
    ap.add_argument("--no-mni", action="store_true", help="skip the MNI registration shift (2 registrations a face)")
    ap.add_argument("--no-1mm", action="store_true", help="skip the 1 mm timing")
    ap.add_argument("--no-recogniser", action="store_true")
    ap.add_argument("--nonlinear", choices=("on", "off"), default="on" if NONLINEAR else "off",
                    help="the B-spline refinement after the affine placement (default: the refacer's default)")
    a = ap.parse_args()
    s = Settings(faces=a.faces, first_seed=a.first_seed, mni_shift=not a.no_mni, one_mm=not a.no_1mm,
                 recognise=not a.no_recogniser, threads=a.threads, renders_dir=a.renders,
                 nonlinear=a.nonlinear == "on")
    t0 = time.perf_counter()
    result = evaluate(s)
    result["wall_seconds"] = time.perf_counter() - t0
    a.json.write_text(json.dumps(result, indent=1) + "\n")
    print_tables(result)
    print(f"\n{result['wall_seconds']:.0f} s; figures in {a.json}")


if __name__ == "__main__":
    main()
