"""Camera-sized JPEGs and a resnet18 checkpoint for the GPU benchmarks, and a profile of
where ``pochi infer``'s end-to-end time goes.

    python benchmarks/photos.py make DIR --images 50000 [--model resnet18.pth]
    python benchmarks/photos.py stages MODEL --data DIR [-b 32] [--precision bf16]
        [--channels-last]
    python benchmarks/photos.py timeline -- infer MODEL --data DIR [pochi infer options]
    python benchmarks/photos.py decode MODEL --data DIR [--beside LOAD ...]
        [--trace FILE.json.gz]
    CUDA_DEVICE_MAX_CONNECTIONS=32 python benchmarks/photos.py queues --data DIR [--sms N ...]

``make`` writes crops of about 500x375 from scikit-learn's two sample photos (random
position, mirrored at random, JPEG quality 90) into 10 class folders, in parallel, and a
resnet18 checkpoint (seeded random weights, Resize(256) + CenterCrop(224)) for those classes.

``stages`` runs the inference loop in this process, as ``pochi infer`` does with the GPU
input pipeline, with timers on each stage: the input pipeline alone, the model alone on a
blank batch, then the whole loop with the main thread's time split into waiting for a batch,
the runner's calls and the rest. It prints one JSON line per measurement.

``decode`` times nvJPEG (torchvision's ``decode_jpeg`` on CUDA, and nvImageCodec where it is
installed) on 4,096 files already in memory, batches of 256, alone and while another thread of
this process keeps a load running: the model (bf16, channels-last, batch 256, two batches
queued), the model as a CUDA graph, large matrix products, a Python loop (``--beside``: only
some of them). nvImageCodec also runs on a stream of the highest priority, and as 2, 4 and 8
decoders, each in a thread and on a stream of its own. ``--trace`` also writes a
torch.profiler trace of ``pochi infer``'s loop over the first 8,192 files.

``queues`` times the same decoder beside resnet18 (random weights, bf16, channels-last,
batch 256, two batches queued) in a thread, the model's stream on all SMs or on a green
context of ``--sms`` SMs; run it under ``CUDA_DEVICE_MAX_CONNECTIONS=N`` (CUDA's hardware
work queues) to compare.

``timeline`` runs one ``pochi`` command in this process and prints when (seconds since this
script started) its steps began and ended: imports, opening the model, the inference pass,
the result files, the exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

T0 = time.perf_counter()
CLASSES = [f"class_{i}" for i in range(10)]
CROP = (500, 375)


def _write_part(args: tuple[Path, int, int, int]) -> int:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    root, start, stop, seed = args
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    for i in range(start, stop):
        photo = photos[i % len(photos)]
        w = int(rng.integers(CROP[0] - 40, CROP[0] + 1))
        h = int(rng.integers(CROP[1] - 30, CROP[1] + 1))
        x = int(rng.integers(0, photo.width - w + 1))
        y = int(rng.integers(0, photo.height - h + 1))
        image = photo.crop((x, y, x + w, y + h))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image.save(root / CLASSES[i % len(CLASSES)] / f"img_{i:06d}.jpg", quality=90)
    return stop - start


def make_photos(root: Path, n: int) -> None:
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    step = 500
    parts = [(root, s, min(s + step, n), s) for s in range(0, n, step)]
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        done = sum(pool.map(_write_part, parts))
    print(json.dumps({"made": done, "folder": str(root)}), flush=True)


def make_model(path: Path) -> None:
    import torch

    from pochitrain.checkpoint import save_checkpoint
    from pochitrain.meta import ModelMeta
    from pochitrain.models import build_model
    from pochitrain.preprocess import Preprocess

    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES)).eval()
    pre = Preprocess(input_size=[224, 224], resize=[256], center_crop=[224, 224])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, ModelMeta(CLASSES, pre, model_name="resnet18"))


class Timed:
    """Wraps an iterator and adds the time spent in ``next`` to ``seconds``."""

    def __init__(self, items: Any) -> None:
        self.items, self.seconds = iter(items), 0.0

    def __iter__(self) -> Timed:
        return self

    def __next__(self) -> Any:
        start = time.perf_counter()
        try:
            return next(self.items)
        finally:
            self.seconds += time.perf_counter() - start

    def close(self) -> None:
        close = getattr(self.items, "close", None)
        if close is not None:
            close()


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def input_alone(batches: Any, samples: list[Any], batch_size: int) -> dict[str, Any]:
    start = time.perf_counter()
    n = 0
    for item in batches(samples, batch_size):
        n += len(item[1])
    _sync()
    wall = time.perf_counter() - start
    return {"what": "input pipeline alone", "images": n, "img_s": round(n / wall, 1)}


def model_alone(runner: Any, blank: Any, runs: int) -> dict[str, Any]:
    for _ in range(3):
        runner.run(blank)
    start = time.perf_counter()
    pure = sum(runner.run(blank)[1] for _ in range(runs))
    wall = time.perf_counter() - start
    n = runs * len(blank)
    return {"what": "model alone (blank batch)", "pure_img_s": round(n / pure, 1),
            "wall_img_s": round(n / wall, 1)}


def whole_loop(model: Any, folder: Any, batch_size: int, batches: Any) -> dict[str, Any]:
    from pochitrain.inference.loop import run_inference

    runner = model.runner
    timers: dict[str, Any] = {}
    calls = {"run": 0.0}
    real_run = runner.run

    def run(batch: Any) -> Any:
        start = time.perf_counter()
        try:
            return real_run(batch)
        finally:
            calls["run"] += time.perf_counter() - start

    def timed_batches(s: Any, n: int) -> Timed:
        timers["next"] = Timed(batches(s, n))
        return timers["next"]

    source = batches
    stage = {"decode": 0.0, "batch_of": 0.0}

    def timer(name: str, fn: Any) -> Any:
        def timed(*a: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*a)
            finally:
                stage[name] += time.perf_counter() - start
        return timed

    runner.run = run
    source.decoder.decode = timer("decode", source.decoder.decode)
    source.batch_of = timer("batch_of", source.batch_of)
    try:
        result = run_inference(runner, folder, model.preprocess, batch_size, model.class_names,
                               progress=False, batches=timed_batches)
    finally:
        del runner.run, source.decoder.decode, source.batch_of
    e2e = result.e2e_seconds
    n = len(result.preds)
    return {"what": "whole loop", "images": n, "e2e_img_s": round(n / e2e, 1),
            "pure_img_s": round(n / result.pure_seconds, 1),
            "e2e_over_pure": round(result.pure_seconds / e2e, 3),
            "main_wait_for_batch_s": round(timers["next"].seconds, 3),
            "main_in_runner_s": round(calls["run"], 3), "e2e_s": round(e2e, 3),
            "decode_thread_in_decode_s": round(stage["decode"], 3),
            "batch_thread_in_batch_of_s": round(stage["batch_of"], 3)}


def stages(args: argparse.Namespace) -> None:
    from pochitrain.data import remap_labels, scan_image_folder
    from pochitrain.inference.torch_runner import TorchOptions
    from pochitrain.model import open_model

    if args.input_priority is not None:
        from pochitrain.gpu_input import prefetcher

        prefetcher.STREAM_PRIORITY = args.input_priority
    if args.work_group is not None:
        from pochitrain.gpu_input import batches

        batches.WORK_GROUP = args.work_group
    if args.in_flight is not None:
        from pochitrain.inference import loop

        loop.IN_FLIGHT = args.in_flight
    options = TorchOptions(args.precision, args.channels_last)
    model = open_model(args.model, device=args.device, torch_options=options)
    folder = remap_labels(scan_image_folder(Path(args.data), "data"), model.class_names)
    samples = list(folder.samples)
    from pochitrain.gpu_input import GpuBatches

    source = GpuBatches(model.preprocess, args.device)  # on the CPU too (a check of this script)
    label = {"batch": args.batch_size, "precision": args.precision,
             "channels_last": args.channels_last, "input_priority": args.input_priority,
             "in_flight": args.in_flight, "work_group": args.work_group}
    blank = source.blank_batch(args.batch_size)
    rows = [model_alone(model.runner, blank, args.runs)]
    for _ in range(args.passes):
        rows.append(input_alone(source, samples, args.batch_size))
    for _ in range(args.passes):
        rows.append(whole_loop(model, folder, args.batch_size, source))
    for row in rows:
        print(json.dumps({**label, **row}), flush=True)


def _loads(model_path: Path) -> dict[str, Any]:
    """Loads for ``decode``: each runs in a thread until its event is set, counting."""
    import collections

    import torch

    from pochitrain.inference.torch_runner import TorchOptions
    from pochitrain.model import open_model

    blank = torch.zeros((256, 3, 224, 224), device="cuda")
    runners = {}
    for name, graph in (("model", False), ("model_graph", True)):
        runner = open_model(model_path, device="cuda", batch_size=256, torch_options=TorchOptions(
            "bf16", True, cuda_graph=graph)).runner
        for _ in range(5):
            runner.run(blank)
        runners[name] = runner

    def model(runner: Any) -> Any:
        def run(stop: Any, count: list[float]) -> None:
            queued: Any = collections.deque()
            while not stop.is_set():
                queued.append(runner.submit(blank))
                if len(queued) >= 2:
                    queued.popleft().result()
                    count[0] += 256
            while queued:
                queued.popleft().result()
        return run

    square = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

    def matmul(stop: Any, count: list[float]) -> None:
        with torch.cuda.stream(torch.cuda.Stream()):
            while not stop.is_set():
                for _ in range(5):
                    square @ square
                torch.cuda.current_stream().synchronize()
                count[0] += 5

    def python_loop(stop: Any, count: list[float]) -> None:
        while not stop.is_set():
            count[0] += 1

    return {"nothing": None, "model": model(runners["model"]),
            "model_graph": model(runners["model_graph"]), "matmul": matmul,
            "python_loop": python_loop}


def in_threads(n: int, make: Any) -> Any:
    """A decode function that splits each batch over ``n`` threads, each with ``make()``'s."""
    import concurrent.futures
    import threading

    pool = concurrent.futures.ThreadPoolExecutor(n)
    local = threading.local()

    def part_of(part: Any) -> Any:
        if not hasattr(local, "decode"):
            local.decode = make()
        return local.decode(part)

    def run(part: Any) -> Any:
        step = -(-len(part) // n)
        return [image for images in pool.map(part_of, [part[at:at + step] for at in range(
            0, len(part), step)]) for image in images]
    return run


def decode(args: argparse.Namespace) -> None:
    import threading

    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    files = sorted(Path(args.data).glob("*/*.jpg"))[:4096]
    data = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files]
    encoded = [bytes(d.numpy()) for d in data]
    decoders = {"torchvision": lambda part: decode_jpeg(part, mode=ImageReadMode.RGB,
                                                        device="cuda")}
    try:
        from nvidia import nvimgcodec  # type: ignore[import-not-found]

        hardware = nvimgcodec.Decoder(backends=[nvimgcodec.Backend(
            nvimgcodec.BackendKind.HW_GPU_ONLY)])

        def nvimgcodec_on(stream: Any, decoder: Any = hardware) -> Any:
            def run(part: Any) -> Any:
                images = [torch.as_tensor(image, device="cuda") for image
                          in decoder.decode(part, cuda_stream=stream.cuda_stream)]
                stream.synchronize()
                return images
            return run

        decoders["nvimgcodec"] = nvimgcodec_on(torch.cuda.current_stream())
        # the model's kernels queue at normal priority: whether the decoder's work, given a
        # stream of the highest priority, passes them
        decoders["nvimgcodec_high"] = nvimgcodec_on(torch.cuda.Stream(priority=-100))
        for n in (2, 4, 8):  # n decoders, each in its own thread on its own stream
            decoders[f"nvimgcodec_x{n}"] = in_threads(n, lambda: nvimgcodec_on(
                torch.cuda.Stream(), nvimgcodec.Decoder(backends=[nvimgcodec.Backend(
                    nvimgcodec.BackendKind.HW_GPU_ONLY)])))
    except (ImportError, RuntimeError) as exc:  # not installed, or no hardware decoder
        print(json.dumps({"decoder": "nvimgcodec", "skipped": repr(exc)[:200]}), flush=True)

    def one_pass(name: str) -> float:
        items = data if name == "torchvision" else encoded
        start = time.perf_counter()
        for at in range(0, len(items), 256):
            decoders[name](items[at:at + 256])
        torch.cuda.synchronize()
        return len(items) / (time.perf_counter() - start)

    for name in decoders:
        one_pass(name)  # start-up
    for load_name, load in _loads(args.model).items():
        for name in decoders:
            slow = load_name == "python_loop"  # under 2 % of the rate: one pass, one decoder
            if slow and name != "torchvision" or args.beside and load_name not in args.beside:
                continue
            stop, count = threading.Event(), [0.0]
            thread = threading.Thread(target=load, args=(stop, count), daemon=True)
            if load is not None:
                thread.start()
                time.sleep(0.3)
            start, counted = time.perf_counter(), count[0]
            rates = [round(one_pass(name)) for _ in range(1 if slow else 3)]
            load_rate = (count[0] - counted) / (time.perf_counter() - start)
            stop.set()
            if load is not None:
                thread.join()
            print(json.dumps({"decoder": name, "beside": load_name, "img_s": rates,
                              "load_per_s": round(load_rate, 1)}), flush=True)
    if args.trace is not None:
        trace(args)


