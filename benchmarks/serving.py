"""`run.py serve`: start pochi serve on a free local port, send a bounded number of
one-image requests from client threads (in one or several client processes), stop the server
with SIGTERM. `--api original` sends the original pochitrain's request (base64 JPEG in JSON)
instead of a multipart upload."""

from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import json
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from common import Place, now, percentile, pochi

TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


@dataclass
class Load:
    """Latencies (s) of answered requests and the statuses of the others."""
    latencies: list[float] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(port: int, path: str) -> dict[str, object]:
    with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=10)) as conn:
        conn.request("GET", path)
        response = conn.getresponse()
        return dict(json.loads(response.read())) if response.status == 200 else {}


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"pochi serve exited with {proc.returncode} before answering")
        try:
            if get_json(port, "/api/v1/health"):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"pochi serve did not answer within {timeout:.0f} s")


def client(port: int, images: list[tuple[bytes, str]], tickets: itertools.count[int],
           total: int, load: Load) -> None:
    """Send requests one at a time on one keep-alive connection until ``total`` are taken."""
    with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=120)) as conn:
        for i in itertools.takewhile(lambda i: i < total, tickets):
            body, content_type = images[i % len(images)]
            start = time.perf_counter()
            conn.request("POST", "/api/v1/predict", body, {"Content-Type": content_type})
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                load.latencies.append(time.perf_counter() - start)
            else:
                load.failures.append(response.status)


def run_load(port: int, images: list[tuple[bytes, str]], clients: int,
             total: int) -> tuple[Load, float]:
    load, tickets = Load(), itertools.count()
    threads = [threading.Thread(target=client, args=(port, images, tickets, total, load))
               for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return load, time.perf_counter() - start


def read_images(folder: Path, api: str, limit: int = 256) -> list[tuple[bytes, str]]:
    """Request bodies and their content types: the file itself, or (``api == "original"``)
    the original pochitrain's JSON with the JPEG in base64."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in TYPES)[:limit]
    if not files:
        raise SystemExit(f"no .jpg/.png/.webp images under {folder}")
    if api == "original":
        return [(json.dumps({"image_data": base64.b64encode(p.read_bytes()).decode(),
                             "format": "jpeg"}).encode(), "application/json") for p in files]
    return [(p.read_bytes(), TYPES[p.suffix.lower()]) for p in files]


def process_load(port: int, images: list[tuple[bytes, str]], clients: int,
                 total: int) -> Load:
    """One client process's share of the load (its own interpreter, so the client side of
    a fast server is not held by one GIL)."""
    return run_load(port, images, clients, total)[0]


def spread_load(port: int, images: list[tuple[bytes, str]], clients: int, total: int,
                processes: int) -> tuple[Load, float]:
    """``clients`` threads over ``processes`` client processes, ``total`` requests in all."""
    if processes <= 1:
        return run_load(port, images, clients, total)
    shares = [(clients // processes + (i < clients % processes),
               total // processes + (i < total % processes)) for i in range(processes)]
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(process_load, [port] * processes, [images[:1]] * processes,
                      [1] * processes, [1] * processes))  # start the processes first
        start = time.perf_counter()
        parts = list(pool.map(process_load, [port] * processes, [images] * processes,
                              [c for c, _ in shares], [n for _, n in shares]))
        wall = time.perf_counter() - start
    load = Load()
    for part in parts:
        load.latencies += part.latencies
        load.failures += part.failures
    return load, wall


def load_row(load: Load, wall: float, rep: int) -> dict[str, object]:
    ms = [1000 * s for s in load.latencies]
    return {"repetition": rep, "answered": len(ms), "errors": len(load.failures),
            "images_per_s": round(len(ms) / wall, 1),
            "p50_ms": round(percentile(ms, 50), 2), "p90_ms": round(percentile(ms, 90), 2),
            "p99_ms": round(percentile(ms, 99), 2),
            "mean_ms": round(sum(ms) / len(ms), 2) if ms else float("nan")}


def serve_rows(args: argparse.Namespace, machine: dict[str, str],
               place: Place) -> list[dict[str, object]]:
    images, port = read_images(args.images, args.api), free_port()
    command = pochi("serve", args.model, "--port", port, "--no-access-log",
                    *shlex.split(args.args))
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=place.env,
                                cwd=place.cwd)
        try:
            wait_ready(port, proc, args.start_timeout)
            ready_s = round(time.perf_counter() - start, 2)
            info = get_json(port, "/api/v1/model-info")
            fixed = {"date": now(), "model_file": str(args.model),
                     "model_name": info.get("model_name"), "backend": info.get("backend"),
                     "device": info.get("device"), "pipeline": info.get("pipeline"),
                     "max_batch": info.get("max_batch"), "server_args": args.args,
                     "clients": args.clients, "client_processes": args.processes,
                     "api": args.api, "requests": args.requests,
                     "start_to_ready_s": ready_s}
            for rep in range(1, args.repeat + 1):
                load, wall = spread_load(port, images, args.clients, args.requests,
                                         args.processes)
                rows.append({**fixed, **load_row(load, wall, rep), **machine})
        finally:
            proc.send_signal(signal.SIGTERM)  # a clean drain exits 0
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return rows
