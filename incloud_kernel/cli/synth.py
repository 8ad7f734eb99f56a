"""``incloud synth``: write synthetic clinical DICOM cohorts with planted identities and ground truth."""
from __future__ import annotations

from pathlib import Path

import click


@click.group()
def synth() -> None:
    """Make synthetic DICOM studies (fake patients, real-looking headers, known ground truth)."""


@synth.command("cohort")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--participants", "-n", type=click.IntRange(1), default=4, show_default=True)
@click.option("--seed", "-s", type=int, default=0, show_default=True, help="Same seed, same cohort.")
@click.option("--sites", "-k", type=click.IntRange(1), default=2, show_default=True, help="Number of scanner sites.")
@click.option("--small", is_flag=True, help="2 mm T1, 4 mm BOLD/DWI, few volumes (for tests and demos).")
@click.option("--modalities", default="T1w,bold,dwi", show_default=True, help="Comma-separated: T1w, bold, dwi.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Parallel processes (default: up to 2).")
@click.option("--enhanced", is_flag=True, help="BOLD and DWI as Enhanced MR multi-frame (one file per series).")
@click.option("--no-compress", is_flag=True, help="Explicit VR little endian only (no JPEG 2000 / JPEG-LS share).")
def cohort(out: Path, participants: int, seed: int, sites: int, small: bool, modalities: str,
           workers: int | None, enhanced: bool, no_compress: bool) -> None:
    """Write one DICOM study folder per participant under OUT, with <study>.truth.json beside each."""
    from rich.progress import Progress

    from incloud_kernel.synth.cohort import make_cohort

    mods = tuple(m.strip() for m in modalities.split(",") if m.strip())
    with Progress(transient=True) as bar:
        task = bar.add_task("writing studies", total=participants)
        result = make_cohort(out, participants=participants, seed=seed, sites=sites, small=small, modalities=mods,
                             workers=workers, enhanced=enhanced, compress=not no_compress,
                             progress=lambda done, total: bar.update(task, completed=done))
    click.echo(f"wrote {len(result.studies)} studies from {sites} sites under {out} (ground truth: *.truth.json)")
