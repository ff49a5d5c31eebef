"""A generic saga over a plan: converge to it, undo on failure, tear it all down.

The runner knows nothing about namespaces or databases: every step names the activity
that makes it present and the one that makes it absent. The ledger records each step
*before* its activity starts (undo registered before do), so a step that fails half
way, or a worker killed mid-step, is still undone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from domain.errors import NON_RETRYABLE
    from domain.plan import Plan, Step
    from domain.resources import Spec, StepInput, StepOutput
    from workflows.metrics import step_undone, step_waited, timed_step


class AppliedStep(BaseModel):
    step: Step
    output: StepOutput | None = None
    complete: bool = False


class Ledger(BaseModel):
    """What exists (or may exist) because of this environment, oldest first."""

    entries: list[AppliedStep] = Field(default_factory=list)

    def find(self, key: str) -> AppliedStep | None:
        return next((e for e in self.entries if e.step.key == key), None)

    def put(self, entry: AppliedStep) -> None:
        for i, existing in enumerate(self.entries):
            if existing.step.key == entry.step.key:
                self.entries[i] = entry
                return
        self.entries.append(entry)

    def drop(self, key: str) -> None:
        self.entries = [e for e in self.entries if e.step.key != key]

    def counts(self) -> tuple[int, int]:
        return sum(e.complete for e in self.entries), len(self.entries)

    def resources(self) -> list[str]:
        """One line per resource that exists: its summary, and how it was made."""
        lines = []
        for entry in self.entries:
            if entry.complete:
                detail = entry.output.detail if entry.output else ""
                line = entry.step.summary or entry.step.key
                lines.append(f"{line} ({detail})" if detail else line)
        return lines


class ActivityTimeouts(BaseModel):
    """How long a step may take; tests shorten heartbeats so a killed worker is noticed fast."""

    start_to_close_seconds: float = 1800
    heartbeat_seconds: float = 60  # the longest: each kind of step sets its own below it
    max_attempts: int = 8
    max_interval_seconds: float = 30
    # False: heartbeat_seconds for every step, as before kinds had their own (a baseline).
    heartbeat_per_kind: bool = True

    def heartbeat_for(self, spec: Spec) -> timedelta:
        """The step's kind's own, never above heartbeat_seconds. An activity option only
        (not in the command's identity): safe to change under running workflows."""
        seconds = self.heartbeat_seconds
        if self.heartbeat_per_kind:
            seconds = min(seconds, type(spec).heartbeat_seconds)
        return timedelta(seconds=seconds)


class StepFailed(Exception):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"step {key} failed: {message}")
        self.key = key
        self.message = message


class _Undo(BaseModel):
    action: Literal["remove", "restore"]
    key: str
    previous: AppliedStep | None = None


def failure_message(error: BaseException) -> str:
    """The root cause an operator can act on, not the wrapper chain."""
    while isinstance(error, ActivityError | FailureError) and error.cause is not None:
        error = error.cause
    return getattr(error, "message", None) or str(error)


WAIT_FIRST_SECONDS, WAIT_MAX_SECONDS = 2.0, 30.0  # asking again: backs off to 30 s


async def _nothing_waits(_: Step, __: str | None) -> None:
    return None


def step_kind(step: Step) -> str:
    """The resource kind: a bounded label of the step's metrics (never its key)."""
    return str(getattr(step.spec, "kind", type(step.spec).__name__))


_ACTIONS = {"ensure": "present", "check again": "recheck", "remove": "absent"}


