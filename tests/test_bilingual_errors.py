"""Every user-facing error is a Japanese line then an English line.

(a) A static scan: every construction of a ``PochiError`` subclass in the package passes a
message whose first line is Japanese and whose next line is English.
(b) Failing commands run in-process: stderr shows the Japanese line, then the English line,
and no traceback.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import pochitrain
import pochitrain.errors as errors
from pochitrain.errors import PochiError, is_bilingual

PACKAGE = Path(pochitrain.__file__).parent
# Placeholder for an f-string's replacement fields: neither Japanese nor English.
HOLE = "\x00"


def error_classes() -> set[str]:
    """Names of PochiError and its subclasses (errors.py, and any defined elsewhere)."""
    names = {name for name, obj in inspect.getmembers(errors, inspect.isclass)
             if issubclass(obj, PochiError)}
    grew = True
    while grew:  # subclasses defined in other modules, e.g. class BadInput(DataError)
        grew = False
        for path in PACKAGE.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and node.name not in names and any(
                        base_name(b) in names for b in node.bases):
                    names.add(node.name)
                    grew = True
    return names


def base_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def module_constants(tree: ast.Module) -> dict[str, ast.expr]:
    """Top-level ``NAME = <expression>`` of a module (messages built from constants)."""
    found: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
                node.targets[0], ast.Name):
            found[node.targets[0].id] = node.value
    return found


def static_text(node: ast.expr, consts: dict[str, ast.expr]) -> str | None:
    """The text of a message expression with replacement fields as HOLE; None when the message
    is not written at this site (e.g. another error's message passed on)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            inner = static_text(value.value, consts) if isinstance(
                value, ast.FormattedValue) else static_text(value, consts)
            parts.append(HOLE if inner is None else inner)
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = static_text(node.left, consts), static_text(node.right, consts)
        return (HOLE if left is None else left) + (HOLE if right is None else right)
    if isinstance(node, ast.Name) and node.id in consts:
        return static_text(consts[node.id], consts)
    return None


def shared_constants() -> dict[str, ast.expr]:
    """Upper-case module constants of the whole package (e.g. ``NO_VAL_TRANSFORM_JA``, which
    other modules import)."""
    found: dict[str, ast.expr] = {}
    for path in PACKAGE.rglob("*.py"):
        consts = module_constants(ast.parse(path.read_text(encoding="utf-8")))
        found.update({k: v for k, v in consts.items() if k.isupper()})
    return found


def passed_on(text: str) -> bool:
    """The first line is only replacement fields and punctuation: another error's (bilingual)
    message passed on, e.g. ``f"{where}: {exc.message}"``."""
    first = text.split("\n", 1)[0]
    return HOLE in first and not any(c.isalpha() for c in first.replace(HOLE, ""))


def construction_sites() -> list[tuple[str, int, str | None]]:
    """(file:line, line, message text) of every PochiError-subclass call in the package;
    the text is None where the message is not written at the call."""
    classes = error_classes()
    shared = shared_constants()
    sites = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        consts = {**shared, **module_constants(tree)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and base_name(node.func) in classes):
                continue
            message = node.args[0] if node.args else next(
                (k.value for k in node.keywords if k.arg == "message"), None)
            if message is None:
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            text = static_text(message, consts)
            sites.append((where, node.lineno, None if text and passed_on(text) else text))
    return sites


def test_every_error_message_in_the_package_is_japanese_then_english() -> None:
    sites = construction_sites()
    assert len(sites) > 200  # the scan does see the package's errors
    bad = [where for where, _, text in sites
           if text is not None and not is_bilingual(text.replace(HOLE, "x"))]
    assert not bad, "messages without a Japanese line then an English line:\n" + "\n".join(bad)
