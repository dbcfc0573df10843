"""Issue 14 on one GPU: end-to-end inference for every runtime, the input stage, batch-1
latency and whole-command wall time. Run on the GPU machine from the source tree::

    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 benchmarks/infer_gpu_bench.py --out /tmp/out

Writes ``infer_gpu.md`` and ``infer_gpu.json`` into ``--out``. Sections that cannot run
(e.g. no onnxruntime-gpu) are reported as skipped with the reason; one failing section does
not stop the others. Models are seeded, untrained resnet18 / resnet50 at 224x224 (resize 256,
crop 224, ImageNet mean/std): throughput does not depend on the weights, and agreement is
measured between runtimes on the same weights.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RESULTS: dict[str, Any] = {"sections": {}}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def section(name: str):
    def wrap(fn):
        def run(*args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            try:
                RESULTS["sections"][name] = {"status": "ok", **(fn(*args, **kwargs) or {})}
            except Exception as exc:  # noqa: BLE001 - report and go on
                RESULTS["sections"][name] = {"status": "failed",
                                             "error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
            RESULTS["sections"][name]["seconds"] = round(time.perf_counter() - start, 1)
            log(f"{name}: {json.dumps(RESULTS['sections'][name])[:600]}")
        return run
    return wrap


def make_models(folder: Path) -> dict[str, Path]:
    import torch

    from pochitrain.meta import ModelMeta
    from pochitrain.checkpoint import save_checkpoint
    from pochitrain.models import build_model
    from pochitrain.preprocess import Preprocess

    pre = Preprocess(input_size=[224, 224], resize=[256], center_crop=[224, 224])
    out = {}
    for name in ("resnet18", "resnet50"):
        torch.manual_seed(0)
        model = build_model(name, 8).eval()
        path = folder / name / "models" / f"{name}.pth"
        path.parent.mkdir(parents=True, exist_ok=True)
        classes = [f"p{p}_q{q}" for p in range(2) for q in range(4)]  # make_images folders
        save_checkpoint(path, model, ModelMeta(classes, pre, name))
        out[name] = path
    return out


def _rates(outcome: Any) -> dict[str, float]:
    r = outcome.result
    return {"images": r.measured, "pure_img_s": round(r.images_per_second(r.pure_seconds), 1),
            "e2e_img_s": round(r.images_per_second(r.e2e_seconds), 1),
            "e2e_over_pure": round(r.pure_seconds / r.e2e_seconds, 3) if r.e2e_seconds else 0.0}


def _gpu_rate(work: Any, images: int) -> float:
    """Images/s of ``work()`` (GPU work, synchronized), timed on its second run: the first
    pays warm-up and the page cache."""
    import torch

    for _ in range(2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        work()
        torch.cuda.synchronize()
        rate = images / (time.perf_counter() - start)
    return round(rate, 1)


@section("input stage alone (decode + resize + normalize, batch 256)")
def input_stage(data: Path) -> dict[str, Any]:
    import torch

    from pochitrain.data import scan_image_folder
    from pochitrain.inference.gpu_preprocess import GpuBatches
    from pochitrain.inference.gpu_resize import resize_batch
    from pochitrain.preprocess import Preprocess

    pp = Preprocess(input_size=[224, 224], resize=[256], center_crop=[224, 224])
    gb = GpuBatches(pp, "cuda")
    samples = scan_image_folder(data).samples
    out: dict[str, Any] = {"decoder": gb.describe()}
    for _ in range(2):
        start, n = time.perf_counter(), 0
        for _batch, paths, *_ in gb(samples, 256):
            n += len(paths)
        torch.cuda.synchronize()
        out["pipeline_img_s"] = round(n / (time.perf_counter() - start), 1)
    os.environ["POCHI_GPU_RESIZE"] = "matmul"  # the previous resize, for comparison
    start, n = time.perf_counter(), 0
    for _batch, paths, *_ in gb(samples, 256):
        n += len(paths)
    torch.cuda.synchronize()
    out["pipeline_with_matmul_resize_img_s"] = round(n / (time.perf_counter() - start), 1)
    del os.environ["POCHI_GPU_RESIZE"]
    datas = [p.read_bytes() for p, _ in samples][:1024]
    def decode_all() -> None:
        for i in range(0, len(datas), 256):
            gb._decode_many(datas[i:i + 256])

    out["decode_alone_img_s"] = _gpu_rate(decode_all, len(datas))
    images = gb._decode_many(datas[:256])
    dest = torch.empty((len(images), 3, 224, 224), device="cuda")

    def resize_ten() -> None:
        for _ in range(10):
            resize_batch(images, pp, dest)

    os.environ["POCHI_GPU_RESIZE"] = "matmul"
    out["resize_matmul_alone_img_s"] = _gpu_rate(resize_ten, 10 * len(images))
    matmul = dest.clone()
    del os.environ["POCHI_GPU_RESIZE"]
    from pochitrain.inference.gpu_preprocess import normalize_, resize_path, to_batch

    out["resize_path"] = resize_path(pp, "cuda")

    def fused_ten() -> None:
        for _ in range(10):
            to_batch(images, pp, dest)

    out["resize_fused_alone_img_s"] = _gpu_rate(fused_ten, 10 * len(images))
    normalize_(matmul, pp)
    std = torch.tensor(pp.std, device="cuda").view(1, 3, 1, 1)
    delta = (dest - matmul).abs() * std * 255
    out["fused_vs_matmul"] = {"max_grey_levels": round(float(delta.max()), 3),
                              "share_differing": round(float((delta > 0.5).float().mean()), 6)}
    # the same, for a fixed-size batch in bf16 straight from the kernels (no float32 batch)
    dest16 = torch.empty((len(images), 3, 224, 224), device="cuda", dtype=torch.bfloat16)

    def fused_bf16() -> None:
        for _ in range(10):
            to_batch(images, pp, dest16)

    out["resize_fused_bf16_alone_img_s"] = _gpu_rate(fused_bf16, 10 * len(images))
    # stage costs inside the pipeline, one thread, no overlap: read, decode, resize
    import threading  # noqa: F401 - documents that the pipeline itself is threaded
    from concurrent.futures import ThreadPoolExecutor

    from pochitrain.inference.gpu_preprocess import _read

    paths = [p for p, _ in samples][:1024]
    with ThreadPoolExecutor(gb.workers) as pool:
        t0 = time.perf_counter()
        read = list(pool.map(_read, paths))
        out["read_and_check_img_s"] = round(len(paths) / (time.perf_counter() - t0), 1)
    t0 = time.perf_counter()
    for i in range(0, len(read), 256):
        imgs = gb._decode_many([r[1] for r in read[i:i + 256] if r[0] == "jpeg"])
        to_batch(imgs, pp, torch.empty((len(imgs), 3, 224, 224), device="cuda"))
    torch.cuda.synchronize()
    out["decode_then_resize_serial_img_s"] = round(len(read) / (time.perf_counter() - t0), 1)
    # how pixels differ from the CPU (PIL) pipeline: the same 64 images through both
    from pochitrain.data import open_rgb

    diffs = []
    for batch, paths, *_ in gb(samples[:64], 64):
        cpu = torch.stack([torch.from_numpy(pp(open_rgb(p))) for p in paths]).cuda()
        diffs.append((batch.float() - cpu).abs())
    d = torch.cat(diffs)
    std = torch.tensor(pp.std, device="cuda").view(1, 3, 1, 1)
    grey = d * std * 255  # back to 0..255 grey levels
    out["pixels_vs_pil"] = {"max_grey_levels": round(float(grey.max()), 2),
                            "mean_grey_levels": round(float(grey.mean()), 4),
                            "share_differing": round(float((grey > 0.5).float().mean()), 5)}
    return out


@section("pochi infer (PyTorch) end to end")
def torch_e2e(models: dict[str, Path], data: Path, out_dir: Path) -> dict[str, Any]:
    from pochitrain.pipeline.infer import infer

    rows = {}
    for name, path in models.items():
        for precision, bs in (("bf16", 256), ("fp32", 256), ("bf16", 64)):
            for pipeline in ("gpu", "cpu") if (precision, bs) == ("bf16", 256) else ("gpu",):
                key = f"{name} {precision} b{bs} {pipeline}"
                o = infer(path, data=data, output=out_dir / key.replace(" ", "_"), batch_size=bs,
                          precision=precision, channels_last=True, pipeline=pipeline,
                          progress=False)
                rows[key] = _rates(o)
                log(f"  {key}: {rows[key]}")
    return {"rows": rows}


@section("ONNX Runtime CUDA (IOBinding + GPU pipeline) end to end")
def ort_e2e(models: dict[str, Path], data: Path, out_dir: Path) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    from pochitrain.pipeline.export_onnx import export_onnx
    from pochitrain.pipeline.infer import infer

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError(f"onnxruntime {ort.__version__} has no CUDA provider here")
    onnx_path = export_onnx(models["resnet18"], verify=False, progress=False,
                            overwrite=True).path
    rows: dict[str, Any] = {"onnxruntime": ort.__version__}
    preds = {}
    for providers, pipeline, bs in ((["cuda"], "gpu", 64), (["cuda"], "gpu", 256),
                                    (["cuda"], "cpu", 64), (["cpu"], "cpu", 64)):
        key = f"{providers[0]} {pipeline} b{bs}"
        o = infer(onnx_path, data=data, output=out_dir / f"ort_{key.replace(' ', '_')}",
                  batch_size=bs, providers=providers, pipeline=pipeline, progress=False)
        rows[key] = _rates(o)
        preds[key] = dict(zip(map(str, o.result.paths), o.result.preds, strict=True))
        log(f"  {key}: {rows[key]}")
    ref = preds["cpu cpu b64"]
    for key, p in preds.items():
        common = [k for k in ref if k in p]
        rows[key]["top1_agreement_with_cpu_provider"] = round(
            float(np.mean([p[k] == ref[k] for k in common])), 5)
    return {"rows": rows}


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _ort_has_cuda() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@section("whole commands, wall time (second run)")
def commands(models: dict[str, Path], data: Path, out_dir: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # "a second run, so bytecode is cached": where site-packages is read-only (the GPU
    # machine), Python recompiles every module on every run unless the cache lives elsewhere
    env.setdefault("PYTHONPYCACHEPREFIX", "/tmp/pochi_pycache")
    py = sys.executable
    rows = {}
    pth = models["resnet18"]
    onnx_path = pth.with_suffix(".onnx")
    if not onnx_path.exists():
        from pochitrain.pipeline.export_onnx import export_onnx

        export_onnx(pth, verify=False, progress=False)
    runs = {"pochi infer resnet18.pth": [py, "-m", "pochitrain.cli.main", "infer", str(pth)],
            "infer-onnx resnet18.onnx": [py, "-m", "pochitrain.cli.main", "infer-onnx",
                                         str(onnx_path)],
            "pochi --help": [py, "-m", "pochitrain.cli.main", "--help"]}
    for label, cmd in runs.items():
        if "onnx" in label and (not onnx_path.exists() or not _ort_has_cuda()):
            continue  # CPU onnxruntime: its time would be CPU inference, not start-up
        times = []
        for i in range(3):
            extra = [] if "--help" in cmd else ["--data", str(data), "--quiet", "-o",
                                                 str(out_dir / f"cmd_{len(rows)}_{i}")]
            times.append(_wall(cmd + extra, env))
        rows[label] = {"first_s": round(times[0], 2), "later_s": round(min(times[1:]), 2)}
        log(f"  {label}: {rows[label]}")
    return {"rows": rows}


@section("where a command's time goes (cProfile of one later run)")
def profile_commands(models: dict[str, Path], data: Path, out_dir: Path) -> dict[str, Any]:
    import pstats

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rows = {}
    pth = models["resnet18"]
    for label, verb, model in (("pochi infer .pth", "infer", pth),
                               ("infer-onnx", "infer-onnx", pth.with_suffix(".onnx"))):
        if not model.exists():
            continue
        prof = out_dir / f"{verb}.prof"
        cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "pochitrain.cli.main",
               verb, str(model), "--data", str(data), "--quiet", "-o",
               str(out_dir / f"prof_{verb}")]
        wall = _wall(cmd, env)
        stats = pstats.Stats(str(prof))
        top = sorted(((v[3], f"{k[0].split('site-packages/')[-1]}:{k[2]}")
                      for k, v in stats.stats.items()  # type: ignore[attr-defined]
                      if "pochitrain" in k[0] or k[2] == "<module>"), reverse=True)[:30]
        rows[label] = {"wall_s": round(wall, 2),
                       "top_cumulative_s": [[round(t, 2), name] for t, name in top]}
    return {"rows": rows}


@section("batch-1 latency, end to end (serial: read, nvJPEG, resize, model, logits)")
def latency(models: dict[str, Path], data: Path) -> dict[str, Any]:
    import torch

    from pochitrain.data import scan_image_folder
    from pochitrain.inference.gpu_preprocess import GpuBatches, to_batch
    from pochitrain.inference.torch_runner import TorchOptions, TorchRunner
    from pochitrain.checkpoint import load_model

    model, meta = load_model(models["resnet18"], "cuda")
    pp = meta.preprocess
    gb = GpuBatches(pp, "cuda")
    paths = [p for p, _ in scan_image_folder(data).samples][:600]
    rows = {}
    for label, opts in (("bf16 cuda-graph", TorchOptions("bf16", True, True)),
                        ("bf16 eager", TorchOptions("bf16", True, False)),
                        ("fp32 eager", TorchOptions("fp32", False, False))):
        runner = TorchRunner(model, "cuda", opts)
        dest = torch.empty((1, 3, 224, 224), device="cuda")
        times = []
        for i, path in enumerate(paths):
            start = time.perf_counter()
            image = gb._decode_many([path.read_bytes()])
            to_batch(image, pp, dest)
            runner.run(dest)
            if i >= 100:  # warm-up (graph capture, cuDNN choice) excluded
                times.append(1000 * (time.perf_counter() - start))
        q = statistics.quantiles(times, n=100)
        rows[label] = {"p50_ms": round(q[49], 3), "p99_ms": round(q[98], 3),
                       "mean_ms": round(statistics.fmean(times), 3), "images": len(times)}
        log(f"  {label}: {rows[label]}")
    return {"rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/infer_gpu_bench")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--data", default="/tmp/pochi_infer_bench")
    ap.add_argument("--skip", nargs="*", default=[], help="section numbers to skip (1-6)")
    args = ap.parse_args()
    import torch
    from gpu_bench import make_images

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    RESULTS["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"
    RESULTS["torch"] = torch.__version__
    data = make_images(Path(args.data), args.images)
    for broken in data.rglob("zz_*"):
        broken.unlink()  # the input-stage figures count decodable images only
    models = make_models(Path(args.data + "_models"))
    work = Path(args.data + "_results")
    work.mkdir(parents=True, exist_ok=True)
    steps = [lambda: input_stage(data), lambda: torch_e2e(models, data, work),
             lambda: ort_e2e(models, data, work), lambda: commands(models, data, work),
             lambda: latency(models, data), lambda: profile_commands(models, data, work)]
    for i, step in enumerate(steps, 1):
        if str(i) not in args.skip:
            step()
    (out / "infer_gpu.json").write_text(json.dumps(RESULTS, indent=2))
    lines = [f"# infer_gpu_bench on {RESULTS['gpu']} (torch {RESULTS['torch']})", ""]
    for name, sec in RESULTS["sections"].items():
        lines += [f"## {name}", "", "```", json.dumps(sec, indent=2), "```", ""]
    (out / "infer_gpu.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
