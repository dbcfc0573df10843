"""Several processes, one model: PyTorch DDP under ``torchrun`` or ``pochi train --gpus N``.

Each process (rank) trains on its share of every epoch (``DistributedSampler``, reshuffled
each epoch) with ``batch_size / world`` images per step, so the global batch is the config's
``batch_size``. DDP averages the gradients; BatchNorm running statistics are averaged across
ranks after each training epoch, so every rank holds the same model and validates it (without
DDP, on its own slice of the validation set, no padding). Loss, accuracy, image counts and
skipped files are summed across ranks: the CSV shows what one process would log.

Rank 0 alone writes the run folder and prints; the others write nothing (their stdout is
discarded; errors still reach stderr). One stop decision per batch is shared by all ranks
(``SyncedStop``), so Ctrl+C stops every rank after the same batch and rank 0 saves
``last_model.pth``. A rank that loses its peers (one failed) raises ``TrainingError``; the
process group has a timeout (``POCHI_DDP_TIMEOUT`` seconds, default 600) so nothing waits
forever, and the launcher (``launch``) stops the remaining ranks a few seconds after one fails.

Test hooks (environment): ``POCHI_DDP_DEBUG_DIR`` makes every rank write ``rank{N}.json``
with a hash of its final weights; ``POCHI_DDP_DEBUG_FAIL_RANK=N`` makes rank N fail in its
first training batch.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from pochitrain.config_checks import check_training_batch
from pochitrain.errors import ConfigError, PeerLostError, TrainingError, first_line
from pochitrain.scratch import remove_orphans
from pochitrain.training.data import seed_everything, seeded_generator, val_batch_size

if TYPE_CHECKING:
    import threading

    from pochitrain.training.epoch import EpochStats

ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
SCRATCH_PREFIX = "pochi_rank"  # + "<rank>_<pid>_<random>" in the temp folder


def remove_stale_scratch(temp_root: Path | None = None) -> list[Path]:
    """Remove this user's rank scratch folders whose process is gone (a killed rank cannot
    run its exit handler); the folders removed."""
    return remove_orphans(rf"{SCRATCH_PREFIX}\d+_(\d+)_.+", temp_root)


def env_world() -> tuple[int, int, int] | None:
    """(rank, local_rank, world_size) when started by torchrun / ``launch`` with more than one
    process, else None."""
    if not all(k in os.environ for k in ENV_KEYS) or int(os.environ["WORLD_SIZE"]) < 2:
        return None
    return (int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]),
            int(os.environ["WORLD_SIZE"]))


def state_hash(model: nn.Module) -> str:
    """sha256 over the state_dict (names, dtypes, shapes and bytes), in name order."""
    digest = hashlib.sha256()
    for name, value in sorted(unwrap(model).state_dict().items()):
        t = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (checkpoints hold its state_dict, without 'module.')."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class EpochSampler(torch.utils.data.DistributedSampler):
    """``DistributedSampler`` that calls ``set_epoch`` itself: each pass gets a new order
    (the same on every rank, so the slices stay disjoint)."""

    def __iter__(self) -> Iterator[Any]:
        it = super().__iter__()
        self.set_epoch(self.epoch + 1)
        return it


class SyncedStop:
    """``is_set()`` is True on every rank when Ctrl+C reached any of them (one all-reduce)."""

    def __init__(self, event: threading.Event, device: str) -> None:
        self.event, self.device, self._stopped = event, device, False

    def is_set(self) -> bool:
        if not self._stopped:
            flag = torch.tensor([1.0 if self.event.is_set() else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self._stopped = bool(flag.item() > 0)
        return self._stopped


@dataclass
class Distributed:
    rank: int
    world: int
    device: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare(self, setup: Any, batch_size: int, seed: int | None) -> None:
        """Wrap ``setup.model`` in DDP, give each loader this rank's slice, seed this rank."""
        if batch_size % self.world:
            raise ConfigError(
                "batch_size をプロセス数で割り切れません\n"
                f"batch_size = {batch_size} cannot be split over {self.world} processes.",
                f"Use a batch_size divisible by {self.world} (it is the global batch: each "
                f"process takes batch_size / {self.world} images per step).")
        check_training_batch(batch_size, self.world)
        per_rank = batch_size // self.world
        ids = [int(self.device.split(":")[1])] if self.device.startswith("cuda:") else None
        setup.model = nn.parallel.DistributedDataParallel(setup.model, device_ids=ids)
        train_sampler = EpochSampler(setup.train_loader.dataset, num_replicas=self.world,
                                     rank=self.rank, shuffle=True, seed=seed or 0)
        if len(train_sampler) < 2:  # BatchNorm cannot train on one image per step
            raise ConfigError(
                "1 プロセスあたりの学習画像が 1 枚しかありません\n"
                f"{len(setup.train_loader.dataset)} training images over {self.world} processes leave each process "
                "one image per step, which BatchNorm cannot train on.",
                "Add training images (at least 2 per process) or use fewer processes.")
        # a last step of one image per rank would break BatchNorm: drop it then
        drop_last = len(train_sampler) % per_rank == 1
        setup.train_loader = _reshard(setup.train_loader, train_sampler, per_rank,
                                      (seed or 0) + self.rank, drop_last)
        # validation: a disjoint slice per rank, no padding
        val_indices = list(range(self.rank, len(setup.val_loader.dataset), self.world))
        setup.val_loader = _reshard(setup.val_loader, val_indices, val_batch_size(per_rank), seed)
        setup.distributed = self
        if seed is not None:
            seed_everything(seed + self.rank)  # different augmentation on every rank

    # ---- per epoch (used by training.fit) ---------------------------------------------------

    def epoch_runner(self, run_epoch: Callable[..., Any]) -> Callable[..., Any]:
        """``run_epoch`` for this rank: validation runs the unwrapped model after averaging
        the BatchNorm statistics; the progress bar counts all ranks' images; the stats
        returned are summed over ranks."""

        def run(model: nn.Module, loader: Any, *args: Any, **kwargs: Any) -> Any:
            training = kwargs.get("optimizer") is not None
            on_batch = kwargs.get("on_batch")
            if on_batch is not None:
                kwargs["on_batch"] = lambda n, loss: on_batch(n * self.world, loss)
            with self.peer_errors():
                if training and os.getenv("POCHI_DDP_DEBUG_FAIL_RANK", "").strip() == str(self.rank):
                    raise TrainingError("テストのために意図的に失敗しました\n"
                                        f"rank {self.rank} failed on purpose "
                                        "(POCHI_DDP_DEBUG_FAIL_RANK).", "This is a test.")
                if not training:
                    self.average_buffers(model)
                    model = unwrap(model)
                    # every rank counts the confusion matrix, summed by reduce()
                    kwargs["num_classes"] = kwargs.get("num_classes") or _classes(model)
                stats = run_epoch(model, loader, *args, **kwargs)
                return self.reduce(stats)

        return run

    def average_buffers(self, model: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running mean / var) across ranks."""
        for buf in unwrap(model).buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf.div_(self.world)

    def reduce(self, stats: EpochStats) -> EpochStats:
        """Sum loss / accuracy (weighted by images) and images over ranks; seconds = the
        slowest rank's; skipped = the union of dataset indices; interrupted = any rank."""
        n = stats.images
        sums = torch.tensor([stats.loss * n, stats.accuracy * n, float(n),
                             float(len(stats.skipped))], dtype=torch.float64,
                            device=self.device)
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        maxes = torch.tensor([stats.seconds, float(stats.interrupted)], dtype=torch.float64,
                             device=self.device)
        dist.all_reduce(maxes, op=dist.ReduceOp.MAX)
        loss, correct, images, n_skipped = sums.tolist()
        stats.images = round(images)
        stats.loss = loss / images if images else 0.0
        stats.accuracy = correct / images if images else 0.0
        stats.seconds, stats.interrupted = maxes[0].item(), bool(maxes[1].item() > 0)
        if isinstance(stats.confusion, torch.Tensor):
            total = stats.confusion.to(self.device)
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            stats.confusion = total.cpu()
        if n_skipped:
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, sorted(stats.skipped))
            stats.skipped = {i for part in gathered for i in part}
        return stats

    @contextlib.contextmanager
    def peer_errors(self) -> Iterator[None]:
        """A collective that fails because another rank died -> TrainingError (no traceback)."""
        try:
            yield
        except RuntimeError as exc:
            if not _is_peer_error(exc):
                raise
            raise PeerLostError(
                "他のプロセスとの通信が途絶えました\n"
                f"rank {self.rank}: lost contact with the other processes of this run "
                f"({type(exc).__name__}: {first_line(exc, 160)}).",
                "Another process failed or was stopped: see its error above.") from None

    def scratch_dir(self) -> Path:
        """Where a rank other than 0 keeps its (unused) run files; removed at exit. Its name
        holds this process id, so that the folders of killed ranks are removed later."""
        remove_stale_scratch()
        scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{self.rank}_{os.getpid()}_"))
        atexit.register(shutil.rmtree, scratch, True)
        return scratch

    def close(self, model: nn.Module | None) -> None:
        """Write the debug weight hash (when asked) and leave the process group."""
        debug = os.environ.get("POCHI_DDP_DEBUG_DIR")
        if debug and model is not None:
            Path(debug).mkdir(parents=True, exist_ok=True)
            (Path(debug) / f"rank{self.rank}.json").write_text(
                json.dumps({"rank": self.rank, "world": self.world,
                            "state_sha256": state_hash(model)}), encoding="utf-8")
        if dist.is_initialized():
            with contextlib.suppress(Exception):  # peers may be gone already
                dist.destroy_process_group()


