"""JPEG decode alone on the GPU: torchvision's batched nvJPEG against nvImageCodec's backends.

Run on the GPU machine after ``infer_gpu_bench.py`` made its images (or pass ``--data``)::

    PYTHONPATH=.:/root/site python3 benchmarks/decode_probe.py --json /tmp/decode.json

nvImageCodec (``nvidia-nvimgcodec-cu13`` + ``nvidia-nvjpeg``) is optional: without it only the
torchvision row is measured. Each row: images/s over 1,024 JPEGs in batches of 256 (best of
3), and how its pixels differ from torchvision's decode of the same files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _rate(fn: Any, n: int) -> float:
    import torch

    fn()  # first call: handles, buffers
    best = float("inf")
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return round(n / best, 1)


def _threads(nvimgcodec: Any, blobs: list[bytes]) -> dict[str, Any]:
    """The hardware decoder fed by 1, 2 and 4 threads, each with its own Decoder and CUDA
    stream, over the batches in turn: does the engine have room past one caller?"""
    import threading

    import torch

    params = nvimgcodec.DecodeParams(apply_exif_orientation=False,
                                     color_spec=nvimgcodec.ColorSpec.SRGB,
                                     sample_format=nvimgcodec.SampleFormat.P_RGB)
    backends = [nvimgcodec.Backend(nvimgcodec.BackendKind.HW_GPU_ONLY)]
    streams = [nvimgcodec.CodeStream(b) for b in blobs]
    batches = [streams[i:i + 256] for i in range(0, len(streams), 256)] * 4
    rows: dict[str, Any] = {}
    for k in (1, 2, 4):
        decs = [nvimgcodec.Decoder(backends=backends) for _ in range(k)]
        cstreams = [torch.cuda.Stream() for _ in range(k)]

        def work(j: int, k: int = k, decs: list[Any] = decs,
                 cstreams: list[Any] = cstreams) -> None:
            for b in batches[j::k]:
                decs[j].decode(b, params=params, cuda_stream=cstreams[j].cuda_stream)
            cstreams[j].synchronize()

        for j in range(k):  # first calls: handles, buffers
            decs[j].decode(batches[0][:8], params=params, cuda_stream=cstreams[j].cuda_stream)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=work, args=(j,)) for j in range(k)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows[f"{k}_threads_img_s"] = round(sum(map(len, batches)) / (time.perf_counter() - t0), 1)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/tmp/pochi_infer_bench")
    ap.add_argument("--json", default=None)
    ap.add_argument("--nvimg-path", default="/root/nvimg",
                    help="folder the nvImageCodec and nvJPEG wheels were installed into")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    # its wheel ships a regular ``nvidia`` package: keep it off the global path (torch's
    # own ``nvidia`` libraries) and import it before anything else imports ``nvidia``
    sys.path.insert(0, args.nvimg_path)
    try:
        from nvidia import nvimgcodec
    except ImportError as e:
        nvimgcodec, missing = None, str(e)
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    paths = sorted(Path(args.data).rglob("*.jpg"))[:1024]
    blobs = [p.read_bytes() for p in paths]
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    out: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "images": len(blobs)}

    def tv() -> list[Any]:
        res: list[Any] = []
        for i in range(0, len(tensors), 256):
            res += decode_jpeg(tensors[i:i + 256], mode=ImageReadMode.RGB, device="cuda")
        return res

    out["torchvision_nvjpeg_img_s"] = _rate(tv, len(blobs))
    ref = tv()
    if nvimgcodec is None:
        out["nvimgcodec"] = f"not installed ({missing})"
    else:
        params = nvimgcodec.DecodeParams(apply_exif_orientation=False,
                                         color_spec=nvimgcodec.ColorSpec.SRGB,
                                         sample_format=nvimgcodec.SampleFormat.P_RGB)
        streams = [nvimgcodec.CodeStream(b) for b in blobs]
        for label, kind in (("hw", "HW_GPU_ONLY"), ("cuda", "GPU_ONLY"),
                            ("hybrid", "HYBRID_CPU_GPU"), ("all", None)):
            try:
                backends = None if kind is None else [
                    nvimgcodec.Backend(getattr(nvimgcodec.BackendKind, kind))]
                dec = nvimgcodec.Decoder(backends=backends)
                stream = torch.cuda.current_stream().cuda_stream

                def run(dec: Any = dec, stream: int = stream) -> list[Any]:
                    res: list[Any] = []
                    for i in range(0, len(streams), 256):
                        res += dec.decode(streams[i:i + 256], params=params, cuda_stream=stream)
                    return res

                row: dict[str, Any] = {"img_s": _rate(run, len(blobs))}
                got = run()
                row["failed"] = sum(g is None for g in got)
                diffs = [(torch.from_dlpack(g).to(torch.int16) - r.to(torch.int16)).abs()
                         for g, r in zip(got[:64], ref[:64], strict=True) if g is not None]
                if diffs:
                    row["max_levels_vs_torchvision"] = int(max(int(d.max()) for d in diffs))
                    row["mean_levels_vs_torchvision"] = round(
                        float(sum(float(d.float().mean()) for d in diffs) / len(diffs)), 4)
                out[f"nvimgcodec_{label}"] = row
            except Exception as e:  # noqa: BLE001 - a probe: record what failed and go on
                out[f"nvimgcodec_{label}"] = f"{type(e).__name__}: {e}"[:300]
    if nvimgcodec is not None and isinstance(out.get("nvimgcodec_hw"), dict):
        out["nvimgcodec_hw_threads"] = _threads(nvimgcodec, blobs)
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
