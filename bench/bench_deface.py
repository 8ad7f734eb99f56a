"""Issue 5 benchmark: seconds to reface one 1 mm 176x256x256 T1w (a deformed copy of the template head),
with SimpleITK on one thread and on two threads. Goal: under 20 s. Run: python bench/bench_deface.py"""
from __future__ import annotations

import time

import nibabel as nib

from incloud_kernel.deface.brainmask import template_distances
from incloud_kernel.deface.reface import Refacer
from incloud_kernel.deface.template import load_template
from template_heads import make_head


def main() -> None:
    t0 = time.perf_counter()
    template_distances(load_template())
    print(f"template load + distance maps (once per process): {time.perf_counter() - t0:.1f} s")
    head = make_head(seed=7, voxel_mm=1.0)
    img = nib.Nifti1Image(head.data, head.affine)
    print(f"volume {img.shape} at 1 mm")
    for threads in (1, 2):
        t0 = time.perf_counter()
        Refacer(threads=threads).fit_transform(img)
        dt = time.perf_counter() - t0
        print(f"threads={threads}: {dt:.1f} s per T1w (goal < 20 s; ratio to goal {dt / 20:.2f})")


if __name__ == "__main__":
    main()
