"""Load generator for ``pochi serve``: N concurrent clients uploading real images.

Against a running server::

    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --images DIR \\
        --concurrency 64 --requests 20000 --json out.json

Or let it start the server itself (a subprocess), wait for /api/v1/health, run the load,
stop it with SIGTERM (a clean drain exits 0) and report::

    python benchmarks/serve_load.py --model resnet18.pth --serve-args "--device cuda" \\
        --images DIR --concurrency 64 --requests 20000 --json batched.json

Each client sends one request at a time on its own keep-alive connection
(``--images-per-request`` files in one multipart upload, or the raw image as the body with
``--body image``). Clients are spread over ``--procs`` processes so the client side is not
the bottleneck; the default client (``--client raw``) writes pre-built HTTP/1.1 requests on
asyncio streams (uvloop when installed) and costs a fraction of httpx's CPU per request
(``--client httpx`` is the previous one). Reports requests/s, images/s, latency p50/p90/p99
(per request, ms; the raw latencies of all processes merged, not averaged percentiles),
errors by status, the client processes' CPU use (``client_cpu_util`` near 1.0 means the load
generator itself may be the limit; ``client_max_requests_per_s`` is what its CPU could issue)
and the server's mean batch size from /metrics; one summary line on stdout, everything in
--json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

EXTS = {".jpg", ".jpeg", ".png", ".webp"}
TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


def list_images(root: Path, limit: int) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTS)
    if not files:
        sys.exit(f"no .jpg/.png/.webp images under {root}")
    return files[:limit]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[k]


# ---- client processes --------------------------------------------------------------------
BOUNDARY = "pochiloadboundary7f3a"


def _requests(url: str, files: list[Path], per_request: int, body: str,
              top_k: int) -> list[bytes]:
    """Complete HTTP/1.1 requests (head + body), one per starting file, built once."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    target = "/api/v1/predict" + (f"?top_k={top_k}" if top_k > 1 else "")
    data = [(p.name, p.read_bytes(), TYPES[p.suffix.lower()]) for p in files]
    out = []
    for i in range(len(data)):
        if body == "image":
            payload, ctype = data[i][1], data[i][2]
        else:
            chunks = []
            for j in range(per_request):
                name, raw, kind = data[(i * per_request + j) % len(data)]
                chunks.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; '
                              f'filename="{name}"\r\nContent-Type: {kind}\r\n\r\n'.encode()
                              + raw + b"\r\n")
            payload = b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode()
            ctype = f"multipart/form-data; boundary={BOUNDARY}"
        head = (f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        out.append(head + payload)
    return out


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, keep the connection?) after reading one whole response."""
    status = int((await reader.readline()).split(b" ", 2)[1])
    length, chunked, close = 0, False, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = b"close" in value.lower()
    if chunked:
        while (size := int((await reader.readline()).split(b";")[0], 16)) > 0:
            await reader.readexactly(size + 2)
        await reader.readline()
    elif length:
        await reader.readexactly(length)
    return status, not close


async def _raw_clients(url: str, files: list[Path], clients: int, requests: int, warmup: int,
                       per_request: int, body: str, top_k: int,
                       timeout: float) -> dict[str, Any]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    built = _requests(url, files, per_request, body, top_k)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    counter = {"next": 0}
    total = warmup + requests
    first_start = [time.time()]

    async def worker() -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while counter["next"] < total:
            i = counter["next"]
            counter["next"] += 1
            if i == warmup:
                first_start[0] = time.time()
            start = time.perf_counter()
            try:
                if conn is None:
                    conn = await asyncio.open_connection(host, port)
                reader, writer = conn
                writer.write(built[i % len(built)])
                code, keep = await asyncio.wait_for(_read_response(reader), timeout)
                status = str(code)
                if not keep:
                    writer.close()
                    conn = None
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                    ValueError, IndexError) as exc:
                status = type(exc).__name__
                if conn is not None:
                    conn[1].close()
                conn = None
            seconds = time.perf_counter() - start
            if i >= warmup:
                latencies.append(seconds)
                statuses[status] = statuses.get(status, 0) + 1
        if conn is not None:
            conn[1].close()

    await asyncio.gather(*(worker() for _ in range(clients)))
    return {"start": first_start[0], "end": time.time(), "latencies": latencies,
            "statuses": statuses}


async def _clients(url: str, files: list[Path], clients: int, requests: int, warmup: int,
                   per_request: int, body: str, top_k: int, timeout: float) -> dict[str, Any]:
    import httpx

    data = [(p.name, p.read_bytes(), TYPES[p.suffix.lower()]) for p in files]
    target = f"{url.rstrip('/')}/api/v1/predict"
    params = {"top_k": str(top_k)} if top_k > 1 else None
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    counter = {"next": 0}
    total = warmup + requests
    first_start = [0.0]

    async def one(client: httpx.AsyncClient, i: int) -> tuple[str, float]:
        start = time.perf_counter()
        try:
            if body == "image":
                _, raw, ctype = data[i % len(data)]
                r = await client.post(target, content=raw, params=params,
                                      headers={"content-type": ctype})
            else:
                parts = [("files", data[(i * per_request + j) % len(data)])
                         for j in range(per_request)]
                r = await client.post(target, files=parts, params=params)
            status = str(r.status_code)
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        return status, time.perf_counter() - start

    async def worker(client: httpx.AsyncClient) -> None:
        while counter["next"] < total:
            i = counter["next"]
            counter["next"] += 1
            if i == warmup:
                first_start[0] = time.time()
            status, seconds = await one(client, i)
            if i >= warmup:
                latencies.append(seconds)
                statuses[status] = statuses.get(status, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        if warmup == 0:
            first_start[0] = time.time()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    return {"start": first_start[0], "end": time.time(), "latencies": latencies,
            "statuses": statuses}


def _client_process(args: tuple[Any, ...]) -> dict[str, Any]:
    """One client process; its CPU seconds (user + system) come back with its latencies."""
    client, rest = args[0], args[1:]
    cpu = time.process_time()
    if client == "raw":
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
        result = asyncio.run(_raw_clients(*rest))
    else:
        result = asyncio.run(_clients(*rest))
    result["cpu_s"] = time.process_time() - cpu
    return result


def run_load(url: str, files: list[Path], concurrency: int, requests: int, warmup: int,
             per_request: int, body: str, processes: int, top_k: int,
             timeout: float, client: str = "raw") -> dict[str, Any]:
    processes = max(1, min(processes, concurrency))
    jobs = []
    for p in range(processes):
        clients = concurrency // processes + (1 if p < concurrency % processes else 0)
        share = requests // processes + (1 if p < requests % processes else 0)
        jobs.append((client, url, files, clients, share, warmup // processes, per_request,
                     body, top_k, timeout))
    if processes == 1:
        parts = [_client_process(jobs[0])]
    else:
        with mp.get_context("spawn").Pool(processes) as pool:
            parts = pool.map(_client_process, jobs)
    latencies = [x for part in parts for x in part["latencies"]]
    statuses: dict[str, int] = {}
    for part in parts:
        for key, n in part["statuses"].items():
            statuses[key] = statuses.get(key, 0) + n
    wall = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    ok = statuses.get("200", 0)
    cpu = sum(p["cpu_s"] for p in parts)  # warm-up and set-up included: an upper bound
    sent = len(latencies) + warmup
    return {
        "requests": len(latencies), "ok": ok, "errors": len(latencies) - ok,
        "statuses": statuses, "wall_s": round(wall, 3),
        "requests_per_s": round(ok / wall, 1) if wall > 0 else 0.0,
        "images_per_s": round(ok * per_request / wall, 1) if wall > 0 else 0.0,
        "p50_ms": round(1000 * percentile(latencies, 50), 2),
        "p90_ms": round(1000 * percentile(latencies, 90), 2),
        "p99_ms": round(1000 * percentile(latencies, 99), 2),
        "max_ms": round(1000 * max(latencies), 2) if latencies else None,
        "client": client, "client_cpu_s": round(cpu, 3),
        "client_cpu_ms_per_request": round(1000 * cpu / sent, 4) if sent else None,
        "client_cpu_util": round(cpu / (wall * processes), 3) if wall > 0 else None,
        "client_max_requests_per_s": round(processes * sent / cpu) if cpu > 0 else None,
    }


# ---- self-contained inputs (a bare GPU machine) ---------------------------------------------
def prepare(root: Path, n: int) -> tuple[Path, Path]:
    """``root/images``: ``n`` real-looking JPEGs of varied sizes (``gpu_bench.make_images``,
    its two deliberately broken files removed); ``root/resnet18_224.pth``: a resnet18 for
    those 8 classes with seeded random weights, ImageNet preprocessing (resize 256, center
    crop 224). Throughput does not depend on the weights. Both are reused when present."""
    images, model = root / "images", root / "resnet18_224.pth"
    if not images.is_dir():
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from gpu_bench import make_images

        make_images(images, n)
        for bad in images.rglob("zz_*"):
            bad.unlink()
    if not model.exists():
        import torch

        from pochitrain.meta import ModelMeta
        from pochitrain.checkpoint import save_checkpoint
        from pochitrain.models import build_model
        from pochitrain.preprocess import Preprocess

        classes = sorted(d.name for d in images.iterdir() if d.is_dir())
        torch.manual_seed(0)
        net = build_model("resnet18", len(classes)).eval()
        pre = Preprocess(input_size=[224, 224], resize=[256], center_crop=[224, 224])
        save_checkpoint(model, net, ModelMeta(classes, pre, model_name="resnet18"))
    return images, model


# ---- server ------------------------------------------------------------------------------
def server_metrics(url: str) -> dict[str, float]:
    import httpx

    try:
        text = httpx.get(f"{url.rstrip('/')}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        for name in ("pochi_batch_size_sum", "pochi_batch_size_count",
                     "pochi_queue_rejected_total", "pochi_images_total"):
            if line.startswith(name + " "):
                out[name] = float(line.split()[-1])
    if out.get("pochi_batch_size_count"):
        out["mean_batch"] = round(out["pochi_batch_size_sum"] / out["pochi_batch_size_count"], 2)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: str, serve_args: str, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pochitrain.cli.main", "serve", model, "--port", str(port),
           *shlex.split(serve_args)]
    print("starting:", " ".join(shlex.quote(c) for c in cmd), f"(log: {log})", flush=True)
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout: float,
                 log: Path | None = None) -> None:
    """Until /api/v1/health answers and, for a server we started, its banner is out: with
    --workers the banner waits for every worker, where one healthy answer does not."""
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode} before it was ready")
        try:
            banner = log is None or "/api/v1/predict" in log.read_text(errors="replace")
            if banner and httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"{url}/api/v1/health did not answer within {timeout:g} s")


def stop_server(proc: subprocess.Popen, timeout: float = 60.0) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return -9


def _workers(serve_args: str) -> int:
    words = shlex.split(serve_args)
    for i, word in enumerate(words):
        if word.startswith("--workers="):
            return int(word.split("=", 1)[1])
        if word == "--workers" and i + 1 < len(words):
            return int(words[i + 1])
    return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--model", help="start 'pochi serve MODEL' here as a subprocess")
    ap.add_argument("--serve-args", default="", help='options for pochi serve, e.g. '
                    '"--device cuda --max-batch 1" (with --model)')
    ap.add_argument("--port", type=int, default=0, help="port for --model (default: free)")
    ap.add_argument("--server-log", default=None, help="server output file (with --model)")
    ap.add_argument("--images", default=None, help="folder of .jpg/.png/.webp (recursive)")
    ap.add_argument("--prepare", default=None, metavar="DIR",
                    help="write DIR/images (JPEGs) and DIR/resnet18_224.pth (resnet18, "
                    "224x224) unless present; they are the default --images and --model")
    ap.add_argument("--prepare-images", type=int, default=2000, help="JPEGs for --prepare")
    ap.add_argument("--max-files", type=int, default=2000, help="images held in memory")
    ap.add_argument("--concurrency", type=int, default=64, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=10000, help="measured requests (total)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="unmeasured requests first (default: 2 x concurrency)")
    ap.add_argument("--images-per-request", type=int, default=1, help="files per multipart "
                    "upload (default: 1)")
    ap.add_argument("--body", choices=("multipart", "image"), default="multipart",
                    help="multipart upload (default) or the image as the request body")
    ap.add_argument("--procs", "--processes", dest="processes", type=int, default=None,
                    help="client processes (default: concurrency / 16, 1..8)")
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw",
                    help="raw: pre-built HTTP/1.1 requests on asyncio streams (default, "
                    "cheapest); httpx: httpx.AsyncClient")
    ap.add_argument("--top-k", type=int, default=1, help="top_k asked for")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, s")
    ap.add_argument("--ready-timeout", type=float, default=300.0,
                    help="seconds to wait for the server's /api/v1/health")
    ap.add_argument("--label", default="", help="a name for this run in the JSON")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.body == "image" and args.images_per_request != 1:
        ap.error("--body image sends one image per request")

    if args.prepare:
        made_images, made_model = prepare(Path(args.prepare), args.prepare_images)
        args.images = args.images or str(made_images)
        if not args.url:
            args.model = args.model or str(made_model)
    if not (args.url or args.model) or not args.images:
        ap.error("give --url or --model (or --prepare DIR), and --images")
    files = list_images(Path(args.images), args.max_files)
    processes = args.processes or max(1, min(8, args.concurrency // 16))
    warmup = 2 * args.concurrency if args.warmup is None else args.warmup
    proc = None
    exit_code = None
    log: Path | None = None
    if args.model:
        port = args.port or free_port()
        url = f"http://127.0.0.1:{port}"
        log = Path(args.server_log or tempfile.mkstemp(prefix="pochi_serve_", suffix=".log")[1])
        proc = start_server(args.model, args.serve_args, port, log)
    else:
        url = args.url.rstrip("/")
    try:
        wait_healthy(url, proc, args.ready_timeout, log if proc is not None else None)
        import httpx

        info = httpx.get(f"{url}/api/v1/model-info", timeout=10).json()
        before = server_metrics(url)
        result = run_load(url, files, args.concurrency, args.requests, warmup,
                          args.images_per_request, args.body, processes, args.top_k,
                          args.timeout, args.client)
        after = server_metrics(url)
    finally:
        if proc is not None:
            exit_code = stop_server(proc)
    batches = after.get("pochi_batch_size_count", 0) - before.get("pochi_batch_size_count", 0)
    images = after.get("pochi_batch_size_sum", 0) - before.get("pochi_batch_size_sum", 0)
    result.update({
        "label": args.label, "url": url, "model": info.get("model_file"),
        "backend": info.get("backend"), "device": info.get("device"),
        "input_size": info.get("input_size"), "pipeline": info.get("pipeline"),
        "max_batch": info.get("max_batch"), "max_wait_ms": info.get("max_wait_ms"),
        "queue": info.get("queue"), "concurrency": args.concurrency,
        "images_per_request": args.images_per_request, "body": args.body,
        "client_processes": processes, "files": len(files),
        "mean_batch": round(images / batches, 2) if batches else None,
        "server_exit_code": exit_code, "serve_args": args.serve_args,
        "workers": _workers(args.serve_args) if args.model else None,
        "cpu_count": os.cpu_count(),
    })
    print(f"{args.label or result['model']}: {result['requests_per_s']} req/s, "
          f"{result['images_per_s']} img/s, p50 {result['p50_ms']} ms, p90 {result['p90_ms']} "
          f"ms, p99 {result['p99_ms']} ms, errors {result['errors']} {result['statuses']}, "
          f"mean batch {result['mean_batch']}, concurrency {args.concurrency}, client CPU "
          f"{result['client_cpu_ms_per_request']} ms/request ({processes} procs "
          f"{100 * (result['client_cpu_util'] or 0):.0f}% busy, could issue "
          f"{result['client_max_requests_per_s']} req/s)"
          + (f", server exit {exit_code}" if proc is not None else ""), flush=True)
    if (result["client_cpu_util"] or 0) > 0.8:
        print(f"warning: the client processes were {100 * result['client_cpu_util']:.0f}% busy: "
              "the load generator may be the limit; give it more --procs", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if result["errors"] == 0 and exit_code in (None, 0) else 1


if __name__ == "__main__":
    sys.exit(main())
