"""Prometheus metrics of one server: requests, errors, latency, batch sizes, images the decoder converted (served
at ``GET /metrics``)."""
from __future__ import annotations

from typing import Iterable

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's collectors, in a registry of their own (so that two apps in one process do not clash)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("mobilenetv3_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)
        self.errors = Counter("mobilenetv3_request_errors", "requests answered with an error (4xx or 5xx)",
                              ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("mobilenetv3_request_latency_seconds", "time from request to response",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("mobilenetv3_batch_size", "images per model run", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.inference = Histogram("mobilenetv3_inference_seconds", "time of one model run (one batch)",
                                   buckets=LATENCY_BUCKETS, registry=self.registry)
        self.images = Counter("mobilenetv3_images", "images classified", registry=self.registry)
        self.converted = Counter("mobilenetv3_images_converted", "uploads the decoder converted to show them as an "
                                 "image viewer does, by conversion (exif_rotated, high_depth_scaled, "
                                 "alpha_composited, cmyk_converted, icc_converted)", ["conversion"],
                                 registry=self.registry)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, images: int, seconds: float) -> None:
        self.batch_size.observe(images)
        self.inference.observe(seconds)
        self.images.inc(images)

    def observe_conversions(self, conversions: Iterable) -> None:
        """Adds what the decoder converted (``data.images.Conversions``, one per upload)."""
        for each in conversions:
            for name, count in each.counts().items():
                self.converted.labels(name).inc(count)

    def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
