"""Prometheus metrics of one server (its own registry, so apps in one process stay apart).

    pochi_requests_total{path, status}     requests answered, by route and HTTP status
    pochi_request_seconds{path}            latency from the first byte read to the response
    pochi_images_total                     images classified
    pochi_batch_size                       images per model call
    pochi_batch_seconds                    seconds per model call (decode on GPU included)
    pochi_queue_depth                      images admitted and not yet answered
    pochi_queue_rejected_total             requests refused with 503 (queue full)
    pochi_body_bytes_in_flight             request body bytes being received or held

With ``--workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set by the parent) every worker writes its
values to that directory and /metrics sums the files of all workers. Status 499: a client
that closed the connection before its body was complete (no answer was sent).
"""

from __future__ import annotations

import os
from collections.abc import Callable

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when it is imported

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)


class Metrics:
    def __init__(self, queue_depth: Callable[[], float]) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            disable_created_metrics,
        )

        disable_created_metrics()  # no *_created series: the counters' start is known
        self.registry = r = CollectorRegistry()
        self.requests = Counter("pochi_requests", "HTTP requests answered",
                                ["path", "status"], registry=r)
        self.latency = Histogram("pochi_request_seconds", "request latency in seconds",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("pochi_images", "images classified", registry=r)
        self.batch_size = Histogram("pochi_batch_size", "images per model call",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("pochi_batch_seconds", "seconds per model call",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.queue_depth = Gauge("pochi_queue_depth", "images admitted and not yet answered",
                                 registry=r, multiprocess_mode="livesum")
        if not self.multiprocess:  # a callback cannot be read from another process
            self.queue_depth.set_function(queue_depth)
        self.body_bytes = Gauge("pochi_body_bytes_in_flight", "request body bytes being "
                                "received or held (--max-inflight-mb)", registry=r,
                                multiprocess_mode="livesum")
        self.rejected = Counter("pochi_queue_rejected", "requests refused with 503 (queue "
                                "full)", registry=r)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        self.requests.labels(path, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def queued(self, n: int) -> None:
        """``n`` images admitted (negative: answered); only counted here with workers."""
        if self.multiprocess:
            self.queue_depth.inc(n)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.images.inc(size)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = self.registry
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST

