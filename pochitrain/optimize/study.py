"""Sampler, pruner, storage and direction of a study, from the config's ``optuna`` dict.

Samplers and pruners take literal arguments in the string itself (``"TPESampler(seed=0)"``);
``sampler_params`` / ``pruner_params`` are merged in. ``GridSampler`` gets its grid from the
search space. A ``seed`` moves on with the trial number (``seeding``), so processes sharing a
study do not draw the same values. Storage: ``--storage``, else ``optuna['storage']``, else
``sqlite:///<output>/study.db``; a bare file path means SQLite.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any, NamedTuple

from pochitrain.config_checks import did_you_mean
from pochitrain.errors import BackendMissingError, ConfigError, PochiError, UsageError, first_line

METRICS = {"val_accuracy": "maximize", "val_loss": "minimize"}
SAMPLERS = ("TPESampler", "RandomSampler", "CmaEsSampler", "GridSampler", "QMCSampler",
            "GPSampler", "BruteForceSampler", "NSGAIISampler")
# Their seed orders one sequence (QMC's scramble, the grid's order) that every trial and
# process walks along, taking the points not yet run: one seed for all.
SAME_SEED_SAMPLERS = ("QMCSampler", "GridSampler")
PRUNERS = ("MedianPruner", "PercentilePruner", "SuccessiveHalvingPruner", "HyperbandPruner",
           "NopPruner", "ThresholdPruner", "WilcoxonPruner")
DRIVERS = {"psycopg2": "psycopg2-binary", "psycopg": "psycopg[binary]", "pymysql": "PyMySQL",
           "MySQLdb": "mysqlclient", "mysql": "mysql-connector-python", "asyncpg": "asyncpg",
           "cx_Oracle": "cx_Oracle", "oracledb": "oracledb", "pyodbc": "pyodbc"}


def metric_and_direction(cfg: dict[str, Any], metric: str | None) -> tuple[str, str]:
    """The metric (CLI, else ``optuna['metric']``, else the one ``direction`` implies) and the
    direction it needs. A named metric wins over ``direction`` (which the config check fills
    with its default, so it cannot tell a deliberate value)."""
    metric = metric or cfg.get("metric")
    if metric is None:
        metric = "val_loss" if cfg.get("direction") == "minimize" else "val_accuracy"
    if metric not in METRICS:
        raise ConfigError("不明な最適化の指標です\n"
                          f"Unknown optimization metric {metric!r}.",
                          f"Use one of: {', '.join(METRICS)}.")
    return metric, METRICS[metric]


class Call(NamedTuple):
    name: str
    args: list[Any]
    kwargs: dict[str, Any]


def parse_call(text: str, where: str) -> Call:
    """``"Name(1, a=2)"`` -> Call("Name", [1], {"a": 2}); only literal arguments."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        node = None
    if isinstance(node, ast.Name):
        return Call(node.id, [], {})
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        try:
            args = [ast.literal_eval(a) for a in node.args]
            kwargs = {str(k.arg): ast.literal_eval(k.value) for k in node.keywords}
        except ValueError:
            raise ConfigError("引数にはリテラルの値を指定してください\n"
                              f"{where} = {text!r}: arguments must be literal values.",
                              f"Example: {where} = 'TPESampler(seed=0)'.") from None
        return Call(node.func.id, args, kwargs)
    raise ConfigError("名前か Name(key=value) の形で指定してください\n"
                      f"{where} = {text!r} is not a name or a call like 'Name(key=value)'.",
                      f"Example: {where} = 'MedianPruner(n_startup_trials=5)'.")


