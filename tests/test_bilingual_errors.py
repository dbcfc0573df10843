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
from package_source import PACKAGE, all_nodes, trees

from pochitrain import errors
from pochitrain.errors import PochiError, first_line, is_bilingual

# Placeholder for an f-string's replacement fields: neither Japanese nor English.
HOLE = "\x00"


def error_classes() -> set[str]:
    """Names of PochiError and its subclasses (errors.py, and any defined elsewhere)."""
    names = {name for name, obj in inspect.getmembers(errors, inspect.isclass)
             if issubclass(obj, PochiError)}
    class_defs = [node for found in all_nodes().values() for node in found
                  if isinstance(node, ast.ClassDef)]
    grew = True
    while grew:  # subclasses defined in other modules, e.g. class BadInput(DataError)
        grew = False
        for node in class_defs:
            if node.name not in names and any(base_name(b) in names for b in node.bases):
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
    for tree in trees().values():
        consts = module_constants(tree)
        found.update({k: v for k, v in consts.items() if k.isupper()})
    return found


def passed_on(text: str) -> bool:
    """The first line is only replacement fields and punctuation: another error's (bilingual)
    message passed on, e.g. ``f"{where}: {exc.message}"``."""
    first = text.split("\n", 1)[0]
    return HOLE in first and not any(c.isalpha() for c in first.replace(HOLE, ""))


def makes_error(func: ast.expr, classes: set[str]) -> bool:
    """``Error(...)``, ``module.Error(...)``, ``(UsageError if flag else ConfigError)(...)``,
    or ``super().__init__(...)`` (inside an error class: see ``super_inits``)."""
    if isinstance(func, ast.Attribute) and func.attr == "__init__" and isinstance(
            func.value, ast.Call) and base_name(func.value.func) == "super":
        return "super" in classes
    if isinstance(func, ast.IfExp):
        return makes_error(func.body, classes) or makes_error(func.orelse, classes)
    return base_name(func) in classes


def error_aliases(found: list[ast.AST], classes: set[str]) -> set[str]:
    """Names assigned an error class in a module (``found``: its nodes), e.g. ``error =
    BackendMissingError if flag else ConfigError``, then called as ``error(...)``."""
    return {target.id for node in found if isinstance(node, ast.Assign)
            and isinstance(node.value, (ast.Name, ast.IfExp))
            and makes_error(node.value, classes)
            for target in node.targets if isinstance(target, ast.Name)}


def construction_sites() -> list[tuple[str, int, str | None]]:
    """(file:line, line, message text) of every PochiError-subclass call in the package;
    the text is None where the message is not written at the call."""
    classes = error_classes()
    shared = shared_constants()
    sites = []
    for path, tree in trees().items():
        consts = {**shared, **module_constants(tree)}
        found = all_nodes()[path]
        makers = classes | error_aliases(found, classes)
        calls = [node for node in found
                 if isinstance(node, ast.Call) and makes_error(node.func, makers)]
        calls += [node for cls in found  # an error class's own __init__
                  if isinstance(cls, ast.ClassDef) and cls.name in classes
                  for node in ast.walk(cls)
                  if isinstance(node, ast.Call) and makes_error(node.func, {"super"})]
        for node in calls:
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


def printed_message(err: str) -> str:
    """The message part of what the CLI printed: after the error label, before the fix."""
    label = "エラー / Error: "
    assert label in err, err
    return err.split(label, 1)[1].split("対処 / Fix:", 1)[0].strip()


def failing_commands(tmp: Path, digits: Path, checkpoint: Path) -> list[tuple[list[str], str]]:
    """(argv, English words) of commands that fail for a user's reason, one per kind."""
    from tiny import tiny_config

    taken = tmp / "taken.onnx"
    taken.write_bytes(b"keep me")
    full = tmp / "full"
    (full / "x").mkdir(parents=True)
    missing = tiny_config(tmp / "missing", digits, train=tmp / "no_such_folder")
    typo = tiny_config(tmp / "typo", digits, extra="learnig_rate = 0.1\n")
    classes = tiny_config(tmp / "classes", digits, extra="num_classes = 5\n")
    return [
        (["train", "-c", str(missing)], "does not exist"),
        (["train", "-c", str(typo)], "Unknown config key"),
        (["train", "-c", str(classes)], "num_classes = 5 but"),
        (["train", "-c", str(tmp / "none.py")], "Config file not found"),
        (["export-onnx", str(checkpoint), "-o", str(taken)], "already exists"),
        (["export-onnx", str(checkpoint), "--input-size", "32", "32", "32", "-o",
          str(tmp / "a.onnx")], "--input-size takes two values"),
        (["infer", str(tmp / "none.pth"), "--data", str(digits / "val")], "not found"),
        (["sample-data", str(full)], "not empty"),
    ]


def test_failing_commands_print_japanese_then_english(
        tmp_path: Path, digits_dir: Path, untrained_checkpoint: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from pochitrain.cli.main import run

    for argv, words in failing_commands(tmp_path, digits_dir, untrained_checkpoint):
        code = run(argv)
        err = capsys.readouterr().err
        assert code in (1, 2), (argv, err)
        assert "Traceback" not in err, err
        message = printed_message(err)
        assert is_bilingual(message), (argv, err)
        assert words in message.split("\n", 1)[1], (argv, err)


def test_an_error_quoted_in_another_keeps_one_japanese_line(tmp_path: Path) -> None:
    from pochitrain.errors import CalibrationError, english_part
    from pochitrain.onnx.calibration import scan_calibration_folder

    with pytest.raises(CalibrationError) as err:
        scan_calibration_folder(tmp_path / "nope")
    assert is_bilingual(err.value.message), err.value.message
    assert english_part(err.value.message).startswith("No usable calibration images: The ")
    assert english_part("English only") == "English only"


def test_first_line_of_any_exception() -> None:
    """What our messages quote of another library's error: its first line, never an
    IndexError for an exception raised without a message."""
    assert first_line(RuntimeError()) == "RuntimeError"
    assert first_line(RuntimeError("  \n")) == "RuntimeError"
    assert first_line(ValueError("bad shape [1, 3]\n  at node 7")) == "bad shape [1, 3]"
    assert first_line(OSError("x" * 400)) == "x" * 300
    assert first_line(OSError("x" * 400), 160) == "x" * 160
