"""Issue 11 item 10: test helpers stay out of the product, ``synth`` and ``deface`` do not import each other both
ways (nor reach into each other's private names), and ``bench/`` does not import ``tests/``.

Read from the sources with ``ast`` (imports inside functions count too), so a lazy import cannot hide a cycle.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT = REPO / "incloud_kernel"
#: bench scripts not yet free of tests/, and why (each is another piece of work of issue 11).
BENCH_EXCEPTIONS: dict[str, str] = {}
TEST_MODULES = {p.stem for p in (REPO / "tests").glob("*.py")} | {"services", "tests", "conftest"}


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every import statement of ``path``, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            found.append((module, [alias.name for alias in node.names]))
    return found


def product_files(subpackage: str = "") -> list[Path]:
    return sorted((PRODUCT / subpackage).rglob("*.py"))


def test_the_product_holds_and_imports_no_test_helper() -> None:
    assert not (PRODUCT / "deface" / "testheads.py").exists()
    for path in product_files():
        for module, _ in imports(path):
            top = module.split(".")[0]
            assert top not in TEST_MODULES and "testheads" not in module and top != "bench", (path, module)


def test_deface_never_imports_synth_and_synth_uses_only_public_deface_names() -> None:
    for path in product_files("deface"):
        assert not any(m.startswith("incloud_kernel.synth") for m, _ in imports(path)), path
    for path in product_files("synth"):
        for module, names in imports(path):
            if module.startswith("incloud_kernel.deface"):
                private = [n for n in names if n.startswith("_")]
                assert not private and not any(p.startswith("_") for p in module.split(".")), (path, module, private)


def test_bench_does_not_import_tests() -> None:
    for path in sorted((REPO / "bench").glob("*.py")):
        if path.name in BENCH_EXCEPTIONS:
            continue
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"sys\.path\.(insert|append)\([^\n]*tests", text), f"{path.name} puts tests/ on sys.path"
        for module, _ in imports(path):
            assert module.split(".")[0] not in TEST_MODULES, (path, module)