def _classes(model: nn.Module) -> int | None:
    """Number of outputs of the classifier (its last Linear layer)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _is_peer_error(exc: BaseException) -> bool:
    dist_error = getattr(torch.distributed, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("connection closed", "connection reset", "gloo", "nccl",
                                   "processgroup", "timed out", "broken pipe"))


def _reshard(loader: Any, sampler: Any, batch_size: int, seed: int | None,
             drop_last: bool = False) -> Any:
    """The same loader over ``sampler`` with ``batch_size`` (a GPU-input loader reshards
    itself; a DataLoader is rebuilt with the same workers and collate)."""
    if hasattr(loader, "resharded"):
        return loader.resharded(sampler, batch_size, drop_last)
    return DataLoader(loader.dataset, batch_size=batch_size, sampler=sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory, persistent_workers=loader.persistent_workers,
                      worker_init_fn=loader.worker_init_fn, generator=seeded_generator(seed),
                      drop_last=drop_last)


def init(device: str) -> Distributed | None:
    """Join the process group when started as one of several ranks (else None).

    ``device``: the resolved config device; on CUDA each rank takes ``cuda:LOCAL_RANK``
    (NCCL), on the CPU all ranks use gloo. Ranks other than 0 stop printing to stdout.
    """
    world = env_world()
    if world is None:
        return None
    rank, local_rank, size = world
    nccl = device.startswith("cuda")
    if nccl:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError("このプロセスに割り当てる GPU がありません\n"
                              f"process {local_rank} of this node has no GPU: only "
                              f"{torch.cuda.device_count()} GPU(s) are visible.",
                              "Start at most as many processes per node as there are GPUs "
                              "(--gpus N / torchrun --nproc-per-node N).")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    timeout = timedelta(seconds=float(os.environ.get("POCHI_DDP_TIMEOUT", "600")))
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"device_id": torch.device(device)} if nccl else {}
        dist.init_process_group("nccl" if nccl else "gloo", timeout=timeout, **kwargs)
    if rank != 0:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - process-long
    return Distributed(rank, size, device)
