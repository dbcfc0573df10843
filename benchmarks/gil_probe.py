"""Small, single-purpose GPU runs to profile under ``py-spy record --gil`` (which thread holds
the interpreter, doing what), one configuration per process.

    PYTHONPATH=. python3 benchmarks/gil_probe.py pipeline [--reads files|memory] [--chunk N]
    PYTHONPATH=. python3 benchmarks/gil_probe.py e2e --model resnet50 [--batch 256]
    PYTHONPATH=. python3 benchmarks/gil_probe.py decode [--procs 2]

``pipeline``: the GPU input pipeline alone over the data, ``--passes`` times; ``--reads memory``
serves every file from bytes read beforehand (the pipeline with a free read stage).
``e2e``: ``pipeline.infer`` as ``infer_gpu_bench.py`` runs it. ``decode``: nvJPEG batched
decode alone in ``--procs`` processes at once (does the hardware decoder scale past one
process?). Each prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _timed(owner: object, name: str, totals: dict[str, float]) -> None:
    """Wrap ``owner.name`` so the seconds spent inside it (all threads) add up in totals."""
    fn = getattr(owner, name)
    totals[name] = 0.0

    def wrapper(*a: object, **k: object) -> object:
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            totals[name] += time.perf_counter() - t0

    setattr(owner, name, wrapper)


def _pipeline(args: argparse.Namespace) -> dict[str, object]:
    import torch

    from pochitrain.data import scan_image_folder
    from pochitrain.inference import gpu_preprocess as gp
    from pochitrain.preprocess import Preprocess

    samples = scan_image_folder(Path(args.data)).samples * args.repeat
    if args.reads == "memory":  # a read thread served from memory (no reader process)
        os.environ["POCHI_READER"] = "thread"
        cache = {p: gp._read(p) for p, _ in samples}
        gp._read = cache.__getitem__  # type: ignore[assignment]
    if args.no_record_stream:  # what the per-image record_stream calls cost
        torch.Tensor.record_stream = lambda self, stream: None  # type: ignore[method-assign]
    totals: dict[str, float] = {}
    if args.stages:  # seconds inside each stage, summed over calls (threads overlap)
        _timed(gp, "_read", totals)
        _timed(gp.GpuBatches, "_decode_many", totals)
        _timed(gp.GpuBatches, "_assemble", totals)
    pp = Preprocess(input_size=[224, 224], resize=[256], center_crop=[224, 224])
    gb = gp.GpuBatches(pp, args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rates, steady, stages = [], [], []
    for _ in range(args.passes):
        totals.update(dict.fromkeys(totals, 0.0))
        start, n, first = time.perf_counter(), 0, None
        for _b, paths, *_ in gb(samples, args.batch):
            n += len(paths)
            if first is None:  # the pipeline's fill ends with the first batch
                first, n_first = time.perf_counter(), n
        sync()
        end = time.perf_counter()
        rates.append(round(n / (end - start), 1))
        if first is not None and n > n_first:
            steady.append(round((n - n_first) / (end - first), 1))
        if totals:
            stages.append({k: round(v / (end - start), 3) for k, v in totals.items()})
    out: dict[str, object] = {
        "probe": "pipeline", "reads": args.reads, "batch": args.batch, "images": len(samples),
        "read_threads": gb.workers, "img_s": rates, "steady_img_s": steady}
    if args.no_record_stream:
        out["record_stream"] = "off"
    if stages:
        out["busy_fraction_of_wall"] = stages
    return out


def _e2e(args: argparse.Namespace) -> dict[str, object]:
    from infer_gpu_bench import _rates, make_models

    from pochitrain.pipeline.infer import infer

    models = make_models(Path("/tmp/gil_probe_models"))
    rows = []
    outs = Path(tempfile.mkdtemp(prefix="gil_probe_"))
    for i in range(args.passes):
        o = infer(models[args.model], data=Path(args.data), output=outs / str(i),
                  batch_size=args.batch, precision="bf16", channels_last=True, pipeline="gpu",
                  progress=False)
        rows.append(_rates(o))
    return {"probe": "e2e", "model": args.model, "batch": args.batch, "rows": rows}


def _decode_worker(data: str, batch: int, passes: int, start: object, q: object) -> None:
    import torch

    from pochitrain.fastimport import import_torchvision

    import_torchvision()
    from torchvision.io import ImageReadMode, decode_jpeg

    paths = sorted(Path(data).rglob("*.jpg"))[:1024]
    tensors = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    tensors = [t for t in tensors if t[-2:].tolist() == [0xFF, 0xD9] and t.numel() > 1000]
    decode_jpeg(tensors[:8], mode=ImageReadMode.RGB, device="cuda")
    torch.cuda.synchronize()
    start.wait()  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    n = 0
    for _ in range(passes):
        for i in range(0, len(tensors), batch):
            try:
                decode_jpeg(tensors[i:i + batch], mode=ImageReadMode.RGB, device="cuda")
            except RuntimeError:
                continue
            n += len(tensors[i:i + batch])
    torch.cuda.synchronize()
    q.put((n, time.perf_counter() - t0))  # type: ignore[attr-defined]


def _decode(args: argparse.Namespace) -> dict[str, object]:
    ctx = mp.get_context("spawn")
    start, q = ctx.Barrier(args.procs + 1), ctx.Queue()
    procs = [ctx.Process(target=_decode_worker, args=(args.data, args.batch, args.passes,
                                                     start, q)) for _ in range(args.procs)]
    for p in procs:
        p.start()
    start.wait()
    got = [q.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    total = sum(n for n, _ in got)
    wall = max(s for _, s in got)
    return {"probe": "decode", "procs": args.procs, "batch": args.batch,
            "img_s": round(total / wall, 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("pipeline", "e2e", "decode"))
    ap.add_argument("--data", default="/tmp/pochi_infer_bench")
    ap.add_argument("--reads", choices=("files", "memory"), default="files")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=1,
                    help="pipeline: the file list this many times over (a steady rate)")
    ap.add_argument("--stages", action="store_true",
                    help="pipeline: time spent inside read, decode and assemble")
    ap.add_argument("--no-record-stream", action="store_true")
    ap.add_argument("--device", default="cuda", help="pipeline: cpu for a smoke run")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--procs", type=int, default=1)
    args = ap.parse_args()
    fn = {"pipeline": _pipeline, "e2e": _e2e, "decode": _decode}[args.what]
    print(json.dumps(fn(args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
