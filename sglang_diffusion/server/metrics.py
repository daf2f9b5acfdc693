"""Prometheus metrics, in a registry of the app's own (no process-global state), served as text
at /metrics. Routes are labelled by their template (`/v1/videos/{video_id}`), never by the raw
path, so that the number of series stays bounded."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.responses import Response

from sglang_diffusion.runtime.result import GenerationResult

_PREFIX = "sglang_diffusion_"
# Generation times span tiny CPU models (tens of ms) to large video models (many minutes).
_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, float("inf"))


class Metrics:
    def __init__(self, queue_capacity: int):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(_PREFIX + "http_requests", "HTTP requests by route, method and status.",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram(_PREFIX + "http_request_seconds", "HTTP request latency by route.", ["route"],
                                 buckets=_SECONDS_BUCKETS, registry=r)
        self.queue_depth = Gauge(_PREFIX + "queue_depth", "Requests waiting for the engine.", registry=r)
        Gauge(_PREFIX + "queue_capacity", "Requests that may wait before 429.", registry=r).set(queue_capacity)
        self.stage_seconds = Histogram(_PREFIX + "stage_seconds", "Seconds per pipeline stage of each generation "
                                       "(stage=total for the whole).", ["stage"], buckets=_SECONDS_BUCKETS, registry=r)
        self.errors = Counter(_PREFIX + "generation_errors", "Generations that failed, by error.", ["error"],
                              registry=r)
        self.jobs = Counter(_PREFIX + "video_jobs_finished", "Video jobs finished, by outcome.", ["status"],
                            registry=r)
        self.uploads = Counter(_PREFIX + "uploads", "Cloud uploads, by result.", ["result"], registry=r)

    def observe_result(self, result: GenerationResult) -> None:
        for stage, seconds in result.timings.items():
            self.stage_seconds.labels(stage).observe(seconds)

    def observe_error(self, error: BaseException) -> None:
        self.errors.labels(type(error).__name__).inc()

    def observe_upload(self, ok: bool) -> None:
        self.uploads.labels("ok" if ok else "failed").inc()

    def install(self, app: FastAPI) -> None:
        @app.middleware("http")
        async def _measure(request: Request, call_next):
            start = time.perf_counter()
            status = 500
            try:
                response = await call_next(request)
                status = response.status_code
                return response
            finally:
                route = getattr(request.scope.get("route"), "path", "unmatched")
                self.requests.labels(route, request.method, str(status)).inc()
                self.latency.labels(route).observe(time.perf_counter() - start)

        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
