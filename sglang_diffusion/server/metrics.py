"""Prometheus metrics, in a registry of the app's own (no process-global state), served as text
at /metrics. Every label comes from a closed set, so that no request can grow the number of
series: routes by their template (`/v1/videos/{video_id}`, `unmatched` for any other path),
methods from the HTTP methods the API uses (`other` for the rest)."""

from __future__ import annotations

import time

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sglang_diffusion.runtime.result import GenerationResult

_PREFIX = "sglang_diffusion_"
# Generation times span tiny CPU models (tens of ms) to large video models (many minutes).
_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, float("inf"))
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, float("inf"))
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
UNMATCHED = "unmatched"


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
        self.batch_size = Histogram(_PREFIX + "batch_size", "Outputs of the forward each generation ran in "
                                    "(its own alone; more when batched with compatible requests, --max-batch-size).",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.errors = Counter(_PREFIX + "generation_errors", "Generations that failed, by error.", ["error"],
                              registry=r)
        self.jobs = Counter(_PREFIX + "video_jobs_finished", "Video jobs finished, by outcome.", ["status"],
                            registry=r)
        self.uploads = Counter(_PREFIX + "uploads", "Cloud uploads, by result.", ["result"], registry=r)
        self.abandoned = Counter(_PREFIX + "abandoned_requests", "Image requests whose client went away, by "
                                 "where they were then (queued: dropped; running: stopped at the next step).",
                                 ["stage"], registry=r)

    def observe_result(self, result: GenerationResult) -> None:
        for stage, seconds in result.timings.items():
            self.stage_seconds.labels(stage).observe(seconds)
        self.batch_size.observe(result.batch_size)

    def observe_error(self, error: BaseException) -> None:
        self.errors.labels(type(error).__name__).inc()

    def observe_upload(self, ok: bool) -> None:
        self.uploads.labels("ok" if ok else "failed").inc()

    def install(self, app: FastAPI) -> None:
        """/metrics, and the outermost layer of the app, which counts every request."""
        app.add_middleware(_Measure, metrics=self)

        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class _Measure:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", UNMATCHED)
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
