"""Benchmarks of the installed pochitrain, run through its commands.

    python benchmarks/run.py infer MODEL [MODEL ...] --data DIR [-b 32] [--repeat 3]
    python benchmarks/run.py serve MODEL --images DIR [--clients 8] [--processes 1]
        [--api multipart|original] [--requests 2000]
    python benchmarks/run.py train -c CONFIG [--epochs 3] [--gpus N]

--source TREE runs the commands on the pochitrain of the source tree TREE instead of the
installed one (to compare two trees, run once with each).

Each writes one CSV row per repetition to --out (default benchmark_results/), in a file
named after the configuration, e.g. infer_resnet18_b32_gpu.csv; the machine's description
(CPU, GPU, versions) is in every row. See docs/benchmarks.md for the published figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Place, device_tag, machine_columns, now, pochi, run_timed, write_rows

VERB_BY_SUFFIX = {".pth": "infer", ".onnx": "infer-onnx", ".engine": "infer-trt"}


def infer_row(model: Path, result_dir: Path, wall: float, rep: int) -> dict[str, object]:
    """One repetition, from the benchmark_result.json the infer command wrote."""
    result = json.loads((result_dir / "benchmark_result.json").read_text(encoding="utf-8"))
    metrics, options = result["metrics"], result["options"]
    return {"date": now(), "command": VERB_BY_SUFFIX[model.suffix], "model_file": str(model),
            "model_name": result["model_name"], "runtime": result["runtime"],
            "precision": result["precision"], "pipeline": result["pipeline"],
            "device": result["device"], "batch_size": options.get("batch_size"),
            "images": result["samples"]["measured_samples"], "repetition": rep,
            "pure_images_per_s": round(metrics["throughput_inference_ips"], 1),
            "e2e_images_per_s": round(metrics["throughput_e2e_ips"], 1),
            "pure_ms_per_image": metrics["avg_inference_ms"],
            "e2e_ms_per_image": metrics["avg_e2e_ms"],
            "accuracy_percent": metrics["accuracy_percent"], "command_wall_s": round(wall, 3)}


def bench_infer(args: argparse.Namespace, machine: dict[str, str], place: Place
                ) -> list[Path]:
    written = []
    for model in args.models:
        if model.suffix not in VERB_BY_SUFFIX:
            sys.exit(f"{model}: expected a .pth, .onnx or .engine file")
        rows: list[dict[str, object]] = []
        with tempfile.TemporaryDirectory(prefix="pochi_bench_") as tmp:
            for rep in range(-args.warmup_runs, args.repeat):
                out = Path(tmp) / f"run_{rep + args.warmup_runs}"
                command = pochi(VERB_BY_SUFFIX[model.suffix], model, "--data", args.data,
                                "--output", out, "--batch-size", args.batch_size,
                                "--benchmark-json", "--quiet", *shlex.split(args.args))
                wall = run_timed(command, place)
                if rep >= 0:  # warm-up runs fill the page and bytecode caches, unrecorded
                    rows.append({**infer_row(model, out, wall, rep + 1), **machine})
        name = (f"infer_{rows[0]['model_name']}_b{args.batch_size}_"
                f"{device_tag(str(rows[0]['device']))}.csv")
        written.append(write_rows(args.out, name, rows))
    return written


def train_row(run_dir: Path, wall: float, rep: int) -> dict[str, object]:
    """One repetition, from the run's training_metrics.csv and run.json."""
    with (run_dir / "training_metrics.csv").open(encoding="utf-8") as f:
        epochs = list(csv.DictReader(f))
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    settings = record["settings"]
    rates = [float(e["images_per_second"]) for e in epochs]
    seconds = [float(e["seconds"]) for e in epochs]
    steady = rates[1:] or rates  # the first epoch carries start-up and autotuning
    steady_s = seconds[1:] or seconds
    return {"date": now(), "model_name": settings["model_name"],
            "batch_size": settings["batch_size"], "epochs": len(epochs),
            "device": settings["device_resolved"],
            "precision": settings["mixed_precision_resolved"],
            "train_images": record["data"]["train_images"], "repetition": rep,
            "first_epoch_s": seconds[0], "steady_epoch_s": round(sum(steady_s) / len(steady_s), 3),
            "steady_images_per_s": round(sum(steady) / len(steady), 1),
            "per_epoch_images_per_s": ";".join(f"{r:.0f}" for r in rates),
            "best_val_accuracy": record.get("best_val_accuracy"),
            "command_wall_s": round(wall, 3)}


