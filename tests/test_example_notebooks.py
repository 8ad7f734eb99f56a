"""Issue 13 item 3: the example notebooks a new workstation holds (running a pipeline, feature library queries, a
CADS report) run top to bottom on the demo data. Each is installed the way a workstation start installs them
(``incloud_kernel.notebooks.install``) and executed by nbclient in a real IPython kernel whose environment points
``incloud_kernel.connect()`` at the real API (served on DEMO populated by ``incloud_kernel.demo.populate``, shared
with tests/test_demo_populate.py) with the demo user's own token: the researcher for pipelines and the library,
the clinician for the report. Outputs are checked, not only the absence of errors."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator

import nbformat
import pytest
from api_thread import serving
from demo_site import PopulatedDemo, populated_demo, table_auth  # noqa: F401 - the shared populated site
from nbclient import NotebookClient

from incloud_kernel import notebooks
from incloud_kernel.cads.report import STATEMENT

pytestmark = pytest.mark.timeout(600)
SHA256 = re.compile(r"\b[0-9a-f]{64}\b")


@pytest.fixture(scope="module")
def api_url(populated_demo: PopulatedDemo) -> Iterator[str]:  # noqa: F811 - the fixture imported above
    from hub.services.api.app import make_app

    with serving(make_app(populated_demo.site.config, hub_auth=table_auth())) as url:
        yield url


def run_example(name: str, user: str, url: str, home: Path) -> list[str]:
    """Install the examples into ``home`` as a workstation start does, execute ``name`` as ``user`` (an error in
    any cell fails the test with the cell's traceback) and return each code cell's outputs as text."""
    folder = notebooks.install(home)
    nb = nbformat.read(folder / name, as_version=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
    env.pop("MPLBACKEND", None)  # the kernel's own inline backend, as in a workstation: figures become PNG outputs
    env.update(INCLOUD_API_URL=url, INCLOUD_API_TOKEN=f"t-{user}")
    try:
        NotebookClient(nb, timeout=180, kernel_name="python3",
                       resources={"metadata": {"path": str(folder)}}).execute(env=env)
    finally:  # kept beside the test's files to look at
        nbformat.write(nb, folder / f"executed-{name}")
    return [_text(cell) for cell in nb.cells if cell.cell_type == "code"]


def _text(cell: Any) -> str:
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/plain", ""))
            parts.extend(f"<{kind}>" for kind in out.data if kind.startswith("image/"))
    return "\n".join(parts)


def test_every_example_is_registered_and_installed(tmp_path: Path) -> None:
    expected = ["01-getting-started.ipynb", "02-archive-and-images.ipynb", "03-running-a-pipeline.ipynb",
                "04-feature-library.ipynb", "05-cads-report.ipynb"]
    assert notebooks.NOTEBOOKS == expected
    assert sorted(p.name for p in notebooks.install(tmp_path).iterdir()) == expected


def test_running_a_pipeline_notebook_shows_runs_progress_and_provenance(
        populated_demo: PopulatedDemo, api_url: str, tmp_path: Path) -> None:  # noqa: F811
    out = run_example("03-running-a-pipeline.ipynb", "researcher", api_url, tmp_path)
    text = "\n".join(out)
    assert "researcher works on project DEMO" in text
    assert "features" in out[1] and "qc" in out[1]  # the site's pipelines
    assert re.search(r"run #\d+ features \S+: done, 1 of 1 inputs done", text)
    assert f"series {populated_demo.series} (subject INC0001)" in text  # the task behind the derivative
    files = next(o for o in out if "derivative file(s), pipeline folder features-" in o)  # with their digests
    assert SHA256.search(files)


def test_feature_library_notebook_counts_lists_plots_and_exports(
        populated_demo: PopulatedDemo, api_url: str, tmp_path: Path) -> None:  # noqa: F811
    out = run_example("04-feature-library.ipynb", "researcher", api_url, tmp_path)
    text = "\n".join(out)
    # the count is over every project (DEMO and the reference cohort); the rows are DEMO's only
    found = re.search(r"(\d+) matching scans in the whole library; 1 of them listed for you, from projects "
                      r"\['DEMO'\]", text)
    assert found and int(found.group(1)) > 100
    long_rows = re.search(r"long rows: (\d+)", text)
    assert long_rows and int(long_rows.group(1)) > 20
    assert "1 scan(s) x" in text and "<image/png>" in text
    exported = re.search(r"demo-features.csv: (\d+) rows, 1 scan\(s\)", text)
    assert exported and exported.group(1) == long_rows.group(1)
    assert (tmp_path / notebooks.FOLDER / "demo-features.csv").stat().st_size > 0


def test_cads_report_notebook_shows_flags_probabilities_model_and_statement(
        populated_demo: PopulatedDemo, api_url: str, tmp_path: Path) -> None:  # noqa: F811
    out = run_example("05-cads-report.ipynb", "clinician", api_url, tmp_path)
    text = "\n".join(out)
    series = populated_demo.series
    assert "1 scan(s) whose report you may open" in text
    assert "participant INC0001 (DEMO, session 1), T1w on Siemens Prisma_fit 3T, age 46.0" in text
    assert f"model version {populated_demo.summary.model_version} (current" in text
    assert re.search(r"\d+ of \d+ regions flagged at \|z\| > 2(\.0)?; [\d.]+ expected by chance", text)
    assert "probability" in text and "low" in text and "high" in text and "<image/png>" in text
    assert STATEMENT in text.replace("\n", " ")
    assert (tmp_path / notebooks.FOLDER / f"cads-report-{series}.pdf").read_bytes().startswith(b"%PDF")
