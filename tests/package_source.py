"""The package's modules parsed once per session, for the tests that scan its source
(layers and sizes, bilingual messages)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pochitrain"


@functools.cache
def trees() -> dict[Path, ast.Module]:
    """Every module of the package, parsed once."""
    return {path: ast.parse(path.read_text(encoding="utf-8"))
            for path in sorted(PACKAGE.rglob("*.py"))}


@functools.cache
def all_nodes() -> dict[Path, list[ast.AST]]:
    """Every node of every module (``ast.walk`` order), walked once."""
    return {path: list(ast.walk(tree)) for path, tree in trees().items()}
