"""``incloud deface IN OUT [--qc DIR] [--quarantine DIR]``: reface NIfTI files and DICOM series with a progress bar.

A NIfTI file or DICOM series that cannot be refaced safely goes to the site quarantine (``storage.quarantine``) or
the folder ``--quarantine`` names, one entry each (origin ``deface``) with its reason; it is never written to OUT
with its face intact, and the quarantine may not lie inside OUT. Releasing such an entry refaces it again into
its recorded place in OUT. DICOM series keep their file names and every header (only Pixel Data changes).
The summary names files by their path and series by their position, never by a header value.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click

from incloud_kernel.quarantine import Entry, Quarantine, ReleaseFailed, check_outside


def _is_nifti(p: Path) -> bool:
    return p.name.endswith((".nii", ".nii.gz"))


@dataclass
class Refused:
    """A unit (one NIfTI file or one DICOM series) the refacer refused: its files, a label and the reason code."""

    label: str
    reason: str
    paths: list[Path]


@dataclass
class DefaceRun:
    done: int = 0
    refused: list[Refused] = field(default_factory=list)


def reface_files(files: list[Path], target: Callable[[Path], Path], label: Callable[[Path], str], *,
                 threads: int | None = None, qc_dir: Path | None = None) -> DefaceRun:
    """Reface the NIfTI files and DICOM series among ``files``, writing each input ``f`` to ``target(f)``.

    ``label(f)`` names an input in messages (a path, never a header value). Units the refacer refuses are
    returned, not written. Raises click.ClickException when ``files`` holds neither NIfTI nor DICOM.
    """
    from incloud_kernel.deface.dicom import group_series, is_dicom, reface_session, write_datasets
    from incloud_kernel.deface.qc import save_qc
    from incloud_kernel.deface.reface import Refacer, load_image, save_image
    from incloud_kernel.deface.safety import DefaceQuarantine

    niftis = [f for f in files if _is_nifti(f)]
    dicoms = [f for f in files if not _is_nifti(f) and is_dicom(f)]
    if not niftis and not dicoms:
        raise click.ClickException("no NIfTI or DICOM files to reface")
    run = DefaceRun()
    groups = group_series(dicoms) if dicoms else {}
    units: list[tuple[str, object]] = [("nifti", f) for f in niftis] + ([("dicom", groups)] if groups else [])
    with click.progressbar(units, label="refacing", file=sys.stderr) as bar:
        for kind, unit in bar:
            if kind == "nifti":
                f = unit
                assert isinstance(f, Path)
                try:
                    img = load_image(f)
                    refacer = Refacer(threads=threads)
                    new = refacer.fit_transform(img)
                except DefaceQuarantine as exc:
                    run.refused.append(Refused(label(f), exc.reason, [f]))
                    continue
                out = target(f)
                out.parent.mkdir(parents=True, exist_ok=True)
                save_image(new, out)
                if qc_dir is not None:
                    save_qc(img, new, Path(qc_dir) / (f.name.split(".nii")[0] + "_deface.png"),
                            registration=refacer.registration_)
                run.done += 1
                continue
            res = reface_session(groups, lambda: Refacer(threads=threads))
            for n, (uid, paths) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[1][0])), start=1):
                name = f"DICOM series {n} ({Path(label(sorted(paths)[0])).parent})"
                if uid in res.refaced:
                    s = res.series[uid]
                    write_datasets(res.refaced[uid], [target(p) for p in s.paths])
                    if qc_dir is not None:
                        import nibabel as nib
                        import numpy as np

                        new_raw = np.stack([ds.pixel_array for ds in res.refaced[uid]], -1).transpose(1, 0, 2)
                        save_qc(s.image(), nib.Nifti1Image(new_raw, s.affine),
                                Path(qc_dir) / f"dicom_series{n:03d}_deface.png",
                                registration=res.registrations.get(uid))
                    run.done += 1
                else:
                    run.refused.append(Refused(name, res.quarantined.get(uid, "unknown"), sorted(paths)))
    return run


@click.command()
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--qc", "qc_dir", type=click.Path(path_type=Path), default=None, help="Write before/after PNGs here.")
@click.option("--threads", type=int, default=None, help="SimpleITK threads (default: site config).")
@click.option("--quarantine", "quarantine_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep what cannot be refaced here (default: the site quarantine); never inside DST.")
def deface(src: Path, dst: Path, qc_dir: Path | None, threads: int | None, quarantine_dir: Path | None) -> None:
    """Replace face and ears of head images in SRC (NIfTI files, DICOM series) with an average face; write to DST."""
    from incloud_kernel.config import get_config

    qroot = quarantine_dir or get_config().quarantine
    check_outside(qroot, dst)
    files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]

    def rel(f: Path) -> Path:
        return f.relative_to(src) if src.is_dir() else Path(f.name)

    def target(f: Path) -> Path:
        return dst / rel(f) if src.is_dir() else dst

    try:
        run = reface_files(files, target, lambda f: str(rel(f)), threads=threads, qc_dir=qc_dir)
    except click.ClickException:
        raise click.ClickException(f"no NIfTI or DICOM files under {src}") from None
    quarantine = Quarantine(qroot)
    held: list[tuple[Refused, Entry]] = []
    for unit in run.refused:
        entry = quarantine.put(
            "deface", [(p, rel(p).as_posix()) for p in unit.paths], reason=unit.reason, step="reface",
            source="nifti" if len(unit.paths) == 1 and _is_nifti(unit.paths[0]) else "dicom series",
            release={"out": str(dst.resolve()), "qc": str(qc_dir.resolve()) if qc_dir else None,
                     "targets": {rel(p).as_posix(): str(target(p).resolve()) for p in unit.paths}})
        held.append((unit, entry))
    click.echo(f"refaced {run.done}, quarantined {len(held)}")
    for unit, entry in held:
        click.echo(f"  quarantined {unit.label}: {unit.reason} (entry {entry.id})")
    if held:
        click.echo(f"quarantine: {qroot} (incloud quarantine show|release|purge ENTRY)")


def release_deface(entry: Entry, *, threads: int | None = None) -> str:
    """Reface the entry's files again into their recorded places in the output; returns a one-line result.

    Raises ReleaseFailed with the refacer's reason code when it refuses again (the entry stays).
    """
    targets = {Path(entry.files_dir / name): Path(path) for name, path in entry.release["targets"].items()}
    qc = entry.release.get("qc")
    run = reface_files(list(targets), targets.__getitem__, lambda f: f.relative_to(entry.files_dir).as_posix(),
                       threads=threads, qc_dir=Path(qc) if qc else None)
    if run.refused:
        raise ReleaseFailed(run.refused[0].reason)
    return f"refaced {len(targets)} file(s) into {entry.release['out']}"
