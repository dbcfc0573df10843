"""Where the GPU pipeline's host-side read stage spends its time, per file, on this machine.

    PYTHONPATH=. python3 benchmarks/read_probe.py [--data DIR]

Prints images/s for: reading alone (readinto, Path.read_bytes, os.read), the JPEG checks alone
on bytes in memory, and the whole ``_read`` step in a thread pool of 1, 4 and 16 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rate(fn, items) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    for it in items:
        fn(it)
    return round(len(items) / (time.perf_counter() - t0), 1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/pochi_infer_bench")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from pochitrain.inference import gpu_preprocess as gp
    from pochitrain.inference.jpeg_header import read_header

    paths = sorted(Path(args.data).rglob("*.jpg"))[:1024]
    out: dict[str, object] = {"files": len(paths),
                              "mean_kb": round(sum(p.stat().st_size for p in paths)
                                               / len(paths) / 1024, 1)}
    for p in paths:
        p.read_bytes()  # page cache

    def raw(p: Path) -> bytes:
        fd = os.open(p, os.O_RDONLY)
        try:
            return os.read(fd, 1 << 24)
        finally:
            os.close(fd)

    gp.read_file(paths[0])  # loads torchvision's image ops
    out["read_file_img_s"] = rate(gp.read_file, paths)
    out["read_file_python_img_s"] = rate(gp.read_file_python, paths)
    out["read_bytes_img_s"] = rate(Path.read_bytes, paths)
    out["os_read_img_s"] = rate(raw, paths)
    out["stat_img_s"] = rate(os.stat, paths)
    datas = [gp.read_file_python(p) for p in paths]
    out["is_complete_jpeg_img_s"] = rate(gp.is_complete_jpeg, datas)
    out["read_header_img_s"] = rate(read_header, datas)
    out["reads_like_pil_img_s"] = rate(gp.nvjpeg_reads_like_pil, datas)
    out["_read_serial_img_s"] = rate(gp._read, paths)
    kinds = [gp._read(p)[0] for p in paths]
    out["kinds"] = {k: kinds.count(k) for k in set(kinds)}
    for n in (1, 4, 16):
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(gp._read, paths[:64]))
            t0 = time.perf_counter()
            list(pool.map(gp._read, paths))
            out[f"_read_pool{n}_img_s"] = round(len(paths) / (time.perf_counter() - t0), 1)
        with ThreadPoolExecutor(n) as pool:
            t0 = time.perf_counter()
            futs = [pool.submit(gp._read, p) for p in paths]
            for f in futs:
                f.result()
            out[f"_read_submit{n}_img_s"] = round(len(paths) / (time.perf_counter() - t0), 1)
    def group(ps: list[Path]) -> list[object]:
        return [gp._read(p) for p in ps]

    for n in (1, 2, 4, 16):
        for g in (16, 64):
            with ThreadPoolExecutor(n) as pool:
                t0 = time.perf_counter()
                futs = [pool.submit(group, paths[i:i + g]) for i in range(0, len(paths), g)]
                for f in futs:
                    f.result()
                out[f"_read_groups{g}_threads{n}_img_s"] = round(
                    len(paths) / (time.perf_counter() - t0), 1)
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