def trace(args: argparse.Namespace) -> None:
    """torch.profiler over one pass of ``pochi infer``'s loop (bf16, channels-last, 256)."""
    import gzip
    import shutil

    from torch.profiler import ProfilerActivity, profile

    from pochitrain.data import remap_labels, scan_image_folder
    from pochitrain.gpu_input import GpuBatches
    from pochitrain.inference.loop import run_inference
    from pochitrain.inference.torch_runner import TorchOptions
    from pochitrain.model import open_model

    model = open_model(args.model, device="cuda", torch_options=TorchOptions("bf16", True))
    folder = remap_labels(scan_image_folder(Path(args.data), "data"), model.class_names)
    del folder.samples[8192:]
    source = GpuBatches(model.preprocess, "cuda")

    def one_pass() -> None:
        run_inference(model.runner, folder, model.preprocess, 256, model.class_names,
                      progress=False, batches=source)

    one_pass()  # start-up
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        one_pass()
    raw = Path(f"{args.trace}.tmp.json")  # the trace, gzipped into args.trace below
    prof.export_chrome_trace(str(raw))
    with open(raw, "rb") as src, gzip.open(args.trace, "wb") as dst:
        shutil.copyfileobj(src, dst)
    raw.unlink()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25), flush=True)


def queues(args: argparse.Namespace) -> None:
    """torchvision's nvJPEG in this thread beside resnet18 (bf16, channels-last, batch 256,
    two batches queued) in another, on a stream of its own or of a green context with
    ``--sms`` SMs; run under CUDA_DEVICE_MAX_CONNECTIONS=N to compare work queues."""
    import threading

    import torch
    import torchvision
    from torchvision.io import ImageReadMode, decode_jpeg

    files = sorted(Path(args.data).glob("*/*.jpg"))[:4096]
    datas = [torchvision.io.read_file(str(f)) for f in files]
    net = torchvision.models.resnet18().cuda().eval().to(memory_format=torch.channels_last)
    x = torch.randn(256, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    contexts: list[Any] = []  # a green context must outlive its stream

    def stream_on(sms: int | None) -> tuple[Any, Any]:
        """A stream for this thread, and what undoes it."""
        if sms is None:
            return torch.cuda.Stream(), None
        from torch.cuda.green_contexts import GreenContext

        make = getattr(GreenContext, "create", None)  # PyTorch 2.9-2.11; later: the class
        contexts.append(make(sms, 0) if make else GreenContext(num_sms=sms, device_id=0))
        if hasattr(contexts[-1], "Stream"):
            return contexts[-1].Stream(), None
        contexts[-1].set_context()  # older releases: this thread's current stream
        return torch.cuda.current_stream(), contexts[-1].pop_context

    def run_model(stop: threading.Event, count: list[int], sms: int | None) -> None:
        stream, undo = stream_on(sms)
        with torch.cuda.stream(stream), torch.inference_mode(), \
                torch.autocast("cuda", torch.bfloat16):
            queued: list[Any] = []
            while not stop.is_set():
                net(x)
                queued.append(torch.cuda.Event())
                queued[-1].record(stream)
                if len(queued) >= 2:
                    queued.pop(0).synchronize()
                count[0] += 256
            stream.synchronize()
        if undo is not None:
            undo()

    def decode_rate(seconds: float) -> float:
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for i in range(0, len(datas), 256):
                decode_jpeg(datas[i:i + 256], mode=ImageReadMode.RGB, device="cuda")
                n += len(datas[i:i + 256])
        torch.cuda.synchronize()
        return n / (time.perf_counter() - start)

    def beside(sms: int | None, decoding: bool) -> tuple[float | None, float]:
        stop, count = threading.Event(), [0]
        thread = threading.Thread(target=run_model, args=(stop, count, sms))
        thread.start()
        time.sleep(0.5)
        before, start = count[0], time.perf_counter()
        rate = decode_rate(3.0) if decoding else None
        if not decoding:
            time.sleep(2.0)
        model = (count[0] - before) / (time.perf_counter() - start)
        stop.set()
        thread.join()
        return rate, model

    queue_count = os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS", "8 (unset)")
    decode_rate(1.0)
    print(json.dumps({"queues": queue_count, "decoder_alone": round(decode_rate(3.0))}))
    for sms in [None, *args.sms]:
        _, alone = beside(sms, decoding=False)
        rate, model = beside(sms, decoding=True)
        print(json.dumps({"queues": queue_count, "model_sms": sms or "all",
                          "model_alone": round(alone), "decoder_beside": round(rate or 0),
                          "model_beside": round(model)}), flush=True)


def timeline(argv: list[str]) -> None:
    """The command's steps, timed from outside through the public names they call."""
    import pochitrain.pipeline.infer as verb  # imports torch: the "imports" step
    from pochitrain import reports
    from pochitrain.cli.main import main as pochi_main

    marks: list[tuple[str, float]] = [("imports done", time.perf_counter() - T0)]

    def mark(owner: Any, name: str) -> None:
        fn = getattr(owner, name)

        def timed(*a: Any, **k: Any) -> Any:
            marks.append((f"{name} start", time.perf_counter() - T0))
            try:
                return fn(*a, **k)
            finally:
                marks.append((f"{name} end", time.perf_counter() - T0))
        setattr(owner, name, timed)

    for owner, name in ((verb, "open_model"), (verb, "run_inference"),
                        (reports, "write_reports")):
        mark(owner, name)
    real_exit = os._exit

    def quick_exit(code: int) -> None:
        marks.append(("exit", time.perf_counter() - T0))
        print(json.dumps({"timeline": [(k, round(v, 3)) for k, v in marks]}), flush=True)
        real_exit(code)

    os._exit = quick_exit  # type: ignore[assignment]
    pochi_main(argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    make = sub.add_parser("make")
    make.add_argument("folder", type=Path)
    make.add_argument("--images", type=int, default=50_000)
    make.add_argument("--model", type=Path, default=None)
    prof = sub.add_parser("stages")
    prof.add_argument("model", type=Path)
    prof.add_argument("--data", required=True)
    prof.add_argument("-b", "--batch-size", type=int, default=32)
    prof.add_argument("--precision", default="fp32")
    prof.add_argument("--channels-last", action="store_true")
    prof.add_argument("--device", default="cuda")
    prof.add_argument("--runs", type=int, default=50)
    prof.add_argument("--passes", type=int, default=2)
    prof.add_argument("--work-group", type=int, default=None,
                      help="images decoded and resized at once at least (WORK_GROUP)")
    prof.add_argument("--in-flight", type=int, default=None,
                      help="batches queued on the runner at once (the loop's IN_FLIGHT)")
    prof.add_argument("--input-priority", type=int, default=None,
                      help="CUDA stream priority of the input's threads (prefetcher)")
    nvjpeg = sub.add_parser("decode")
    nvjpeg.add_argument("model", type=Path)
    nvjpeg.add_argument("--data", required=True)
    nvjpeg.add_argument("--trace", type=Path, default=None,
                        help="also write a torch.profiler trace of pochi infer's loop here")
    nvjpeg.add_argument("--beside", nargs="*", default=None,
                        choices=("nothing", "model", "model_graph", "matmul", "python_loop"),
                        help="only these loads (default: all)")
    queue = sub.add_parser("queues")
    queue.add_argument("--data", required=True)
    queue.add_argument("--sms", type=int, nargs="*", default=[124, 116, 80],
                       help="also with the model's stream on a green context of N SMs")
    line = sub.add_parser("timeline")
    line.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.what == "make":
        make_photos(args.folder, args.images)
        if args.model is not None:
            make_model(args.model)
    elif args.what == "decode":
        decode(args)
    elif args.what == "queues":
        queues(args)
    elif args.what == "timeline":
        timeline([a for a in args.command if a != "--"])
    else:
        stages(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
