"""`pochi train [-c CONFIG]`: train a classifier from a Python config file."""

from __future__ import annotations

import argparse

from pochitrain.cli.common import add_config, positive_int

DEFAULT_CONFIG = "configs/pochi_train_config.py"

DESCRIPTION = """\
Train a torchvision classifier described by a Python config file (module-level variables such
as model_name, epochs, train_data_root, val_transform; see configs/pochi_train_config.py).
Relative paths in the config are read from the working directory when they exist only there
(as the original pochitrain did), else from the config file's folder; a path that exists in both
places is refused.

Writes work_dirs/YYYYMMDD_NNN/ (under the config's work_dir, or --work-dir):
  config.py               copy of the config
  run.json                resolved settings, class names, input size, mean/std, versions,
                          results and any unreadable images that were skipped
  models/best_epochN.pth  best validation accuracy (only the current best is kept)
  models/last_model.pth   the model after the last finished epoch, with the state
                          that --resume goes on from
  training_metrics.csv    epoch, lr, train/val loss and accuracy, images/s, seconds
  loss.png, accuracy.png  curves, updated after every epoch

Ctrl+C stops after the current batch and exits with code 130; 'pochi train --resume
RUN_DIR' goes on after the last finished epoch (same weights as an uninterrupted run with a
seed and num_workers = 0).

Several GPUs: --gpus N starts N processes (PyTorch DDP, one GPU each; batch_size is the global
batch). Same as: torchrun --standalone --nproc-per-node N -m pochitrain train -c CONFIG
"""


def configure(parser: argparse.ArgumentParser) -> None:
    add_config(parser, f"training config .py file (default: {DEFAULT_CONFIG}, or with --resume "
               "the run's own; 'pochi sample-data DIR' writes a ready one)")
    parser.add_argument("--resume", default=None, metavar="RUN",
                        help="go on with an interrupted run: its folder (work_dirs/YYYYMMDD_NNN) "
                        "or its models/last_model.pth; training restarts after the last "
                        "finished epoch in the same folder")
    parser.add_argument("--work-dir", default=None, metavar="DIR",
                        help="folder in which the run folder YYYYMMDD_NNN is created, relative "
                        "to the current directory (default: the config's work_dir)")
    parser.add_argument("--epochs", type=positive_int, default=None, metavar="N",
                        help="override the config's epochs")
    parser.add_argument("--device", default=None,
                        help="override the config's device: auto (CUDA when available), cpu, "
                        "cuda or cuda:N")
    parser.add_argument("--gpus", type=positive_int, default=None, metavar="N",
                        help="train on N GPUs of this machine with PyTorch DDP (N processes; "
                        "batch_size is the global batch). With --device cpu: N CPU processes "
                        "(gloo), for testing")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (the per-epoch lines are still printed)")


def _check_work_dir(work_dir: str) -> None:
    """--work-dir must be (or be creatable as) a folder: say so before any training."""
    import os
    from pathlib import Path

    from pochitrain.errors import UsageError

    path = Path(work_dir).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise UsageError("--work-dir がフォルダではなくファイルです\n"
                         f"--work-dir {work_dir}: {existing} is a file, not a folder.",
                         "Pass a folder for --work-dir (it is created when missing), or leave "
                         "--work-dir out to use the config's work_dir.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError("--work-dir に書き込めません\n"
                         f"--work-dir {work_dir}: cannot write in {existing}.",
                         "Pass a writable folder for --work-dir, or leave it out to use the "
                         "config's work_dir.")


def _check_device(device: str) -> None:
    """Errors name --device (not the config key); no GPU for --device cuda is a usage error
    (exit 2), as it is for device = 'cuda' in the config."""
    from pochitrain.config import resolve_device
    from pochitrain.errors import BackendMissingError, UsageError

    try:
        resolve_device(device, flag="--device")
    except BackendMissingError as exc:
        raise UsageError(exc.message, exc.remedy) from None


def run(args: argparse.Namespace) -> int:
    from pochitrain.config import config_file
    from pochitrain.console import info, warn

    # a mistyped path, or a run with nothing to resume, is told before torch's import
    if args.resume is not None:
        from pochitrain.run_to_resume import run_config, run_to_resume

        resumed = run_to_resume(args.resume)
        if args.config is None:
            args.config = str(run_config(resumed.run_dir, resumed.record))
    elif args.config is None:
        args.config = DEFAULT_CONFIG
    config_file(args.config)
    from pochitrain.training.run import run_training as train

    overrides: dict[str, object] = {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.device is not None:
        _check_device(args.device)
        overrides["device"] = args.device
    if args.work_dir is not None:
        _check_work_dir(args.work_dir)
    if args.gpus is not None and args.gpus > 1:
        return _launch(args, overrides)
    result = train(args.config, overrides=overrides, work_dir=args.work_dir,
                   progress=not args.quiet, resume=args.resume)
    if result.interrupted:
        warn(f"中断しました / Interrupted after {result.epochs_run} complete epoch(s). "
             f"Saved {result.last_checkpoint}")
        return 130
    acc = (f"{result.best_val_accuracy:.2%} (epoch {result.best_epoch})"
           if result.best_val_accuracy is not None else "n/a")
    info(f"[bold green]done[/bold green] in {result.seconds:.1f} s, "
         f"{result.epochs_run} epoch(s) ({result.stopped_by}); best val accuracy {acc}")
    info(f"run folder: {result.run_dir}")
    if result.best_checkpoint:
        info(f"best model: {result.best_checkpoint}")
    if result.skipped_files:
        warn(f"{len(result.skipped_files)} unreadable image(s) were skipped; listed in "
             f"{result.run_dir / 'run.json'}")
    return 0


def _launch(args: argparse.Namespace, overrides: dict[str, object]) -> int:
    """--gpus N: check the request and the config once here, then start N ranks."""
    from pathlib import Path

    from pochitrain.config import load_config
    from pochitrain.config_checks import check_training_batch
    from pochitrain.console import info
    from pochitrain.errors import UsageError
    from pochitrain.training.distributed import env_world
    from pochitrain.training.launch import gpus_device, launch

    if env_world() is not None:
        raise UsageError("torchrun で起動したプロセスには --gpus を指定できません\n"
                         "--gpus was given to a process already started by torchrun.",
                         "Use either torchrun --nproc-per-node N or pochi train --gpus N.")
    settings = load_config(args.config, overrides)
    device = gpus_device(args.gpus, args.device, settings.device)
    if settings.batch_size % args.gpus:
        raise UsageError("batch_size を --gpus のプロセス数で割り切れません\n"
                         f"batch_size = {settings.batch_size} cannot be split over --gpus "
                         f"{args.gpus} processes.",
                         f"Use a batch_size divisible by {args.gpus} in the config (it is the "
                         "global batch).")
    check_training_batch(settings.batch_size, args.gpus, settings.model_name)
    child = ["-c", str(Path(args.config).resolve()), "--device", device]
    for flag, value in (("--work-dir", args.work_dir), ("--resume", args.resume)):
        if value is not None:
            child += [flag, str(Path(value).resolve())]
    child += ["--epochs", str(args.epochs)] if args.epochs is not None else []
    child += ["--quiet"] if args.quiet else []
    info(f"starting {args.gpus} training processes (DDP, "
         f"{'gloo on the CPU' if device == 'cpu' else 'NCCL, one GPU each'}; global batch "
         f"{settings.batch_size} = {args.gpus} x {settings.batch_size // args.gpus})")
    return launch(child, args.gpus)
