"""kill -9 of the worker at every activity boundary of create, redeploy and destroy.

For each boundary a worker subprocess with a kill switch SIGKILLs itself right before
or right after the N-th activity of one type; a fresh worker (no kill switch) takes
over, and the environment must converge: Ready after a create or a redeploy, gone
after a destroy. Every run ends with a destroy and the check, from outside (kubectl,
pg_database, Route53 in moto, the store's preview_slots), that nothing is left.

The boundaries come from the plan itself, so a new kind of resource is covered
without touching this file.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from temporalio.client import WorkflowHandle

from domain.naming import environment_id
from domain.plan import Plan
from starter import lifecycle
from tests.faults.support import (
    CONVERGE_TIMEOUT,
    FIRST_SHA,
    REPOSITORY,
    SECOND_SHA,
    FaultStack,
    WorkerProcess,
    converged,
    destroyed,
    plan_for,
    pull_request,
    retried_after_timeout,
    search_state,
    unique_number,
    until,
)
from workflows.saga import ActivityTimeouts

pytestmark = [pytest.mark.slow, pytest.mark.kube]

# Short heartbeats: the server notices a dead worker's activity within seconds.
TIMEOUTS = ActivityTimeouts(heartbeat_seconds=5, max_interval_seconds=2, max_attempts=8)


@dataclass(frozen=True)
class Boundary:
    phase: str  # create | redeploy | destroy
    activity: str
    nth: int  # which activity of that type this worker process runs (1 = its first)
    when: str  # before | after
    step: str  # the first plan step that runs it (for messages)

    @property
    def id(self) -> str:
        return f"{self.phase}-{self.when}-{self.activity}"

    def kill_env(self) -> dict[str, str]:
        return {"PREVIEW_FAULT_ACTIVITY": self.activity, "PREVIEW_FAULT_NTH": str(self.nth),
                "PREVIEW_FAULT_WHEN": self.when}


def rerun_on_new_commit(first: Plan, second: Plan) -> list[str]:
    """Steps the saga runs again for a new commit: changed specs, and what depends on them."""
    rerun: list[str] = []
    for step in second.steps:  # topological order
        if step != first.step(step.key) or set(step.depends_on) & set(rerun):
            rerun.append(step.key)
    return rerun


def boundaries() -> list[Boundary]:
    """Before and after each activity type of the plan: its `present` activities for a
    create, those of the steps a new commit re-runs for a redeploy, its `absent` ones for
    a destroy. One run per activity type: steps of one type run the same code."""
    first, second = plan_for(pull_request(1, FIRST_SHA)), plan_for(pull_request(1, SECOND_SHA))
    created = Counter(step.present for step in first.steps)
    found: list[Boundary] = []
    for when in ("before", "after"):
        seen: set[str] = set()
        for step in first.steps:
            if step.present not in seen:
                seen.add(step.present)
                found.append(Boundary("create", step.present, 1, when, step.key))
        seen.clear()
        for key in rerun_on_new_commit(first, second):
            step = second.step(key)
            if step.present not in seen:
                seen.add(step.present)
                # The kill worker ran every create activity first: count past them.
                found.append(Boundary("redeploy", step.present, created[step.present] + 1,
                                      when, step.key))
        seen.clear()
        for step in reversed(first.steps):  # teardown runs newest first
            if step.absent and step.absent not in seen:
                seen.add(step.absent)
                found.append(Boundary("destroy", step.absent, 1, when, step.key))
    order = {"create": 0, "redeploy": 1, "destroy": 2}
    return sorted(found, key=lambda b: (order[b.phase], b.when != "before"))


BOUNDARIES = boundaries()


def test_boundaries_cover_the_plan() -> None:
    """The derivation is not vacuous: every system is on the path, both ways."""
    ids = {b.id for b in BOUNDARIES}
    for activity in ("claim_preview_slot", "ensure_namespace", "ensure_database_clone",
                     "ensure_config_map", "ensure_secret", "ensure_application",
                     "ensure_ingress", "ensure_dns_records"):
        assert {f"create-before-{activity}", f"create-after-{activity}"} <= ids
    for activity in ("release_preview_slot", "remove_namespace", "remove_database_clone",
                     "remove_dns_records", "remove_application"):
        assert {f"destroy-before-{activity}", f"destroy-after-{activity}"} <= ids
    assert {b.activity for b in BOUNDARIES if b.phase == "redeploy"} >= {
        "ensure_config_map", "ensure_application"}


async def killed(doomed: WorkerProcess, handle: WorkflowHandle[Any, Any], boundary: Boundary,
                 goal_sha: str | None) -> None:
    """Wait for the kill switch; fail fast if the workflow got past the boundary without
    it (Ready at `goal_sha`, or finished): the boundary was never reached."""
    async def dead_or_past() -> bool:
        if not doomed.running:
            return True
        state, head, status = await search_state(handle)
        missed = status != "RUNNING" or (state == "ready" and head == goal_sha)
        assert not missed, (f"{boundary.id} (step {boundary.step}): the workflow is {status}/"
                            f"{state} and the kill switch never fired\n{doomed.output}")
        return False

    await until(dead_or_past, CONVERGE_TIMEOUT, "the kill switch")
    code = await doomed.wait_exit(10)
    assert code == -9 and doomed.killed_itself, (
        f"the worker exited with {code}, not by its kill switch\n{doomed.output}")


# --- one run -----------------------------------------------------------------------------


async def run(stack: FaultStack, boundary: Boundary) -> dict[str, float]:
    """Kill at `boundary`, recover with a fresh worker, destroy; → seconds per phase."""
    # A task queue of its own: no other run's worker can take (or die with) its tasks.
    settings = stack.settings.model_copy(update={"task_queue": f"faults-{uuid.uuid4().hex[:8]}"})
    queue = settings.task_queue
    number = unique_number()
    phases: dict[str, float] = {}
    started = time.monotonic()

    def mark(phase: str) -> None:
        phases[phase] = round(time.monotonic() - started, 1)

    goal = {"create": FIRST_SHA, "redeploy": SECOND_SHA}.get(boundary.phase)  # Ready at
    doomed = stack.worker(boundary.kill_env(), f"kill worker ({boundary.id})", settings)
    fresh = stack.worker(None, "fresh worker", settings)
    try:
        await doomed.start()
        mark("kill worker up")
        handle = await lifecycle.deploy(stack.client, pull_request(number, FIRST_SHA),
                                        task_queue=queue, timeouts=TIMEOUTS)
        if boundary.phase != "create":
            await converged(stack, handle, FIRST_SHA, doomed)
            mark("created")
            if boundary.phase == "redeploy":
                await lifecycle.deploy(stack.client, pull_request(number, SECOND_SHA, 1),
                                       task_queue=queue, timeouts=TIMEOUTS)
            else:
                assert await lifecycle.destroy(stack.client, REPOSITORY, number, "closed")
        await killed(doomed, handle, boundary, goal)
        mark("killed")
        await fresh.start()
        mark("fresh worker up")
        if goal is None:
            await destroyed(handle, fresh)
            mark("gone")
        else:
            await converged(stack, handle, goal, fresh)
            mark("ready")
            assert await lifecycle.destroy(stack.client, REPOSITORY, number, "closed")
            await destroyed(handle, fresh)
            mark("gone")
        # The kill landed inside that activity: the server timed it out and ran it again.
        assert await retried_after_timeout(handle, boundary.activity), (
            f"no {boundary.activity} was retried after a timeout")
    finally:
        await doomed.stop()
        await fresh.stop()
    left = await stack.leftovers(number)
    assert left == [], f"left behind by {environment_id(REPOSITORY, number)}: {left}"
    mark("total")
    return phases


class Runner:
    """Runs the selected boundaries a few at a time, in test order.

    Most of a run is waiting (for a heartbeat timeout, a sticky-queue timeout, a
    rollout), so runs overlap well even on 2 cores; each test case still checks exactly
    one run, and fails alone."""

    def __init__(self, stack: FaultStack, order: list[Boundary], concurrency: int) -> None:
        self.stack = stack
        self.order = order
        self.slots = asyncio.Semaphore(concurrency)
        self.tasks: dict[str, asyncio.Task[dict[str, float]]] = {}
        self.started = time.monotonic()

    async def _run(self, boundary: Boundary) -> dict[str, float]:
        async with self.slots:
            return await run(self.stack, boundary)

    async def result(self, boundary: Boundary) -> dict[str, float]:
        if not self.tasks:  # the semaphore is FIFO: they start in test order
            self.tasks = {b.id: asyncio.ensure_future(self._run(b)) for b in self.order}
        return await self.tasks[boundary.id]

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()  # a run never awaited (e.g. after -x): stop it and its workers
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


@pytest.fixture(scope="module")
async def runner(fault_stack: FaultStack, request: pytest.FixtureRequest,
                 ) -> AsyncIterator[Runner]:
    selected = {str(getattr(item.callspec.params["boundary"], "id", ""))
                for item in request.session.items
                if isinstance(item, pytest.Function)
                and item.originalname == "test_kill_at_boundary"
                and item.module is request.module}
    concurrency = int(os.environ.get("PREVIEW_FAULT_CONCURRENCY", "4"))
    runner = Runner(fault_stack, [b for b in BOUNDARIES if b.id in selected], concurrency)
    yield runner
    await runner.close()
    if fault_stack.timings:
        wall = time.monotonic() - runner.started
        print(f"\nkill -9 runs: {len(fault_stack.timings)} in {wall:.0f}s wall "
              f"(concurrency {concurrency})")
        for name, phases in fault_stack.timings.items():
            print(f"  {name}: " + ", ".join(f"{k} {v}s" for k, v in phases.items()))


# --- the test ----------------------------------------------------------------------------


@pytest.mark.parametrize("boundary", BOUNDARIES, ids=lambda b: b.id)
async def test_kill_at_boundary(fault_stack: FaultStack, runner: Runner,
                                boundary: Boundary) -> None:
    phases = await runner.result(boundary)
    fault_stack.timings[boundary.id] = phases
    print(f"{boundary.id}: " + ", ".join(f"{k} {v}s" for k, v in phases.items()))
