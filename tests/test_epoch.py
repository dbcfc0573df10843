"""training.epoch.run_epoch: each batch's loss is read one batch late; what it counts must be
exactly what reading it at once would count."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from pochitrain.errors import TrainingError
from pochitrain.training.data import Batch, val_batch_size
from pochitrain.training.epoch import run_epoch


def _batches(sizes: list[int], seed: int = 0) -> list[Batch]:
    gen = torch.Generator().manual_seed(seed)
    return [Batch(torch.randn(n, 3, generator=gen), torch.randint(0, 2, (n,), generator=gen), [])
            for n in sizes]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def test_evaluation_counts_every_batch_in_order() -> None:
    model, loss_fn = _model(), nn.CrossEntropyLoss()
    batches = _batches([4, 4, 3])
    seen: list[tuple[int, float]] = []
    stats = run_epoch(model, batches, loss_fn, "cpu",  # type: ignore[arg-type]
                      on_batch=lambda n, loss: seen.append((n, loss)), num_classes=2)
    with torch.no_grad():
        want = [(len(b.labels), float(loss_fn(model(b.images), b.labels)))  # type: ignore[arg-type]
                for b in batches]
        logits = model(torch.cat([b.images for b in batches]))  # type: ignore[misc]
    labels = torch.cat([b.labels for b in batches])  # type: ignore[misc]
    assert [n for n, _ in seen] == [4, 4, 3]
    assert [v for _, v in seen] == pytest.approx([v for _, v in want], rel=1e-6)
    assert stats.images == 11
    assert stats.loss == pytest.approx(sum(n * v for n, v in want) / 11, rel=1e-6)
    assert stats.accuracy == int((logits.argmax(1) == labels).sum()) / 11
    assert int(stats.confusion.sum()) == 11


def test_a_loss_that_is_not_finite_names_the_images_before_its_batch() -> None:
    batches = _batches([4, 4, 4])
    assert batches[1].images is not None
    batches[1].images[0, 0] = float("nan")
    with pytest.raises(TrainingError) as err:
        run_epoch(_model(), batches, nn.CrossEntropyLoss(), "cpu")  # type: ignore[arg-type]
    assert "validation loss became nan after 4 images" in err.value.message


def test_a_stop_during_training_keeps_the_batch_that_ran() -> None:
    model, stop = _model(), threading.Event()
    seen: list[int] = []

    def on_batch(n: int, loss: float) -> None:
        seen.append(n)
        stop.set()  # Ctrl+C during the first batch

    stats = run_epoch(model, _batches([4, 4, 4]), nn.CrossEntropyLoss(), "cpu",  # type: ignore[arg-type]
                      optimizer=torch.optim.SGD(model.parameters(), lr=0.1), stop=stop,
                      on_batch=on_batch)
    # the first batch is counted when the second has run; the stop ends the epoch there
    assert stats.interrupted and seen == [4, 4] and stats.images == 8


def test_validation_batches_grow_to_256_at_most_4x() -> None:
    assert [val_batch_size(n) for n in (2, 8, 64, 100, 256, 512)] == [8, 32, 256, 256, 256, 512]


class _Broken(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> Batch:
        raise ValueError(f"image {i} cannot be read")


def test_a_worker_error_leaves_no_worker_behind() -> None:
    """torch raises a worker's error in a way that keeps the DataLoader's iterator alive
    until a garbage collection (which then waits for each worker); the epoch passes the
    error on without that, so the workers are gone as soon as it has been handled."""
    import multiprocessing

    before = set(multiprocessing.active_children())
    loader = torch.utils.data.DataLoader(_Broken(), batch_size=2, num_workers=2)
    with pytest.raises(ValueError, match="cannot be read"):
        run_epoch(_model(), loader, nn.CrossEntropyLoss(), "cpu")  # type: ignore[arg-type]
    assert set(multiprocessing.active_children()) <= before


class Loader(list):
    """A list of batches with a DataLoader's ``batch_size``."""

    batch_size = 4


class SeesAutotuning(nn.Linear):
    """Records, per batch size, whether cuDNN's autotuning was on as it ran (forward and,
    for training, backward)."""

    def __init__(self) -> None:
        super().__init__(3, 2)
        self.seen: list[tuple[int, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((len(x), torch.backends.cudnn.benchmark))
        out = super().forward(x)
        if out.requires_grad:
            out.register_hook(lambda g: self.seen.append((-len(g), torch.backends.cudnn.benchmark)))
        return out


@pytest.mark.parametrize("train", [True, False])
def test_the_shorter_last_batch_runs_on_heuristics_and_autotuning_comes_back(train: bool) -> None:
    from pochitrain.training.epoch import warm_up

    model = SeesAutotuning()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1) if train else None
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        run_epoch(model, Loader(_batches([4, 4, 3])), nn.CrossEntropyLoss(),  # type: ignore[arg-type]
                  "cpu", optimizer=optimizer)
        assert torch.backends.cudnn.benchmark
        ran = [(4, True), (4, True), (3, False)]
        if train:  # each backward pass as its forward
            ran = [(4, True), (-4, True), (4, True), (-4, True), (3, False), (-3, False)]
        assert model.seen == ran
        model.seen.clear()
        # a plain list has no batch_size (like a DataLoader with a batch sampler): all tuned
        run_epoch(model, _batches([4, 3]), nn.CrossEntropyLoss(), "cpu")  # type: ignore[arg-type]
        assert model.seen == [(4, True), (3, True)]
        model.seen.clear()
        warm_up(model, [], [4, 3], "cpu", eval_sizes=[8, 2])
        assert torch.backends.cudnn.benchmark
        assert [s for s in model.seen if s[0] > 0] == [(4, True), (3, False), (8, True),
                                                       (2, False)]
    finally:
        torch.backends.cudnn.benchmark = before
