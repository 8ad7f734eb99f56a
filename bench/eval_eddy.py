"""Should the DWI stage fit eddy currents by default? Evidence on synthetic series (``dwi_inputs.synthetic_dwi``).

A linear eddy current displaces the image along the phase-encoding axis by an amount linear in x, y and z, and
each coefficient follows the diffusion gradient's component on that axis (FSL ``eddy``'s linear model): a
gradient along x shears (PE displacement grows with x), along y scales PE, along z shears with z, plus a
shift. This script plants such a field (``coefficient`` per unit gradient component, default 3 %, 1.5 mm shift)
into every diffusion-weighted volume of a motion-free synthetic series, then runs ``dwi_correct.correct``
rigid only and with the eddy fit along phase encoding (``phase_axis=1``), and reports:

- how far the fitted linear part is from undoing the plant (no motion is planted: mean over volumes of the
  largest entry of |fitted - planted^-1|, %; a fit that finds nothing scores the planted size), and the RMS of
  (corrected - clean) over the brain relative to (distorted - clean) (at 4 mm dominated by the blur of two
  interpolations, so a weak measure);
- the FA error against the clean series' FA (median absolute, and the mean over FA > 0.3 voxels);
- on the clean series itself (no eddy current): the largest fitted stretch/shear (%) and the FA change.

    /opt/incloud/venv/bin/python bench/eval_eddy.py [--voxel 4] [--dirs 24] [--coefficient 0.03] [--rounds 1]

Writes nothing; nothing downloads.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dwi_inputs import synthetic_dwi  # noqa: E402


def plant_eddy(data: np.ndarray, affine: np.ndarray, bvals: np.ndarray, bvecs_fsl: np.ndarray, mask: np.ndarray,
               coefficient: float, shift_mm: float, phase_axis: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(distorted data, planted 4x4 LPS matrices): every diffusion-weighted volume resampled through
    p -> p + e (a . (p - c) + t), e the LPS direction of the phase-encoding voxel axis, a = coefficient x the
    gradient (in LPS), t = shift_mm x the gradient's z component, c the brain centre."""
    import SimpleITK as sitk

    from incloud_kernel.deface.geometry import LPS, from_sitk, to_sitk

    lps = (LPS @ affine)[:3, :3]
    axes = lps / np.linalg.norm(lps, axis=0)
    flip = np.diag([-1.0 if np.linalg.det(affine[:3, :3]) > 0 else 1.0, 1.0, 1.0])
    grid = to_sitk(mask.astype(np.uint8), affine)
    centre = np.array(grid.TransformContinuousIndexToPhysicalPoint([float(c) for c in np.argwhere(mask).mean(0)]))
    e = axes[:, phase_axis]
    out = data.copy()
    matrices = np.repeat(np.eye(4)[None], data.shape[3], axis=0)
    for v in np.flatnonzero(bvals > 50):
        g = axes @ flip @ bvecs_fsl[v]  # the gradient in LPS (inverse of the FSL frame conversion)
        linear = np.eye(3) + np.outer(e, coefficient * g)
        t = sitk.AffineTransform(linear.ravel().tolist(), (e * shift_mm * g[2]).tolist(), centre.tolist())
        img = sitk.Cast(to_sitk(data[..., v].astype(np.float32), affine), sitk.sitkFloat32)
        out[..., v] = from_sitk(sitk.Resample(img, img, t, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        matrices[v, :3, :3] = linear
    return out, matrices


def fa_of(data: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from incloud_kernel.features.dwi import fit_tensor

    return fit_tensor(data, bvals, bvecs, mask)[0]


def evaluate(voxel_mm: float = 4.0, n_dirs: int = 24, coefficient: float = 0.03, shift_mm: float = 1.5,
             seed: int = 3, rounds: int = 1, cases: tuple[str, ...] = ("eddy/rigid", "eddy/eddyfit", "clean/rigid",
                                                                          "clean/eddyfit")) -> dict[str, float]:
    from incloud_kernel.features import dwi_correct
    from incloud_kernel.features.dwi_qc import transform_parts
    from incloud_kernel.qc.masks import epi_mask

    matrix = int(round(192 / voxel_mm))
    img, bvals, bvecs, _ = synthetic_dwi(seed=seed, voxel_mm=voxel_mm, matrix=matrix, slices=int(round(120 / voxel_mm)),
                                         n_dirs=n_dirs)
    clean = np.asarray(img.dataobj, np.float32)
    affine = img.affine
    mask = epi_mask(clean[..., bvals <= 50].mean(axis=3))
    distorted, planted = plant_eddy(clean, affine, bvals, bvecs, mask, coefficient, shift_mm)
    dw = bvals > 50
    fa_clean = fa_of(clean, bvals, bvecs, mask)
    white = fa_clean > 0.3

    def rms(a: np.ndarray) -> float:
        return float(np.sqrt(np.mean(a[mask][:, dw] ** 2)))

    out: dict[str, float] = {"voxel_mm": voxel_mm, "directions": n_dirs, "coefficient_%": 100 * coefficient,
                             "planted_max_%": float(transform_parts(planted)[1].max()), "rounds": rounds}
    base = rms(distorted - clean)
    fa_bad = fa_of(distorted, bvals, bvecs, mask)
    out["uncorrected_fa_err_white"] = float(np.mean(np.abs(fa_bad - fa_clean)[white]))
    for name, data in (("eddy", distorted), ("clean", clean)):
        for label, axis in (("rigid", None), ("eddyfit", 1)):
            if f"{name}/{label}" not in cases:
                continue
            started = time.monotonic()
            c = dwi_correct.correct(data, affine, bvals, bvecs, mask=mask, phase_axis=axis, rounds=rounds)
            seconds = time.monotonic() - started
            fa = fa_of(c.data, bvals, c.bvecs, mask)
            key = f"{name}/{label}"
            out[f"{key} seconds"] = seconds
            out[f"{key} residual_%"] = 100 * rms(c.data - clean) / base
            out[f"{key} fa_err_white"] = float(np.mean(np.abs(fa - fa_clean)[white]))
            out[f"{key} fa_err_median"] = float(np.median(np.abs(fa - fa_clean)[mask]))
            out[f"{key} max_stretch_%"] = float(transform_parts(c.matrices)[1].max())
            if name == "eddy":
                # no motion is planted, so the whole fitted linear part should undo the plant: the fit maps
                # reference points to volume points, the plant volume points back (its inverse is expected)
                expected = np.linalg.inv(planted[dw, :3, :3])
                out[f"{key} param_err_%"] = 100 * float(np.abs(c.matrices[dw, :3, :3] - expected).max(axis=(1, 2)).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxel", type=float, default=4.0)
    ap.add_argument("--dirs", type=int, default=24)
    ap.add_argument("--coefficient", type=float, default=0.03)
    ap.add_argument("--shift", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="rounds of registration to the tensor prediction")
    ap.add_argument("--cases", default="eddy/rigid,eddy/eddyfit,clean/rigid,clean/eddyfit")
    args = ap.parse_args()
    result = evaluate(args.voxel, args.dirs, args.coefficient, args.shift, args.seed, args.rounds,
                      tuple(args.cases.split(",")))
    for key, value in result.items():
        print(f"{key:32s} {value:10.4f}")


if __name__ == "__main__":
    main()
