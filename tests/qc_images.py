"""Test inputs for the QC indices: the synthetic runs of ``bench/qc_inputs.py`` (shared with the benchmark)
and the real images that ship inside installed packages (never downloaded)."""
from __future__ import annotations

import sys
from pathlib import Path

_BENCH = str(Path(__file__).resolve().parents[1] / "bench")
if _BENCH not in sys.path:
    sys.path.append(_BENCH)

from qc_inputs import synth_bold, synth_dwi, synth_t1  # noqa: E402  (bench/qc_inputs.py)

__all__ = ["site_packages_file", "synth_bold", "synth_dwi", "synth_t1"]


def site_packages_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package (FileNotFoundError when the package or file is absent)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package} is not installed")
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    if not path.is_file():
        raise FileNotFoundError(f"{package} does not ship {'/'.join(parts)}")
    return path
