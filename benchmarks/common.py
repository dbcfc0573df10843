"""Helpers shared by the benchmarks: the machine's description, running pochi commands,
percentiles and the result CSV (one row per repetition)."""

from __future__ import annotations

import csv
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path

# Asked in a child process so this one never creates a CUDA context of its own.
GPU_QUERY = ("import torch\n"
             "n = torch.cuda.device_count() if torch.cuda.is_available() else 0\n"
             "print(f'{n}x {torch.cuda.get_device_name(0)}' if n else 'none')")
PACKAGES = ("pochitrain", "torch", "torchvision", "onnxruntime", "onnxruntime-gpu")


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def gpu_name() -> str:
    done = subprocess.run([sys.executable, "-c", GPU_QUERY], check=False,
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "none"


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""  # an optional runtime that is not installed


@dataclass(frozen=True)
class Place:
    """Where the pochi commands run. By default this interpreter's pochitrain, from the working
    directory. With ``--source TREE``, TREE's, from an empty folder of their own: ``python -m``
    puts the working directory first on the module path, ahead of PYTHONPATH, so a source
    tree there (a checkout's root) would be imported instead, by the command and by the
    processes it starts."""

    env: dict[str, str] | None = None
    cwd: str | None = None

    @classmethod
    def of(cls, tree: Path | None, scratch: Path) -> Place:
        if tree is None:
            return cls()
        if not (tree / "pochitrain" / "__init__.py").is_file():
            sys.exit(f"--source {tree}: no pochitrain package in that folder")
        path = os.pathsep.join(filter(None, [str(tree.resolve()), os.environ.get("PYTHONPATH")]))
        return cls({**os.environ, "PYTHONPATH": path}, str(scratch))


def machine_columns(place: Place) -> dict[str, str]:
    """What the figures were measured on; the same columns in every CSV."""
    columns = {"cpu": cpu_name(), "cpu_cores": str(os.cpu_count() or 0), "gpu": gpu_name(),
               "os": platform.platform(), "python": platform.python_version()}
    columns.update({name.replace("-", "_"): version(name) for name in PACKAGES})
    columns["pochitrain_source"] = package_source(place)
    return columns


def package_source(place: Place) -> str:
    """The folder of the pochitrain that the commands import (see ``Place``)."""
    done = subprocess.run([sys.executable, "-c", "import pochitrain; print(pochitrain.__file__)"],
                          check=False, capture_output=True, text=True, env=place.env,
                          cwd=place.cwd)
    return str(Path(done.stdout.strip()).parent) if done.returncode == 0 else ""


def device_tag(device: str) -> str:
    """``gpu`` or ``cpu`` for the device a command reported (cuda:0, CUDAExecutionProvider...)."""
    return "gpu" if any(k in device.lower() for k in ("cuda", "tensorrt")) else "cpu"


def pochi(verb: str, *args: object) -> list[str]:
    """A pochi command run by this interpreter (the installed package's own entry point)."""
    return [sys.executable, "-m", "pochitrain", verb, *(str(a) for a in args)]


def run_timed(command: list[str], place: Place) -> float:
    """Run a command to its end; its wall time in seconds. A failure stops the benchmark
    with the command's output, since a figure from a failed run would mislead."""
    start = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=place.env,
                          cwd=place.cwd)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        sys.exit(f"failed (exit {done.returncode}): {' '.join(command)}")
    return wall


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def write_rows(out_dir: Path, name: str, rows: list[dict[str, object]]) -> Path:
    """Append ``rows`` to ``out_dir/name`` (header written when the file is new)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)
    return path
