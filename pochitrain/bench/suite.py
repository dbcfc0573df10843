"""Benchmark suite files (the original's ``configs/bench_suites.yaml`` format) -> run cases.

Each case x pipeline x batch size x precision is one ``Case``; the format, its new keys and
the naming rules are in docs/readme_bench.md. Every case is checked (with the file's line)
before anything runs. Relative paths are tried against the working directory (the
original's meaning) and the suite file's folder, as config paths are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pochitrain.errors import ConfigError
from pochitrain.inference import MAX_WARMUP_RUNS

RUNTIMES = {"pytorch": "pytorch", "onnx": "onnx", "trt": "tensorrt", "tensorrt": "tensorrt"}
PIPELINES = {"auto": "auto", "cpu": "cpu", "current": "cpu", "fast": "cpu", "gpu": "gpu"}
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
CASE_KEYS = {"name", "runtime", "model_path", "pipelines", "pipeline", "repeats",
             "benchmark_env_name", "batch_sizes", "batch_size", "precisions", "precision",
             "data", "device", "providers", "warmup", "extra_args"}
DEFAULT_KEYS = (CASE_KEYS - {"name", "runtime", "model_path"}) | {"model_paths"}


class SuiteError(ConfigError):
    """A benchmark suite file is missing, unreadable or invalid."""


@dataclass
class Case:
    name: str
    runtime: str  # pytorch | onnx | tensorrt
    model_path: Path
    pipeline: str  # auto | cpu | gpu
    repeats: int
    batch_size: int | None = None
    precision: str | None = None
    env_name: str | None = None
    data: Path | None = None
    device: str | None = None
    providers: list[str] | None = None
    warmup: int | None = None
    extra_args: list[str] = field(default_factory=list)
    line: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


@dataclass
class Suite:
    name: str
    description: str
    repeats: int
    cases: list[Case]
    file: Path


class _LineDict(dict):
    """A YAML mapping that remembers its line and the line of each value."""

    line = 0
    lines: dict[str, int]


def _load_yaml(path: Path) -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: Any, node: Any) -> _LineDict:
        out = _LineDict(loader.construct_mapping(node, deep=True))
        out.line = node.start_mark.line + 1
        out.lines = {str(k.value): v.start_mark.line + 1 for k, v in node.value}
        return out

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        text = path.read_bytes().decode("utf-8")
        return yaml.load(text, Loader=Loader)  # a SafeLoader subclass
    except OSError as exc:
        raise SuiteError("スイートファイルを読み込めません\n"
                         f"Cannot read the suite file {path}: {exc.strerror}",
                         "Pass --suites-file with a readable YAML file.") from exc
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise SuiteError("スイートファイルが UTF-8 ではありません\n"
                         f"The suite file {path} is not UTF-8 text (byte {exc.start}, line "
                         f"{line}, is {exc.object[exc.start:exc.start + 1]!r}).",
                         "Save the file as UTF-8.") from None
    except yaml.YAMLError as exc:
        raise SuiteError("スイートファイルが正しい YAML ではありません\n"
                         f"The suite file {path} is not valid YAML:\n{exc}",
                         "Fix the YAML syntax at the line shown.") from exc


def load_suite(path: Path | str, name: str) -> Suite:
    """Read ``path`` and expand suite ``name``; every case is checked before anything runs."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError("スイートファイルが見つかりません\n"
                         f"Suite file not found: {path}",
                         "Pass --suites-file FILE (see configs/bench_suites.yaml).")
    doc = _load_yaml(path)
    suites = doc.get("suites") if isinstance(doc, dict) else None
    if not isinstance(suites, dict) or not suites:
        raise SuiteError("スイートファイルに suites: の定義がありません\n"
                         f"{path} has no 'suites:' mapping.",
                         "Start the file with 'suites:' and one entry per suite.")
    if name not in suites:
        raise SuiteError("指定したスイートがファイルにありません\n"
                         f"Suite {name!r} is not in {path}.",
                         f"Suites there: {', '.join(map(str, suites))}.")
    raw = suites[name]
    where = f"{path}, suite {name!r}, line {getattr(raw, 'line', '?')}"
    if not isinstance(raw, dict):
        raise SuiteError("スイートは cases: を持つマッピングにしてください\n"
                         f"{where}: a suite is a mapping with 'cases:'.",
                         "See configs/bench_suites.yaml for the format.")
    repeats = _whole_number(raw.get("repeats", 1), "repeats", where)
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise SuiteError("defaults はマッピングにしてください\n"
                         f"{where}: 'defaults' must be a mapping.", "See the format.")
    _unknown(defaults, DEFAULT_KEYS, f"{path}, suite {name!r} defaults, line "
             f"{getattr(defaults, 'line', '?')}")
    cases_raw = raw.get("cases")
    if not isinstance(cases_raw, list) or not cases_raw:
        raise SuiteError("スイートにケースがありません\n"
                         f"{where}: no cases.", "Add 'cases:' with at least one "
                         "{runtime: pytorch|onnx|trt, model_path: ...} entry.")
    cases: list[Case] = []
    for idx, case in enumerate(cases_raw):
        cases.extend(_expand(path, name, idx, case, defaults, repeats))
    checked: set[Path] = set()
    for case in cases:  # after every case's own checks: those come first
        if case.data is None and case.model_path not in checked:
            checked.add(case.model_path)
            _check_default_data(case.model_path, f"{path}, line {case.line}: case "
                                f"{case.name!r} of suite {name!r}")
    _dedupe(cases)
    return Suite(name, str(raw.get("description") or ""), repeats, cases, path)


