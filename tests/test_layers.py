"""The package's shape: the import layers of docs/ARCHITECTURE.md (import-linter contracts in
pyproject.toml), no private name used across modules, and the size limits on modules and
functions."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from package_source import PACKAGE, all_nodes, trees

ROOT = PACKAGE.parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# At most three modules or functions may exceed the size limits, each with its reason:
# {"pochitrain/x.py" or "pochitrain/x.py:function": "why it stays whole"}.
SIZE_EXCEPTIONS: dict[str, str] = {}


# ---- import layers (import-linter) ---------------------------------------------------------


def _lint_imports() -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "lint-imports"
    env = {**os.environ, "COLUMNS": "250"}  # one import per line in its report
    return subprocess.run([str(exe), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def _reported_violations(report: str) -> set[str]:
    """The imports lint-imports names as breaking a contract."""
    found = set()
    package = "pochitrain"
    for line in report.splitlines():
        cycle_scope = re.match(r"No cycles are allowed in (\S+)\.", line)
        if cycle_scope:
            package = cycle_scope.group(1)
        direct = re.match(r"- (pochitrain\S*) -> (pochitrain\S*)", line)
        if direct:
            found.add(f"{direct.group(1)} -> {direct.group(2)}")
        unlisted = re.fullmatch(r"- (pochitrain[\w.]*)\s*", line)  # exhaustive: not placed
        if unlisted:
            found.add(f"not in a layer: {unlisted.group(1)}")
        cycle = re.match(r"- \.(\S+) -> \.(\S+) \(", line)
        if cycle:
            found.add(f"cycle: {package}.{cycle.group(1)} -> {package}.{cycle.group(2)}")
    return found


@pytest.fixture(scope="module")
def lint_report() -> subprocess.CompletedProcess[str]:
    return _lint_imports()


def test_no_new_layer_violations(lint_report: subprocess.CompletedProcess[str]) -> None:
    """No import breaks a contract (and the contracts parse), each violation named."""
    output = lint_report.stdout + lint_report.stderr
    assert "Contracts:" in output, f"lint-imports did not check the contracts:\n{output}"
    new = _reported_violations(output)
    assert not new, (f"imports against the layers: {sorted(new)}\n"
                     "A new top-level module goes into one layer of [tool.importlinter] in "
                     "pyproject.toml (the lowest its imports allow); an upward import means the "
                     f"imported code belongs lower down.\n{output}")


def test_import_contracts_are_kept(lint_report: subprocess.CompletedProcess[str]) -> None:
    output = lint_report.stdout + lint_report.stderr
    assert lint_report.returncode == 0, output


# ---- private names -------------------------------------------------------------------------


def _modules() -> Iterator[tuple[str, Path]]:
    for path in trees():  # every module of the package, sorted
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if path.name != "__init__.py":
        base.pop()
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _private_uses(module: str, path: Path) -> Iterator[str]:
    """``from m import _x``, and ``alias._x`` where alias names a pochitrain module or a name
    imported from one."""
    nodes = all_nodes()[path]
    imported: dict[str, str] = {}  # local name -> what it stands for
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            source = _absolute(module, path, node)
            if not source.startswith("pochitrain"):
                continue
            for alias in node.names:
                if _is_private(alias.name):
                    yield f"{module}: {source}.{alias.name}"
                imported[alias.asname or alias.name] = f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pochitrain"):
                    local = alias.asname or alias.name.split(".")[0]
                    imported[local] = alias.name if alias.asname else local
    for node in nodes:
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            target = _dotted(node.value)
            if target is None or target.split(".")[0] not in imported:
                continue
            head, _, rest = target.partition(".")
            owner = imported[head] + (f".{rest}" if rest else "")
            if owner != module and (_is_module(owner) or not rest):
                yield f"{module}: {owner}.{node.attr}"


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def test_no_private_names_across_modules() -> None:
    found = sorted({use for module, path in _modules() for use in _private_uses(module, path)})
    assert not found, "underscore names used outside their module (give them a public name):\n" \
        + "\n".join(found)


# ---- sizes ---------------------------------------------------------------------------------


def _oversized() -> list[str]:
    found = []
    for _, path in _modules():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES and rel not in SIZE_EXCEPTIONS:
            found.append(f"{rel}: {lines} lines")
        for node in all_nodes()[path]:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                key = f"{rel}:{node.name}"
                if length > MAX_FUNCTION_LINES and key not in SIZE_EXCEPTIONS:
                    found.append(f"{key}: {length} lines")
    return found


def test_size_exceptions_are_few_and_explained() -> None:
    assert len(SIZE_EXCEPTIONS) <= 3
    assert all(reason.strip() for reason in SIZE_EXCEPTIONS.values())


def test_modules_and_functions_are_small() -> None:
    found = _oversized()
    assert not found, (f"over {MAX_MODULE_LINES} lines per module or {MAX_FUNCTION_LINES} per "
                       "function:\n" + "\n".join(found))
