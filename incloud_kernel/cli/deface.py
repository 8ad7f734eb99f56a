"""``incloud deface IN OUT [--qc DIR]``: reface NIfTI files (a file or a folder of them) with a progress bar.

A file that cannot be refaced safely is copied to the quarantine folder (``OUT/quarantine`` for folders, or
beside OUT for a file) with its reason in the summary; it is never written to OUT with its face intact.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import click


def _inputs(src: Path) -> list[Path]:
    if src.is_dir():
        return sorted(p for p in src.rglob("*") if p.name.endswith((".nii", ".nii.gz")))
    return [src]


@click.command()
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--qc", "qc_dir", type=click.Path(path_type=Path), default=None, help="Write before/after PNGs here.")
@click.option("--threads", type=int, default=None, help="SimpleITK threads (default: site config).")
def deface(src: Path, dst: Path, qc_dir: Path | None, threads: int | None) -> None:
    """Replace face and ears of NIfTI head images in SRC with an average face; write them to DST."""
    import nibabel as nib

    from incloud_kernel.deface.qc import save_qc
    from incloud_kernel.deface.reface import Refacer, load_image
    from incloud_kernel.deface.safety import DefaceQuarantine

    files = _inputs(src)
    if not files:
        raise click.ClickException(f"no NIfTI files under {src}")
    done, quarantined = 0, []
    with click.progressbar(files, label="refacing", file=click.get_text_stream("stderr")) as bar:
        for f in bar:
            rel = f.relative_to(src) if src.is_dir() else Path(dst.name)
            out = dst / rel if src.is_dir() else dst
            try:
                img = load_image(f)
                new = Refacer(threads=threads).fit_transform(img)
            except DefaceQuarantine as exc:
                qdir = (dst / "quarantine") if src.is_dir() else dst.parent / "quarantine"
                qdir.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, qdir / f.name)
                quarantined.append((f.name, exc.reason))
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            nib.save(new, out)
            if qc_dir is not None:
                save_qc(img, new, Path(qc_dir) / (f.name.split(".nii")[0] + "_deface.png"))
            done += 1
    click.echo(f"refaced {done}, quarantined {len(quarantined)}")
    for name, reason in quarantined:
        click.echo(f"  quarantined {name}: {reason}")