def _expand(path: Path, suite: str, idx: int, raw: Any, defaults: dict[str, Any],
            repeats: int) -> list[Case]:
    if not isinstance(raw, _LineDict):  # every mapping of the file is one
        raise SuiteError("ケースがマッピングになっていません\n"
                         f"{path}: case {idx + 1} of suite {suite!r} is not a mapping.",
                         "Write each case as {runtime: ..., model_path: ...}.")
    line, label = raw.line, raw.get("name")
    where = f"{path}, line {line}: case {label or idx + 1!r} of suite {suite!r}"
    _unknown(raw, CASE_KEYS, where)
    runtime_raw = raw.get("runtime")
    runtime = RUNTIMES.get(str(runtime_raw).lower()) if runtime_raw is not None else None
    if runtime is None:
        raise SuiteError("ケースのランタイムが不正です\n"
                         f"{path}, line {raw.lines.get('runtime', line)}: case "
                         f"{label or idx + 1!r} of suite {suite!r} has runtime {runtime_raw!r}.",
                         "Use runtime: pytorch, onnx or trt.")

    def get(key: str, alt: str | None = None) -> Any:
        for src in (raw, defaults):
            for k in (key, alt):
                if k is not None and src.get(k) is not None:
                    return src[k]
        return None

    pipelines = list(dict.fromkeys(  # each once, in the file's order
        _pipeline(p, where) for p in _as_list(get("pipelines", "pipeline")) or ["auto"]))
    batch_sizes = [_whole_number(b, "batch_sizes", where) for b in _as_list(get("batch_sizes",
                                                                            "batch_size"))]
    precisions = [_precision(p, where) for p in _as_list(get("precisions", "precision"))]
    reps = _whole_number(raw.get("repeats", repeats), "repeats", where)
    data = get("data")
    data_path = _path(path, data, "data", where) if data is not None else None
    warmup = get("warmup")
    if warmup is not None:
        warmup = _whole_number(warmup, "warmup", where, minimum=0, maximum=MAX_WARMUP_RUNS)
    name = str(label) if label else f"{runtime_raw}_{idx:02d}"
    out: list[Case] = []
    prec_axis: list[str | None] = list(precisions) or [None]
    bs_axis: list[int | None] = list(batch_sizes) or [None]
    for prec in prec_axis:
        model = _model_path(raw, defaults, str(runtime_raw).lower(), runtime, prec, path, where)
        for pipe in pipelines:
            for bs in bs_axis:
                parts = [name]
                if len(pipelines) > 1 or not label:
                    parts.append(pipe)
                if len(batch_sizes) > 1:
                    parts.append(f"bs{bs}")
                if len(precisions) > 1:
                    parts.append(str(prec))
                out.append(Case(
                    name="_".join(parts), runtime=runtime, model_path=model, pipeline=pipe,
                    repeats=reps, batch_size=bs, precision=prec,
                    env_name=get("benchmark_env_name"), data=data_path,
                    device=get("device"), providers=_str_list(get("providers")),
                    warmup=warmup, extra_args=_str_list(get("extra_args")) or [],
                    line=line))
    return out


