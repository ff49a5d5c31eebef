"""The engine's metrics recorded from workflows, through the Temporal SDK's meter.

They appear on the worker's Prometheus endpoint (PREVIEW_WORKER_METRICS_ADDRESS) next to
the SDK's own. `workflow.metric_meter()` is replay safe: nothing is recorded while a
history replays, so a worker restart does not count an operation twice, and a duration
that spans one still starts at the time the history recorded.

Names follow Prometheus once exported: the worker's exporter (worker.telemetry_runtime)
appends `_total` to counters and the unit to histograms (`seconds` → `_seconds`), so the
names here carry neither. Labels are bounded sets only (kinds, actions, outcomes, error
types, system kinds): never a repository, branch, pull request, environment id or URL.
Deterministic: only workflow time, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    FailureError,
)


@dataclass(frozen=True)
class Metric:
    name: str  # as created; exported with the suffix `exported` says
    type: Literal["counter", "histogram"]
    description: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()  # histograms: upper bounds in seconds

    @property
    def exported(self) -> str:
        """The family's name on the endpoint (samples add _bucket, _sum, _count)."""
        return f"{self.name}_total" if self.type == "counter" else f"{self.name}_seconds"


# Seconds: a preview takes from seconds (fake nodes) to half an hour (RDS restores).
_LONG = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
_STEP = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

OPERATION = Metric(
    "preview_operation_duration", "histogram",
    "Time from a preview operation's start (create, redeploy, teardown) to its end state",
    ("operation", "outcome"), _LONG)
STEP_DURATION = Metric(
    "preview_step_duration", "histogram",
    "Time of one saga step's activity (retries included), by resource kind and action",
    ("kind", "action", "outcome"), _STEP)
STEP_WAIT = Metric(
    "preview_step_wait_duration", "histogram",
    "Time a step waited for something outside (an image CI has not pushed) until it was "
    "there or the wait gave up", ("kind", "outcome"), _LONG)
STEP_FAILURES = Metric(
    "preview_step_failures", "counter",
    "Saga step activities that failed after their retries, by kind, action and error type",
    ("kind", "action", "error_type"))
STEP_UNDOS = Metric(
    "preview_step_undos", "counter",
    "Compensations run after a failed deploy (a new step removed, a changed one restored)",
    ("kind", "outcome"))
SWEEP_FOUND = Metric(
    "preview_sweeper_orphans_found", "counter",
    "Environments the orphan sweeper found with no live preview, by system kind",
    ("system",))
SWEEP_REMOVED = Metric(
    "preview_sweeper_orphans_removed", "counter",
    "Orphan environments the sweeper removed something of, by system kind", ("system",))

WORKFLOW_METRICS = (OPERATION, STEP_DURATION, STEP_WAIT, STEP_FAILURES, STEP_UNDOS,
                    SWEEP_FOUND, SWEEP_REMOVED)
# The exporter's bucket overrides are keyed by the name as created (worker.py).
HISTOGRAM_BUCKETS: Mapping[str, tuple[float, ...]] = {
    m.name: m.buckets for m in WORKFLOW_METRICS if m.type == "histogram"}

_SAFE_LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,63}")


def _observe(metric: Metric, seconds: float, **labels: str) -> None:
    meter = workflow.metric_meter()
    meter.create_histogram_float(metric.name, metric.description, "seconds") \
        .with_additional_attributes(labels).record(max(seconds, 0.0))


def _count(metric: Metric, value: int = 1, **labels: str) -> None:
    if value > 0:
        workflow.metric_meter().create_counter(metric.name, metric.description) \
            .with_additional_attributes(labels).add(value)


def _since(started: datetime) -> float:
    return (workflow.now() - started).total_seconds()


def error_type(error: BaseException) -> str:
    """The failure's type as set by the activity (ApplicationError type, or the Python
    exception's class name), a bounded set written in the code; "Other" if odd."""
    while isinstance(error, ActivityError | ChildWorkflowError) and error.cause is not None:
        error = error.cause
    name = (error.type or "ApplicationError") if isinstance(error, ApplicationError) \
        else type(error).__name__
    return name if _SAFE_LABEL.fullmatch(name) else "Other"


# -- the lifecycle ------------------------------------------------------------------------

# A state that starts an operation; any other state ends the one under way.
_STARTS = {"creating": "create", "updating": "redeploy", "destroying": "teardown"}


class OperationClock:
    """Times a preview's operations from its state changes: creating, updating and
    destroying start one; the next other state ends it (ready, failed, skipped,
    destroyed…). Kept by the workflow instance: an operation never spans a
    continue-as-new (the loop only continues between operations)."""

    def __init__(self) -> None:
        self._open: tuple[str, datetime] | None = None

    def state_changed(self, state: str, error: str | None) -> None:
        now = workflow.now()
        if self._open is not None:
            operation, started = self._open
            if state in _STARTS:  # e.g. a redeploy the policy skips, then torn down
                outcome = "interrupted"
            elif state == "skipped":
                outcome = "skipped"
            elif state == "destroyed":
                outcome = "succeeded"
            else:  # ready after a failed redeploy carries its error
                outcome = "failed" if state == "failed" or error else "succeeded"
            _observe(OPERATION, (now - started).total_seconds(),
                     operation=operation, outcome=outcome)
            self._open = None
        if state in _STARTS:
            self._open = (_STARTS[state], now)


# -- the saga ------------------------------------------------------------------------------

@contextmanager
def timed_step(kind: str, action: str) -> Iterator[None]:
    """Around one step's activity: its duration, and its failure by error type."""
    started = workflow.now()
    try:
        yield
    except (ActivityError, ApplicationError, FailureError) as error:
        _observe(STEP_DURATION, _since(started), kind=kind, action=action, outcome="failed")
        _count(STEP_FAILURES, kind=kind, action=action, error_type=error_type(error))
        raise
    _observe(STEP_DURATION, _since(started), kind=kind, action=action, outcome="succeeded")


def step_waited(kind: str, started: datetime, outcome: Literal["present", "gave_up"]) -> None:
    _observe(STEP_WAIT, _since(started), kind=kind, outcome=outcome)


def step_undone(kind: str, outcome: Literal["succeeded", "failed"]) -> None:
    _count(STEP_UNDOS, kind=kind, outcome=outcome)


# -- the orphan sweeper -------------------------------------------------------------------

def system_kind(system: str) -> str:
    """"kubernetes:hipaa" → "kubernetes": cluster names and account ids stay out."""
    kind = system.split(":", 1)[0]
    return kind if kind in ("kubernetes", "aws", "postgres") else "other"


def sweep_found(system: str, orphans: int) -> None:
    _count(SWEEP_FOUND, orphans, system=system_kind(system))


def sweep_removed(system: str) -> None:
    _count(SWEEP_REMOVED, system=system_kind(system))
