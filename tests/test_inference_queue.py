"""Queued runner calls (``runner.submit``) and the GPU input's work groups."""

from __future__ import annotations

from typing import Any

import numpy as np

from pochitrain.bench.result_json import LatencyProbe
from pochitrain.gpu_input.batches import WORK_GROUP, work_group
from pochitrain.inference.runner import Done, submit


class RunOnly:
    """A runner with ``run`` alone (ONNX Runtime, TensorRT): submit runs it at once."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        self.seen.append(len(batch))
        return np.full((len(batch), 2), float(len(batch)), np.float32), 0.5 * len(batch)


class Queues(RunOnly):
    """A runner that queues: its work happens when the result is read."""

    def submit(self, batch: np.ndarray) -> Any:
        runner = self

        class Later:
            def result(self) -> tuple[np.ndarray, float]:
                return runner.run(batch)

        return Later()


def test_work_group_is_a_whole_number_of_batches_reaching_the_minimum() -> None:
    for batch in (1, 3, 32, 64, 100, 256, 300, 512):
        group = work_group(batch)
        assert group % batch == 0 and group >= WORK_GROUP
        assert group - batch < WORK_GROUP  # the smallest such multiple
    assert work_group(32) == WORK_GROUP and work_group(512) == 512


def test_submit_runs_at_once_where_the_runner_cannot_queue() -> None:
    runner = RunOnly()
    pending = submit(runner, np.zeros((3, 1)))
    assert isinstance(pending, Done) and runner.seen == [3]
    logits, pure = pending.result()
    assert logits.shape == (3, 2) and pure == 1.5


def test_submit_queues_where_the_runner_can() -> None:
    runner = Queues()
    pending = submit(runner, np.zeros((4, 1)))
    assert runner.seen == []
    assert pending.result()[1] == 2.0 and runner.seen == [4]


def test_latency_probe_records_queued_calls_when_read_in_order() -> None:
    for runner in (RunOnly(), Queues()):
        probe = LatencyProbe(runner)
        first, second = probe.submit(np.zeros((2, 1))), probe.submit(np.zeros((5, 1)))
        first.result()
        second.result()
        assert probe.calls == [(2, 1.0), (5, 2.5)]