class SagaRunner:
    def __init__(
        self,
        ledger: Ledger,
        timeouts: ActivityTimeouts,
        on_progress: Callable[[], None] = lambda: None,
        on_waiting: Callable[[Step, str | None], Awaitable[None]] = _nothing_waits,
    ) -> None:
        self.ledger = ledger
        self.timeouts = timeouts
        self._on_progress = on_progress
        self._on_waiting = on_waiting  # a step waits (its reason), or no longer (None)
        self._woken = False

    def wake(self) -> None:
        """Something a waiting step waits for may have happened: ask again now."""
        self._woken = True

    # -- activities ---------------------------------------------------------------

    async def _execute(self, activity: str, step: Step, verb: str) -> StepOutput | None:
        upstream = {
            dep: entry.output
            for dep in step.depends_on
            if (entry := self.ledger.find(dep)) is not None and entry.output is not None
        }
        t = self.timeouts
        with timed_step(step_kind(step), _ACTIONS.get(verb, verb)):  # where the time goes
            return await workflow.execute_activity(
                activity,
                StepInput(spec=step.spec, upstream=upstream),
                result_type=StepOutput,
                task_queue=step.task_queue or workflow.info().task_queue,
                start_to_close_timeout=timedelta(seconds=t.start_to_close_seconds),
                heartbeat_timeout=t.heartbeat_for(step.spec),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=1),
                    maximum_interval=timedelta(seconds=t.max_interval_seconds),
                    maximum_attempts=t.max_attempts,
                    non_retryable_error_types=NON_RETRYABLE,
                ),
                summary=f"{verb} {step.summary or step.key}",
            )

    async def _make_present(self, step: Step) -> None:
        output = await self._execute(step.present, step, "ensure")
        if output is not None and output.waiting:
            output = await self._until_present(step, output.waiting)
        self.ledger.put(AppliedStep(step=step, output=output, complete=True))
        self._on_progress()

    async def _until_present(self, step: Step, reason: str) -> StepOutput | None:
        """Ask again, on a durable timer that backs off (or when woken), until the step
        is there or its wait_seconds are spent; then it fails with the last reason."""
        started = workflow.now()
        deadline = started + timedelta(seconds=step.wait_seconds)
        delay = WAIT_FIRST_SECONDS
        while True:
            left = (deadline - workflow.now()).total_seconds()
            if left <= 0:
                step_waited(step_kind(step), started, "gave_up")
                await self._on_waiting(step, None)
                raise ApplicationError(f"{reason}; gave up after {step.wait_seconds} s",
                                       type="WaitedTooLong", non_retryable=True)
            await self._on_waiting(step, reason)
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(lambda: self._woken,
                                              timeout=timedelta(seconds=min(delay, left)))
            delay = min(delay * 2, WAIT_MAX_SECONDS)
            # A wake from here on may mean what this check cannot see yet: keep it.
            self._woken = False
            output = await self._execute(step.present, step, "check again")
            if output is None or not output.waiting:
                step_waited(step_kind(step), started, "present")
                await self._on_waiting(step, None)
                return output
            reason = output.waiting

    async def _make_absent(self, key: str) -> None:
        entry = self.ledger.find(key)
        if entry is None:
            return
        if entry.step.absent:
            await self._execute(entry.step.absent, entry.step, "remove")
        self.ledger.drop(key)
        self._on_progress()

    # -- converge -----------------------------------------------------------------

    async def apply(self, plan: Plan) -> None:
        """Make the environment match `plan`; on failure undo this call's work and raise.

        New steps are created, changed steps re-applied (and any step whose dependency
        re-ran), unchanged ones skipped, and steps the plan no longer has removed.
        Undo of a new step removes it; undo of a changed step restores its old spec.
        """
        undo: list[_Undo] = []
        rerun: set[str] = set()

        async def converge(step: Step) -> None:
            old = self.ledger.find(step.key)
            if (old and old.complete and old.step == step
                    and not rerun.intersection(step.depends_on)):
                return
            rerun.add(step.key)
            if old is None:
                undo.append(_Undo(action="remove", key=step.key))
                self.ledger.put(AppliedStep(step=step))  # registered before the do
            elif old.complete:
                undo.append(_Undo(action="restore", key=step.key, previous=old))
            await self._make_present(step)

        deps = {s.key: set(s.depends_on) for s in plan.steps}
        try:
            await run_dag([s.key for s in plan.steps], deps,
                          lambda key: converge(plan.step(key)))
        except StepFailed:
            await self._compensate(undo)
            raise
        obsolete = [e.step.key for e in self.ledger.entries if e.step.key not in deps]
        await self.remove(obsolete)

    async def _compensate(self, undo: list[_Undo]) -> None:
        """Undo newest first. An undo that fails does not stop the others: its entry
        stays in the ledger, so the environment's teardown tries it again."""
        for item in reversed(undo):
            entry = item.previous or self.ledger.find(item.key)  # read before it is dropped
            kind = step_kind(entry.step) if entry is not None else "unknown"
            try:
                if item.action == "remove":
                    await self._make_absent(item.key)
                elif item.previous is not None:
                    await self._make_present(item.previous.step)
            except (ActivityError, ApplicationError) as error:
                step_undone(kind, "failed")
                workflow.logger.warning("undo of %s failed: %s", item.key,
                                        failure_message(error))
            else:
                step_undone(kind, "succeeded")

    async def remove(self, keys: Iterable[str]) -> None:
        """Remove entries, dependents before what they depend on, in parallel where free."""
        wanted = set(keys)
        deps: dict[str, set[str]] = {k: set() for k in wanted}
        for entry in self.ledger.entries:
            for dep in entry.step.depends_on:
                if dep in wanted and entry.step.key in wanted:
                    deps[dep].add(entry.step.key)
        ordered = [e.step.key for e in reversed(self.ledger.entries) if e.step.key in wanted]
        await run_dag(ordered, deps, self._make_absent)

    async def teardown(self) -> None:
        await self.remove([e.step.key for e in self.ledger.entries])


async def run_dag(
    keys: list[str],
    deps: dict[str, set[str]],
    action: Callable[[str], Awaitable[None]],
) -> None:
    """Run `action` for every key once its dependencies are done; parallel where free.

    On the first failure no new work starts; running work finishes (so its ledger
    entry is accurate), then StepFailed names the first step that failed.
    """
    done: set[str] = set()
    running: dict[asyncio.Task[None], str] = {}
    pending = list(keys)
    failure: StepFailed | None = None
    inside = set(keys)  # dependencies outside this run count as met
    while pending or running:
        if failure is None:
            for key in [k for k in pending if deps.get(k, set()) & inside <= done]:
                pending.remove(key)
                running[asyncio.ensure_future(action(key))] = key
        if not running:
            break
        finished, _ = await workflow.wait(list(running), return_when=asyncio.FIRST_COMPLETED)
        for task in finished:
            key = running.pop(task)
            error = task.exception()
            if error is None:
                done.add(key)
            elif failure is None:
                if not isinstance(error, ActivityError | ApplicationError | FailureError):
                    raise error
                failure = StepFailed(key, failure_message(error))
        if failure is not None and not running:
            break
    if failure is not None:
        raise failure
