"""``pochi train --gpus N``: start N ranks of ``python -m pochitrain train ...`` on this machine.

The ranks get the environment torchrun gives them (RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so they run exactly the code path of
``torchrun --standalone --nproc-per-node N -m pochitrain train ...``. The launcher adds:

- Ctrl+C: the ranks run in their own session; each signal this process receives (SIGINT,
  SIGTERM, SIGHUP) is forwarded once to every rank, so one Ctrl+C stops all of them after the
  same batch (rank 0 saves last_model.pth) and a second one aborts them, as with one process.
- A failing rank: the others get ``GRACE_S`` seconds to stop by themselves (they notice the
  lost peer), then SIGTERM, then SIGKILL; the launcher then raises ``TrainingError`` naming the
  rank whose error is shown above.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pochitrain.errors import TrainingError, UsageError

GRACE_S = 5.0
KILL_AFTER_S = 10.0
PEER_LOST = 3  # errors.PeerLostError.exit_code


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # so -m pochitrain finds this source tree
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
               LOCAL_WORLD_SIZE=str(world), GROUP_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), TORCHELASTIC_RUN_ID="pochi")
    if "OMP_NUM_THREADS" not in env:  # as torchrun: do not oversubscribe the cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // world))
    return env


def gpus_device(gpus: int, flag: str | None, configured: str) -> str:
    """The device of every rank of ``--gpus N``: "cuda" (one GPU each) or "cpu" (gloo, asked
    for with ``--device cpu``). ``flag``: --device (None: not given); ``configured``: the
    config's device."""
    if flag == "cpu":
        return "cpu"
    if flag not in (None, "cuda", "auto"):
        raise UsageError("--gpus と --device は同時に指定できません\n"
                         f"--gpus {gpus} with --device {flag}: each process takes "
                         "its own GPU (cuda:0 .. cuda:N-1).",
                         "Leave --device out (or use --device cuda), and choose the GPUs "
                         "with CUDA_VISIBLE_DEVICES.")
    if flag is None and configured == "cpu":
        raise UsageError("--gpus は CUDA の GPU を使いますが、config は CPU を指定しています\n"
                         f"--gpus {gpus} trains on CUDA GPUs, but the config asks for the CPU "
                         "(device = 'cpu').",
                         "Set device = 'cuda' (or 'auto') in the config to train on the GPUs, "
                         f"or add --device cpu to train with {gpus} processes on the CPU.")
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > visible:
        raise UsageError("--gpus の数だけ GPU が見えていません\n"
                         f"--gpus {gpus} needs CUDA GPUs but only {visible} GPU(s) are "
                         "visible here.",
                         f"Use --gpus {visible} or fewer" if visible > 1 else
                         "Run on a machine with several NVIDIA GPUs (to try multi-process "
                         "training on the CPU, add --device cpu).")
    return "cuda"


def launch(train_args: Sequence[str], nprocs: int) -> int:
    """Run ``python -m pochitrain train *train_args`` as ``nprocs`` ranks; their exit code
    (0, or 130 after Ctrl+C); a failed rank raises TrainingError after the others stopped."""
    port = free_port()
    cmd = [sys.executable, "-m", "pochitrain", "train", *train_args]
    procs = [subprocess.Popen(cmd, env=rank_env(r, nprocs, port), start_new_session=True)
             for r in range(nprocs)]

    def forward(signum: int, frame: Any) -> None:
        _each_running(procs, lambda p: p.send_signal(signum))

    handled = (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM))
    previous = {s: signal.signal(s, forward) for s in handled}
    try:
        return _wait(procs)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _each_running(procs, subprocess.Popen.kill)  # only when this process is torn down


def _each_running(procs: list[subprocess.Popen], act: Callable[[subprocess.Popen], Any]
                  ) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                act(p)


def _wait(procs: list[subprocess.Popen]) -> int:
    failed: tuple[int, int] | None = None
    failed_at = 0.0
    terminated = False
    while True:
        codes = [p.poll() for p in procs]
        if failed is None:
            bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0, 130)]
            bad.sort(key=lambda rc: rc[1] == PEER_LOST)  # a rank that lost its peers: last
            if bad:
                failed, failed_at = bad[0], time.monotonic()
        if all(c is not None for c in codes):
            break
        if failed is not None:
            waited = time.monotonic() - failed_at
            if waited > GRACE_S and not terminated:
                terminated = True
                _each_running(procs, subprocess.Popen.terminate)
            if waited > GRACE_S + KILL_AFTER_S:
                _each_running(procs, subprocess.Popen.kill)
        time.sleep(0.1)
    if failed is not None:
        rank, code = failed
        raise TrainingError(
            "プロセスが失敗したため、他のプロセスを停止しました\n"
            f"rank {rank} of {len(procs)} failed (exit code {code}); the other processes "
            "were stopped.",
            f"See the error printed above by rank {rank} (the first process to fail).")
    return 130 if 130 in codes else 0

