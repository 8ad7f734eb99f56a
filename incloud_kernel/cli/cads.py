"""``incloud cads ...``: computer-aided diagnosis reports, the model registry, and retraining.

Thin wrappers over ``incloud_kernel.cads``. ``report`` checks the caller's rights on the series like every read
(``--as USER`` for a user's rights; the console is a site admin); ``retrain`` is for the site console (a scheduled
job runs the same command, e.g. nightly from cron or a Slurm ``--begin`` job). Errors are one line
(``cli.main``); nothing printed holds more than pseudonymous labels and numbers.
"""
from __future__ import annotations

import json
from typing import Any

import click

from incloud_kernel.cli.library import _criteria, _criteria_options, _site
from incloud_kernel.cli.projects import _as_option, _run


@click.group()
def cads() -> None:
    """Computer-aided diagnosis: reports of abnormal regions and diagnostic probabilities, versioned models."""


@cads.command("report")
@click.argument("series", type=int)
@click.option("--model", "model", type=int, default=None, help="Model version (default: the current one); an "
              "old report is reproduced with the version it names.")
@click.option("--threshold", type=click.FloatRange(min=0.5, max=10), default=2.0, show_default=True,
              help="Flag features beyond this |z|.")
@click.option("--pdf", "pdf_path", type=click.Path(dir_okay=False), default=None, help="Also write the PDF here.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_as_option
def report_(series: int, model: int | None, threshold: float, pdf_path: str | None, as_json: bool,
            as_user: str | None) -> None:
    """The CADS report of SERIES: flagged regions with z and centiles, probabilities with their ranges."""
    from incloud_kernel.cads import render, report

    site = _site()
    result = _run(as_user, lambda db, actor: report.build(site, db, actor, series, model=model,
                                                           threshold=threshold))
    if pdf_path:
        render.pdf(result, pdf_path)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"participant {result['pseudonym']} ({result['project']}), series {result['series']}, QC "
               f"{result['scan']['qc']}; model v{result['model']['version']}")
    click.echo(f"flagged {len(result['flagged'])} of {result['n_features']} features beyond |z| > "
               f"{result['threshold']:g} (expected by chance: {result['expected_false_flags']:.1f})")
    for r in result["flagged"]:
        click.echo(f"  {r['feature']:<55} z {r['z']:+.2f}  centile {r['centile']:.1f}")
    for p in result["probabilities"]:
        click.echo(f"  P({p['category']}) = {p['probability']:.2f}  (range {p['low']:.2f}-{p['high']:.2f})")
    for warning in result["warnings"]:
        click.echo(f"warning: {warning}")
    click.echo(render.performance_line(result))
    click.echo(result["statement"])
    if pdf_path:
        click.echo(f"wrote {pdf_path}")


@cads.command("models")
@click.option("--json", "as_json", is_flag=True)
@_as_option
def models(as_json: bool, as_user: str | None) -> None:
    """Every model version with its status, held-out metrics and the retraining decision."""
    from incloud_kernel.cads import registry

    rows = _run(as_user, lambda db, actor: registry.list_models(db))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no CADS model yet (incloud cads retrain)")
    for r in rows:
        held = r["metrics"].get("heldout") or {}
        click.echo(f"v{r['version']}\t{r['status']}\t{r['kind']}\t"
                   f"{(r['harmoniser'] or {}).get('method', 'site')}\ttrained on {r['n_training']}\t"
                   f"held-out balanced accuracy {held.get('balanced_accuracy', float('nan')):.3f} AUC "
                   f"{held.get('auc') or float('nan'):.3f} Brier {held.get('brier', float('nan')):.3f} "
                   f"calibration error {held.get('calibration_error', float('nan')):.3f}\t{r['decision']}")


@cads.command("retrain")
@_criteria_options
@click.option("--kind", type=click.Choice(["linear", "forest", "ensemble"]), default="ensemble",
              show_default=True)
@click.option("--tolerance", type=click.FloatRange(0, 0.5), default=0.02, show_default=True,
              help="Largest loss on any held-out metric a promoted candidate may have.")
@click.option("--no-validate", "no_validate", is_flag=True, help="Skip the leave-site-out validation.")
@click.option("--harmonise", type=click.Choice(["site", "combat"]), default="site", show_default=True,
              help="Scanner differences: the site as a term of the normative regression, or the library's ComBat "
              "fitted on the training controls (site as batch, age and sex kept; a scan of an unseen scanner is "
              "left uncorrected and its report says so). Recorded with the model version.")
@click.option("--note", default="", help="What every report by this model tells its reader about the training "
              "data (e.g. 'synthetic cohort, for demonstration').")
@_as_option
def retrain(kind: str, tolerance: float, no_validate: bool, harmonise: str, note: str, as_user: str | None,
            **options: Any) -> None:
    """Train a candidate on the library (default: scans that passed QC) and promote it only if its held-out
    metrics are not worse than the current model's on the same held-out scans."""
    from incloud_kernel.cads import registry

    criteria = _criteria(options) or None
    site = _site()
    outcome = _run(as_user, lambda db, actor: registry.retrain(site, db, actor, criteria, kind=kind,
                                                                tolerance=tolerance, validate=not no_validate,
                                                                harmonise=harmonise, note=note))
    click.echo(f"model v{outcome.version}: {outcome.decision} (harmonised by {harmonise}; {outcome.seconds:.1f} s)")
