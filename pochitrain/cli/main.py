"""`pochi` entry point: a registry of verbs, each in its own small module.

Only argparse is imported here; each verb module imports torch / onnxruntime / TensorRT inside
its ``run`` so that ``pochi --help`` and argument errors stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from pochitrain.errors import PochiError

# verb -> (module under pochitrain.cli, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "sample-data": ("sample_data", "write the built-in digits image folders and a config"),
    "train": ("train", "train a classifier from a config file"),
    "export-onnx": ("export_onnx", "export a checkpoint to ONNX and verify it"),
    "convert": ("convert", "build a TensorRT engine from ONNX (FP32 / FP16 / INT8)"),
    "infer": ("infer", "run inference with a .pth, .onnx or .engine model"),
    "infer-onnx": ("infer_onnx", "run inference with ONNX Runtime"),
    "infer-trt": ("infer_trt", "run inference with a TensorRT engine"),
    "explain": ("explain", "Grad-CAM heatmaps: where a model looks in each image"),
    "quickstart": ("quickstart", "sample data -> train -> export -> convert -> infer, one command"),
    "serve": ("serve", "HTTP inference server (API v1) for a .pth, .onnx or .engine model"),
    "bench": ("bench", "run a benchmark suite (YAML) and aggregate the results"),
    "vis-grad": ("vis_grad", "plot a training run's gradient trace CSV"),
    "optimize": ("optimize", "hyperparameter search with Optuna (the config's optuna dict)"),
}
QUICK_EXIT_VERBS = {"infer", "infer-onnx", "infer-trt", "train", "export-onnx", "convert",
                    "quickstart"}  # see _exit
_ran: list[str] = []  # the verbs run() dispatched in this process


class Parser(argparse.ArgumentParser):
    """argparse whose errors are bilingual like the rest: a Japanese line, then argparse's own
    English line, which names the option and what it expected. Exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: 引数が正しくありません (--help で使い方を表示します)\n"
                     f"{self.prog}: error: {message}\n")


def _verb_module(verb: str):
    return importlib.import_module(f"pochitrain.cli.{VERBS[verb][0]}")