def _model_path(raw: dict[str, Any], defaults: dict[str, Any], key: str, runtime: str,
                precision: str | None, suite_file: Path, where: str) -> Path:
    value = raw.get("model_path")
    if value is None:
        paths = defaults.get("model_paths") or {}
        value = next((paths[k] for k in (key, runtime, "trt" if runtime == "tensorrt" else key)
                      if k in paths), None)
    if isinstance(value, dict):
        value = value.get(precision) if precision else None
    if value is None:
        raise SuiteError("モデルのパスが指定されていません\n"
                         f"{where}: no model path" + (f" for precision {precision}"
                                                      if precision else "") + ".",
                         "Give the case a model_path, or the suite defaults.model_paths."
                         f"{key}.")
    text = str(value).replace("{precision}", precision or "fp32")
    path = _path(suite_file, text, "model_path", where)
    if not path.is_file():
        raise SuiteError("モデルファイルではありません\n"
                         f"{where}: not a model file: {path}",
                         "Fix the path.")
    from pochitrain.model import BACKENDS

    backend = BACKENDS.get(path.suffix.lower())
    if backend is None or backend.runtime != runtime:
        raise SuiteError("モデルファイルの種類がランタイムと合いません\n"
                         f"{where}: {path.name} is not a {runtime} model file.",
                         "Use .pth/.pt for pytorch, .onnx for onnx, .engine/.plan for trt.")
    return path


def _pipeline(value: Any, where: str) -> str:
    pipe = PIPELINES.get(str(value).lower())
    if pipe is None:
        raise SuiteError("不明なパイプラインが指定されています\n"
                         f"{where}: unknown pipeline {value!r}.",
                         "Use auto, cpu or gpu (current and fast mean cpu).")
    return pipe


def _precision(value: Any, where: str) -> str:
    text = str(value).lower()
    if text not in PRECISIONS:
        raise SuiteError("不明な精度が指定されています\n"
                         f"{where}: unknown precision {value!r}.",
                         f"Use one of: {', '.join(PRECISIONS)}.")
    return text


def _whole_number(value: Any, key: str, where: str, minimum: int = 1,
                  maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SuiteError(f"{minimum} 以上の整数を指定してください\n"
                         f"{where}: {key} must be a whole number >= {minimum}, got {value!r}.",
                         f"Fix {key}.")
    if maximum is not None and value > maximum:
        raise SuiteError(f"{maximum} 以下の整数を指定してください\n"
                         f"{where}: {key} must be at most {maximum}, got {value!r}.",
                         f"Fix {key}.")
    return value


def _check_default_data(model: Path, where: str) -> None:
    """Without ``data:`` a run reads the val_data_root of the model's run, as ``pochi infer``
    does: it must be found now, before any run, not run by run."""
    from pochitrain.errors import PochiError, english_part
    from pochitrain.resolve import find_val_data

    remedy = "Add 'data: <image folder>' to the case or to the suite's defaults."
    try:
        root = find_val_data(model)
    except PochiError as exc:
        raise SuiteError("データフォルダを決められません\n"
                         f"{where}: no 'data:' key, and the config of {model}'s run cannot be "
                         f"read: {english_part(exc.message)}", remedy) from None
    if root is None or not root.is_dir():
        found = (f"its run's val_data_root {root} is not a folder" if root is not None else
                 f"{model} has no run config (config.py of its run) with a val_data_root")
        raise SuiteError("データフォルダが指定されていません\n"
                         f"{where}: no 'data:' key, and {found}.", remedy)


def _unknown(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(map(str, raw)) - allowed)
    if extra:
        raise SuiteError("不明なキーがあります\n"
                         f"{where}: unknown key(s) {', '.join(extra)}.",
                         f"Known keys: {', '.join(sorted(allowed))}.")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _str_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    return [str(v) for v in _as_list(value)]


def _path(suite_file: Path, value: Any, key: str, where: str) -> Path:
    """``value`` resolved by config_paths.resolve_relative; SuiteError when it exists nowhere."""
    from pochitrain.config_paths import missing_path_error, resolve_relative

    found = resolve_relative(key, str(value), suite_file.parent, suite_file)
    if found.path.exists():
        return found.path
    error = missing_path_error(key, found, None)
    ja, _, en = error.message.partition("\n")
    raise SuiteError(f"{ja}\n{where}: {en}", error.remedy)


def _dedupe(cases: list[Case]) -> None:
    seen: dict[str, int] = {}
    for i, case in enumerate(cases):
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", case.name)
        if safe in seen:
            safe = f"{safe}_{i:02d}"
        seen[safe] = i
        case.name = safe