def bench_train(args: argparse.Namespace, machine: dict[str, str], place: Place
                ) -> list[Path]:
    rows: list[dict[str, object]] = []
    extra = ["--epochs", args.epochs] + (["--gpus", args.gpus] if args.gpus else [])
    extra += ["--device", args.device] if args.device else []
    with tempfile.TemporaryDirectory(prefix="pochi_bench_") as tmp:
        for rep in range(1, args.repeat + 1):
            work = Path(tmp) / f"run_{rep}"
            wall = run_timed(pochi("train", "-c", args.config, "--work-dir", work, "--quiet",
                                   *extra), place)
            run_dir = next(p for p in work.iterdir() if (p / "run.json").exists())
            rows.append({**train_row(run_dir, wall, rep), "gpus": args.gpus or 1, **machine})
    first = rows[0]
    name = (f"train_{first['model_name']}_b{first['batch_size']}_"
            f"{device_tag(str(first['device']))}"
            + (f"_x{args.gpus}" if args.gpus else "") + ".csv")
    return [write_rows(args.out, name, rows)]


def bench_serve(args: argparse.Namespace, machine: dict[str, str], place: Place
                ) -> list[Path]:
    from serving import serve_rows

    rows = serve_rows(args, machine, place)
    first = rows[0]
    name = (f"serve_{first['model_name']}_c{args.clients}_p{args.processes}_{args.api}_"
            f"{device_tag(str(first['device']))}.csv")
    return [write_rows(args.out, name, rows)]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = top.add_subparsers(dest="verb", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, default=Path("benchmark_results"),
                        help="folder for the CSV files (default: benchmark_results)")
    common.add_argument("--repeat", type=int, default=3, help="timed repetitions (default: 3)")
    common.add_argument("--source", type=Path, metavar="TREE",
                        help="run the pochitrain of this source tree (the folder holding "
                        "pochitrain/), from a folder of the commands' own; paths inside "
                        "--args must then be absolute")
    infer = verbs.add_parser("infer", parents=[common], help="time pochi infer / infer-onnx / "
                             "infer-trt over a data folder")
    infer.add_argument("models", type=Path, nargs="+", metavar="MODEL",
                       help=".pth (pochi infer), .onnx (infer-onnx), .engine (infer-trt)")
    infer.add_argument("--data", type=Path, required=True, help="image folder to classify")
    infer.add_argument("--batch-size", "-b", type=int, default=32, help="(default: 32)")
    infer.add_argument("--warmup-runs", type=int, default=1,
                       help="untimed runs of the command first (default: 1)")
    infer.add_argument("--args", default="", help="more options for the infer command, "
                       "e.g. \"--pipeline gpu --precision bf16\"")
    serve = verbs.add_parser("serve", parents=[common], help="load a pochi serve server")
    serve.add_argument("model", type=Path, metavar="MODEL")
    serve.add_argument("--images", type=Path, required=True,
                       help="folder of .jpg/.png/.webp files to send, one per request")
    serve.add_argument("--clients", type=int, default=8, help="client threads (default: 8)")
    serve.add_argument("--processes", type=int, default=1,
                       help="client processes sharing the client threads (default: 1)")
    serve.add_argument("--api", choices=("multipart", "original"), default="multipart",
                       help="request body: the image file as multipart (default), or the "
                       "original pochitrain's JSON with a base64 JPEG")
    serve.add_argument("--requests", type=int, default=2000,
                       help="requests per repetition (default: 2000)")
    serve.add_argument("--args", default="", help="more options for pochi serve, "
                       "e.g. \"--workers 8 --pipeline gpu --max-batch 64\"")
    serve.add_argument("--start-timeout", type=float, default=180.0,
                       help="seconds to wait for the server to answer (default: 180)")
    train = verbs.add_parser("train", parents=[common], help="time pochi train epochs")
    train.add_argument("-c", "--config", type=Path, required=True, help="training config .py")
    train.add_argument("--epochs", type=int, default=3, help="(default: 3)")
    train.add_argument("--gpus", type=int, default=0, help="GPUs for DDP (default: one device)")
    train.add_argument("--device", default="", help="cpu, cuda, ... (default: the config's)")
    return top


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.repeat < 1:
        cli.error("--repeat must be 1 or more")
    bench = {"infer": bench_infer, "serve": bench_serve, "train": bench_train}[args.verb]
    if args.source is not None:  # the commands run elsewhere: give them absolute paths
        for name in ("models", "data", "config", "model", "images"):
            value = getattr(args, name, None)
            if value is not None:
                setattr(args, name, [p.resolve() for p in value] if isinstance(value, list)
                        else value.resolve())
    with tempfile.TemporaryDirectory(prefix="pochi_bench_cwd_") as scratch:
        place = Place.of(args.source, Path(scratch))
        for path in dict.fromkeys(bench(args, machine_columns(place), place)):  # each CSV once
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
