"""``incloud deface IN OUT [--qc DIR]``: reface NIfTI files and DICOM series (a file or a folder) with a progress bar.

A NIfTI file or DICOM series that cannot be refaced safely is copied to the quarantine folder
(``OUT/quarantine`` for folders, or beside OUT for a file) with its reason in the summary; it is never written to
OUT with its face intact. DICOM series keep their file names and every header (only Pixel Data changes).
The summary names files by their path and series by their position, never by a header value.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click


def _is_nifti(p: Path) -> bool:
    return p.name.endswith((".nii", ".nii.gz"))


@click.command()
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--qc", "qc_dir", type=click.Path(path_type=Path), default=None, help="Write before/after PNGs here.")
@click.option("--threads", type=int, default=None, help="SimpleITK threads (default: site config).")
def deface(src: Path, dst: Path, qc_dir: Path | None, threads: int | None) -> None:
    """Replace face and ears of head images in SRC (NIfTI files, DICOM series) with an average face; write to DST."""
    from incloud_kernel.deface.dicom import group_series, is_dicom, reface_session, write_datasets
    from incloud_kernel.deface.qc import save_qc
    from incloud_kernel.deface.reface import Refacer, load_image, save_image
    from incloud_kernel.deface.safety import DefaceQuarantine

    files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
    niftis = [f for f in files if _is_nifti(f)]
    dicoms = [f for f in files if not _is_nifti(f) and is_dicom(f)]
    if not niftis and not dicoms:
        raise click.ClickException(f"no NIfTI or DICOM files under {src}")
    qdir = (dst / "quarantine") if src.is_dir() else dst.parent / "quarantine"

    def rel(f: Path) -> Path:
        return f.relative_to(src) if src.is_dir() else Path(f.name)

    done, quarantined = 0, []
    groups = group_series(dicoms) if dicoms else {}
    units: list[tuple[str, object]] = [("nifti", f) for f in niftis] + ([("dicom", groups)] if groups else [])
    with click.progressbar(units, label="refacing", file=sys.stderr) as bar:
        for kind, unit in bar:
            if kind == "nifti":
                f = unit
                assert isinstance(f, Path)
                try:
                    img = load_image(f)
                    new = Refacer(threads=threads).fit_transform(img)
                except DefaceQuarantine as exc:
                    qdir.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, qdir / rel(f))
                    quarantined.append((str(rel(f)), exc.reason))
                    continue
                out = dst / rel(f) if src.is_dir() else dst
                out.parent.mkdir(parents=True, exist_ok=True)
                save_image(new, out)
                if qc_dir is not None:
                    save_qc(img, new, Path(qc_dir) / (f.name.split(".nii")[0] + "_deface.png"))
                done += 1
                continue
            res = reface_session(groups, lambda: Refacer(threads=threads))
            for n, (uid, paths) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[1][0])), start=1):
                label = f"DICOM series {n} ({rel(sorted(paths)[0]).parent})"
                if uid in res.refaced:
                    s = res.series[uid]
                    write_datasets(res.refaced[uid], [dst / rel(p) for p in s.paths])
                    if qc_dir is not None:
                        import nibabel as nib
                        import numpy as np

                        new_raw = np.stack([ds.pixel_array for ds in res.refaced[uid]], -1).transpose(1, 0, 2)
                        save_qc(s.image(), nib.Nifti1Image(new_raw, s.affine),
                                Path(qc_dir) / f"dicom_series{n:03d}_deface.png")
                    done += 1
                else:
                    for p in paths:
                        target = qdir / rel(p)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(p, target)
                    quarantined.append((label, res.quarantined.get(uid, "unknown")))
    click.echo(f"refaced {done}, quarantined {len(quarantined)}")
    for name, reason in quarantined:
        click.echo(f"  quarantined {name}: {reason}")
