"""The starter's Prometheus metrics, served at /metrics in the text format.

- webhooks received, by provider, event and outcome (what the starter did with them);
- webhook signature (GitHub) and token (GitLab) failures, by provider;
- answer latency, by method, route template (never the raw path) and status;
- running previews by state, counted in Temporal's visibility store per `PreviewState`
  value when scraped, at most once every few seconds (workflows cannot keep a global
  gauge themselves).

Each app has its own registry, so several apps in one process (tests) do not collide.
Label values come from fixed sets: an event the starter does not handle is "other", an
unknown method "other", an unmatched path "unmatched"; nothing from a payload, header
value or URL reaches a label.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ParamSpec, TypeVar

from fastapi import HTTPException, Request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import Client

from starter.events import INSTALLATION_EVENTS, WAKE_EVENTS
from workflows.preview import PreviewState

log = logging.getLogger("preview.starter.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Events each provider's route handles; any other is counted as "other".
KNOWN_EVENTS: Mapping[str, frozenset[str]] = {
    "github": frozenset({"pull_request", "ping", *INSTALLATION_EVENTS, *WAKE_EVENTS}),
    "gitlab": frozenset({"Merge Request Hook"}),
}
# What a refused delivery is counted as, by the status the starter answered.
REFUSED = {400: "invalid", 401: "unauthorized", 413: "too_large", 422: "invalid"}
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# From a cached answer (ms) to a Temporal signal-with-start under load (seconds).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STATES_QUERY = ("WorkflowType = 'PreviewEnvironmentWorkflow' AND ExecutionStatus = 'Running' "
                "AND PreviewState = '{state}'")

P = ParamSpec("P")
T = TypeVar("T")


class PreviewStates(Collector):
    """The gauge of running previews by state, from Temporal's visibility counts: one
    count per state, side by side (GROUP BY works on ExecutionStatus only)."""

    def __init__(self, client: Client, cache_seconds: float, failures: Counter) -> None:
        self._client = client
        self._cache_seconds = cache_seconds
        self._failures = failures
        self._counts: dict[str, int] | None = None
        self._counted_at = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Count again unless the last count is recent; concurrent scrapes share one."""
        async with self._lock:
            if time.monotonic() - self._counted_at < self._cache_seconds:
                return
            states = [state.value for state in PreviewState]
            try:
                counts = await asyncio.gather(*(self._client.count_workflows(
                    STATES_QUERY.format(state=state)) for state in states))
            except Exception as error:  # Temporal down: no gauge rather than a stale one
                self._failures.inc()
                self._counts = None
                log.warning("previews by state not counted: %s", type(error).__name__)
            else:
                self._counts = {state: c.count for state, c in zip(states, counts, strict=True)}
            self._counted_at = time.monotonic()

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily("preview_environments", "Running preview environments by "
                                 "state (Temporal visibility, counted at most every few "
                                 "seconds)", labels=["state"])

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        if self._counts is None:
            return []
        family = self._family()
        for state, count in self._counts.items():
            family.add_metric([state], count)
        return [family]


class StarterMetrics:
    def __init__(self, client: Client, *, cache_seconds: float = 5.0) -> None:
        # No `<name>_created` series beside each counter and histogram: Prometheus does not
        # need them and they double what is stored (a process-wide switch of the client).
        disable_created_metrics()
        self.registry = CollectorRegistry()
        # prometheus_client appends _total to counters (and would strip one given here).
        self.webhooks = Counter(
            "preview_webhooks_received", "Webhook deliveries by provider, event and outcome "
            "(deployed, destroyed, ignored, duplicate, pong, installation, woken; refused: "
            "unauthorized, invalid, too_large; unavailable, error)",
            ["provider", "event", "outcome"], registry=self.registry)
        self.signature_failures = Counter(
            "preview_webhook_signature_failures", "Deliveries whose signature (GitHub) or "
            "token (GitLab) was missing or wrong", ["provider"], registry=self.registry)
        self.latency = Histogram(
            "preview_http_request_duration_seconds", "Time to answer a request, by method, "
            "route template and status", ["method", "route", "status"],
            buckets=LATENCY_BUCKETS, registry=self.registry)
        count_failures = Counter(
            "preview_visibility_count_failures", "Scrapes whose count of previews by state "
            "failed (the gauge is then absent)", registry=self.registry)
        self.states = PreviewStates(client, cache_seconds, count_failures)
        self.registry.register(self.states)

    def webhook(self, provider: str, event: str, outcome: str) -> None:
        known = event if event in KNOWN_EVENTS.get(provider, ()) else "other"
        self.webhooks.labels(provider=provider, event=known, outcome=outcome).inc()

    def signature_failed(self, provider: str) -> None:
        self.signature_failures.labels(provider=provider).inc()

    def answered(self, method: str, route: str, status: int, seconds: float) -> None:
        self.latency.labels(method=method if method in METHODS else "other", route=route,
                            status=str(status)).observe(seconds)

    async def exposition(self) -> bytes:
        await self.states.refresh()
        return generate_latest(self.registry)


def of(request: Request) -> StarterMetrics:
    metrics: StarterMetrics = request.app.state.metrics
    return metrics


def counted_webhook(provider: str, event_parameter: str, *, unavailable: type[Exception],
                    ) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Counts each delivery a webhook route handles by the outcome it answers with (an
    answer's `outcome`, or what a refusal means; `unavailable`: Temporal or the store is
    down, answered 503). FastAPI reads the route's parameters through the wrapper
    (functools.wraps)."""

    def decorate(route: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(route)
        async def counting(*args: P.args, **kwargs: P.kwargs) -> T:
            request = kwargs["request"]
            assert isinstance(request, Request)
            event = str(kwargs.get(event_parameter, ""))
            try:
                answer = await route(*args, **kwargs)
            except HTTPException as refusal:
                of(request).webhook(provider, event, REFUSED.get(refusal.status_code, "error"))
                raise
            except unavailable:
                of(request).webhook(provider, event, "unavailable")
                raise
            except Exception:
                of(request).webhook(provider, event, "error")
                raise
            of(request).webhook(provider, event, str(getattr(answer, "outcome", "error")))
            return answer

        return counting

    return decorate


class RequestTimer:
    """ASGI middleware: each answer's latency under its route's template."""

    def __init__(self, app: ASGIApp, metrics: StarterMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless an answer starts

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            # The router puts the matched route in the scope: its template, not the path.
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.answered(scope["method"], template, status,
                                  time.perf_counter() - started)