def _construct(kind: str, text: str, known: tuple[str, ...], module: Any,
               extra: dict[str, Any], more: dict[str, Any] | None = None) -> Any:
    where = f"optuna[{kind!r}]"
    name, args, kwargs = parse_call(text, where)
    if name not in known:
        raise ConfigError("不明な名前が指定されています\n"
                          f"{where}: unknown {kind} {name!r}.{did_you_mean(name, known)}",
                          f"Use one of: {', '.join(known)}.")
    kwargs = {**(more or {}), **dict(extra or {}), **kwargs}
    try:
        built = getattr(module, name)(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        import inspect

        sig = inspect.signature(getattr(module, name))
        raise ConfigError("指定した引数で作成できません\n"
                          f"{where}: {name} cannot be built with these arguments: {exc}",
                          f"{name}{sig}") from None
    seed = kwargs.get("seed")
    if kind == "sampler" and isinstance(seed, int) and name not in SAME_SEED_SAMPLERS:
        from pochitrain.optimize.seeding import SeedPerTrial

        cls = getattr(module, name)
        return SeedPerTrial(lambda s: cls(*args, **{**kwargs, "seed": s}), seed)
    return built


def build_sampler(cfg: dict[str, Any], grid: dict[str, list[Any]] | None) -> Any:
    import optuna

    text = str(cfg.get("sampler") or "TPESampler")
    more = None
    if parse_call(text, "optuna['sampler']").name == "GridSampler":
        if grid is None:
            raise ConfigError("GridSampler にはグリッドにできる search_space が必要です\n"
                              "GridSampler needs a grid: every search_space entry categorical, "
                              "int, or float with a 'step'.",
                              "Add 'step' to float ranges, or use another sampler.")
        more = {"search_space": grid}
    return _construct("sampler", text, SAMPLERS, optuna.samplers,
                      cfg.get("sampler_params") or {}, more)


def build_pruner(cfg: dict[str, Any]) -> Any:
    import optuna

    text = cfg.get("pruner") or "NopPruner"
    return _construct("pruner", str(text), PRUNERS, optuna.pruners,
                      cfg.get("pruner_params") or {})


def grid_of(params: list[Any]) -> dict[str, list[Any]] | None:
    grid: dict[str, list[Any]] = {}
    for p in params:
        s = p.spec
        if p.kind == "categorical":
            grid[p.name] = list(s["choices"])
        elif p.kind == "int":
            grid[p.name] = list(range(int(s["low"]), int(s["high"]) + 1, int(s.get("step") or 1)))
        elif s.get("step"):
            n = round((float(s["high"]) - float(s["low"])) / float(s["step"]))
            grid[p.name] = [round(float(s["low"]) + i * float(s["step"]), 12)
                            for i in range(n + 1)]
        else:
            return None
    return grid


def storage_url(cli: str | None, cfg: dict[str, Any], out_dir: Path) -> str:
    url = cli or cfg.get("storage") or str(out_dir / "study.db")
    if "://" not in url:  # a file path: SQLite
        url = f"sqlite:///{Path(url).expanduser().resolve()}"
    return str(url)


def masked(text: str) -> str:
    """``text`` with the password of every URL in it as ``***``: ``scheme://user:pw@host``,
    ``scheme://:pw@host`` (no user name), a password holding ``@``."""
    return re.sub(r"(://[^:/@?#\s]*):[^/?#\s]*@", r"\1:***@", text)


def open_storage(url: str) -> Any:
    """An Optuna RDBStorage (errors name the missing driver / bad URL)."""
    import optuna

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}  # concurrent processes wait for the lock
    try:
        return _rdb_storage(optuna, url, kwargs)
    except ImportError as exc:
        module = _missing_module(exc)
        raise BackendMissingError(
            "ストレージのデータベースドライバーがインストールされていません\n"
            f"The storage {masked(url)} needs the database driver {module!r}, which is not "
            "installed.", f"pip install {DRIVERS.get(module, module)} (or use a sqlite:/// URL)."
        ) from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's URL / connection errors
        kind = type(exc).__name__
        if kind == "ArgumentError":
            raise UsageError("--storage がデータベースの URL ではありません\n"
                             f"--storage {masked(url)} is not a database URL.",
                             "Use e.g. sqlite:///study.db or "
                             "postgresql://user:pass@host/db.") from None
        raise PochiError("スタディのストレージを開けません\n"
                         f"Cannot open the study storage {masked(url)}: {kind}: "
                         f"{masked(first_line(exc))}",
                         "Check the URL, that the database server runs and that it can be "
                         "reached from here.") from None


def _rdb_storage(optuna: Any, url: str, kwargs: dict[str, Any]) -> Any:
    """RDBStorage, retried briefly: processes starting together race to create the tables."""
    import time

    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except Exception as exc:
            # tables created twice ("already exists"), alembic_version inserted twice
            # (IntegrityError), or the file locked by the other process: try again
            text = str(exc).lower()
            if not ("already exists" in text or "locked" in text
                    or type(exc).__name__ == "IntegrityError"):
                raise
            time.sleep(0.5 * (attempt + 1))
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)  # the last try


def _missing_module(exc: BaseException) -> str:
    """The top-level module a (possibly wrapped: Optuna re-raises) ImportError names."""
    seen: BaseException | None = exc
    while seen is not None:
        name = getattr(seen, "name", None)
        if isinstance(seen, ImportError) and name:
            return str(name).split(".")[0]
        seen = seen.__cause__ or seen.__context__
    match = re.search(r"No module named '([^'.]+)", str(exc))
    return match.group(1) if match else "the database driver"
