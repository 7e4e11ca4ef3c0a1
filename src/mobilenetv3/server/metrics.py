"""Prometheus metrics of one server (served at ``GET /metrics``): requests, errors and latency by endpoint; per model
and version, images and model runs (Triton's ``nv_inference_count`` / ``nv_inference_exec_count``: their ratio is
the mean batch size), batch sizes, model run and queue time, requests in flight, rejected and dropped; uploads the
decoder converted.

With ``--workers N`` each worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's
multiprocess mode, which the parent turns on: ``multiprocess_folder``) and a scrape of any worker adds up all
of them.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when it is imported
MODEL = ["model", "version"]


class Metrics:
    """The server's collectors, in a registry of their own (so that two apps in one process do not clash)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("mobilenetv3_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("mobilenetv3_request_errors", "requests answered with an error (4xx or 5xx)",
                              ["endpoint", "status"], registry=r)
        self.latency = Histogram("mobilenetv3_request_latency_seconds", "time from request to response",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference_count = Counter("mobilenetv3_inference_count", "images the model classified (Triton's "
                                       "nv_inference_count); / inference_exec_count: the mean batch size", MODEL,
                                       registry=r)
        self.exec_count = Counter("mobilenetv3_inference_exec_count", "model runs (batches; Triton's "
                                  "nv_inference_exec_count)", MODEL, registry=r)
        self.batch_size = Histogram("mobilenetv3_batch_size", "images per model run", MODEL, buckets=BATCH_BUCKETS,
                                    registry=r)
        self.inference = Histogram("mobilenetv3_inference_seconds", "time of one model run (one batch)", MODEL,
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("mobilenetv3_queue_seconds", "time a request waited in the batcher before its model "
                               "run began", MODEL, buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("mobilenetv3_requests_in_flight", "requests using the model now (decoding, queued or "
                               "running)", MODEL, multiprocess_mode="livesum", registry=r)
        self.rejected = Counter("mobilenetv3_requests_rejected", "requests refused before any work because the "
                                "server was full (503), by reason", MODEL + ["reason"], registry=r)
        self.dropped = Counter("mobilenetv3_requests_dropped", "admitted requests dropped before their model run "
                               "(deadline passed, client gone), by reason", MODEL + ["reason"], registry=r)
        self.converted = Counter("mobilenetv3_images_converted", "uploads the decoder converted to show them as an "
                                 "image viewer does, by conversion (exif_rotated, high_depth_scaled, "
                                 "alpha_composited, cmyk_converted, icc_converted)", ["conversion"], registry=r)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def batch_observer(self, model: str, version: str) -> Callable[[int, float], None]:
        """The batcher's ``on_batch(images, seconds)`` for one model version."""
        images_counter, runs = self.inference_count.labels(model, version), self.exec_count.labels(model, version)
        sizes, times = self.batch_size.labels(model, version), self.inference.labels(model, version)

        def observe_batch(images: int, seconds: float) -> None:
            images_counter.inc(images)
            runs.inc()
            sizes.observe(images)
            times.observe(seconds)

        return observe_batch

    def queue_observer(self, model: str, version: str) -> Callable[[float], None]:
        """Called with each request's wait in the batcher's queue, in seconds."""
        return self.queue.labels(model, version).observe

    @contextmanager
    def request_in_flight(self, model: str, version: str) -> Iterator[None]:
        gauge = self.in_flight.labels(model, version)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def observe_rejected(self, model: str, version: str, reason: str) -> None:
        """A request refused at admission (``reason``: ``queue_full``, ...)."""
        self.rejected.labels(model, version, reason).inc()

    def observe_dropped(self, model: str, version: str, reason: str) -> None:
        """An admitted request dropped before its model run (``reason``: ``deadline``, ``client_gone``, ...)."""
        self.dropped.labels(model, version, reason).inc()

    def observe_conversions(self, conversions: Iterable) -> None:
        """Adds what the decoder converted (``data.images.Conversions``, one per upload)."""
        for each in conversions:
            for name, count in each.counts().items():
                self.converted.labels(name).inc(count)

    def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type: in multiprocess mode, every worker's
        added up."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if not os.environ.get(MULTIPROCESS_VARIABLE):
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """At a worker's exit: its in-flight gauge no longer counts (multiprocess mode)."""
        if os.environ.get(MULTIPROCESS_VARIABLE):
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(os.getpid())


@contextmanager
def multiprocess_folder() -> Iterator[str]:
    """For a parent about to start workers: a fresh folder in ``PROMETHEUS_MULTIPROC_DIR`` (the workers inherit
    it), removed with the variable at exit. Set before any worker imports prometheus_client, as it needs."""
    folder = tempfile.mkdtemp(prefix="mobilenetv3-metrics-")
    previous = os.environ.get(MULTIPROCESS_VARIABLE)
    os.environ[MULTIPROCESS_VARIABLE] = folder
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop(MULTIPROCESS_VARIABLE, None)
        else:
            os.environ[MULTIPROCESS_VARIABLE] = previous
        shutil.rmtree(folder, ignore_errors=True)