def build_parser(prog: str = "pochi", only: str | None = None,
                 verb: str | None = None) -> argparse.ArgumentParser:
    """``only``: a standalone script for one verb. ``verb``: configure just that sub-command
    (the others get a stub) so a command imports one verb module, not all of them."""
    if only is not None:
        parser = Parser(prog=prog, description=_verb_module(only).DESCRIPTION,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_options(parser, only, debug_default=False)
        parser.set_defaults(_verb=only)
        return parser
    parser = Parser(
        prog=prog,
        description="pochitrain: train an image classifier, export it to ONNX, convert it to a "
        "TensorRT engine (FP32/FP16/INT8) and run inference with CSV results and a summary.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'pochi VERB --help' for the options of a verb.",
    )
    _add_options(parser, None, debug_default=False)
    sub = parser.add_subparsers(dest="_verb", metavar="VERB", required=True)
    for name, (_, help_text) in VERBS.items():
        if name != verb:
            sub.add_parser(name, help=help_text)
            continue
        p = sub.add_parser(name, help=help_text, description=_verb_module(name).DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        # --debug after the verb too (the original's README writes it there); SUPPRESS keeps
        # a `pochi --debug VERB` from being reset by the sub-command's default
        _add_options(p, name, debug_default=argparse.SUPPRESS)
    return parser


def _add_options(parser: argparse.ArgumentParser, verb: str | None,
                 debug_default: object) -> None:
    """--version, --debug and the options of ``verb``."""
    from pochitrain import __version__

    parser.add_argument("--version", action="version", version=f"pochitrain {__version__}")
    parser.add_argument("--debug", action="store_true", default=debug_default,
                        help="verbose logging; errors also print their full traceback")
    if verb is not None:
        _verb_module(verb).configure(parser)


def start_debug_logging(argv: Sequence[str]) -> None:
    """``--debug``: pochitrain's loggers at DEBUG, in the original's line format."""
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s|%(levelname)-5s|%(name)s|%(lineno)d| %(message)s")
    logger = logging.getLogger("pochitrain")
    logger.setLevel(logging.DEBUG)
    from pochitrain import __version__

    logger.debug("pochitrain %s, Python %s, arguments: %s", __version__,
                 sys.version.split()[0], " ".join(argv))


def unwrapped_error(exc: Exception) -> Exception:
    """A PochiError raised in a DataLoader worker comes back re-created from the worker's
    traceback text ("Caught DataError in DataLoader worker process 0. Original Traceback..."):
    keep only what the original error said."""
    from pochitrain.errors import PochiError

    text = getattr(exc, "message", "")
    marker = f"{type(exc).__module__}.{type(exc).__name__}: "
    if not isinstance(exc, PochiError) or "Original Traceback" not in text or marker not in text:
        return exc
    message = text.rsplit(marker, 1)[1].strip()
    return type(exc)(message)


def run(argv: Sequence[str] | None, prog: str = "pochi", only: str | None = None) -> int:
    from pochitrain.bytecode import keep_bytecode
    from pochitrain.console import safe_streams
    from pochitrain.cuda_env import prepare_cuda_env
    from pochitrain.errors import PochiError

    keep_bytecode()  # before any verb imports torch
    prepare_cuda_env()  # before any verb starts CUDA
    safe_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(prog, only, verb if verb in VERBS else None)
    if only is None and not argv:
        parser.print_help(sys.stderr)
        print(f"\n{prog}: error: コマンド (VERB) を指定してください\n"
              "no VERB given. Choose one of the verbs above, e.g. "
              f"'{prog} sample-data data/digits' ('{prog} VERB --help' for its options).",
              file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    _ran.append(args._verb)
    debug = bool(getattr(args, "debug", False))
    if debug:
        start_debug_logging(argv)
    from pochitrain.console import interrupted_exit_code, terminate_as_interrupt
    from pochitrain.workspace import disk_space_guard

    try:
        # a full disk under a writer that does not guard its own file: named from the OSError
        with disk_space_guard(None), terminate_as_interrupt():
            code = int(_verb_module(args._verb).run(args) or 0)
        return interrupted_exit_code() if code == 130 else code
    except PochiError as exc:
        return _report(unwrapped_error(exc), exc, debug)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        print("\n中断しました / Interrupted.", file=sys.stderr)
        return interrupted_exit_code()
    except (MemoryError, RuntimeError) as exc:
        from pochitrain.errors import out_of_memory

        error = out_of_memory(exc, args._verb)
        if error is None:
            raise
        return _report(error, exc, debug)


def _report(error: PochiError, exc: BaseException, debug: bool) -> int:
    """Print ``error`` (with ``exc``'s traceback under --debug); its exit code."""
    from pochitrain.console import print_error

    print_error(error)
    if debug:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    return error.exit_code


def _exit(code: int) -> NoReturn:
    """End a console command. After a verb that imports torch the interpreter's finalization
    is skipped: tearing down every module and torch's state is a noticeable part of a short
    ``pochi infer`` or ``pochi train`` (docs/benchmarks.md), for nothing: the verb has written
    and closed its files and stopped its helper processes and threads by then.
    ``POCHI_QUICK_EXIT=0`` ends the usual way."""
    if _ran and _ran[-1] in QUICK_EXIT_VERBS and os.environ.get("POCHI_QUICK_EXIT") != "0":
        import logging

        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken pipe: nothing more to say
                pass
        os._exit(code)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    _exit(run(argv))


def _script(verb: str) -> Callable[[], None]:
    """The console command of one verb alone (``export-onnx``, ``infer-onnx``, ...)."""
    def script() -> None:
        _exit(run(None, prog=verb, only=verb))
    return script


export_onnx_main, infer_onnx_main, infer_trt_main, bench_main, vis_grad_main = map(
    _script, ("export-onnx", "infer-onnx", "infer-trt", "bench", "vis-grad"))


if __name__ == "__main__":
    main()
