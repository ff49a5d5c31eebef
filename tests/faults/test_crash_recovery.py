"""A worker killed mid-step: another worker, already polling, runs the step again fast.

Two workers poll one task queue, armed alike (tests/faults/worker_process.py): whichever
runs the first attempt of the target step SIGKILLs itself a moment into it. The other
must start the retried attempt within RECOVERY_LIMIT seconds of the kill, with the
engine's own heartbeat timeouts (per kind of step, domain/resources.py; nothing
shortened here), and the preview must then converge, be destroyed and leave nothing.

bench/crash_recovery.py measures the same thing at random moments of a create.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

from domain.naming import environment_id
from starter import lifecycle
from tests.faults.support import (
    CONVERGE_TIMEOUT,
    FIRST_SHA,
    REPOSITORY,
    AttemptStart,
    FaultStack,
    WorkerProcess,
    converged,
    destroyed,
    pull_request,
    restarted,
    retried_after_timeout,
    retry_started_at,
    unique_number,
    until,
)

pytestmark = [pytest.mark.slow, pytest.mark.kube]

RECOVERY_LIMIT = 10.0  # seconds from the kill to the retried attempt starting (issue 13)


@dataclass(frozen=True)
class Kind:
    name: str
    activity: str  # the first step running it is the one killed
    delay: float  # seconds into the activity (or at its end, if sooner)


KINDS = [
    Kind("kubernetes-rollout", "ensure_application", 1.0),  # mid-poll of the rollout
    Kind("postgresql-clone", "ensure_database_clone", 0.3),
    Kind("route53-dns", "ensure_dns_records", 0.3),
]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
async def test_killed_step_runs_again_within_seconds(fault_stack: FaultStack,
                                                     kind: Kind) -> None:
    settings = fault_stack.settings.model_copy(
        update={"task_queue": f"faults-{uuid.uuid4().hex[:8]}"})
    armed = {"PREVIEW_FAULT_ACTIVITY": kind.activity, "PREVIEW_FAULT_NTH": "1",
             "PREVIEW_FAULT_WHEN": "during", "PREVIEW_FAULT_DELAY": str(kind.delay),
             "PREVIEW_FAULT_TRACE": "1"}
    workers = [fault_stack.worker(armed, f"worker {n}", settings) for n in (1, 2)]
    number = unique_number()
    try:
        for worker in workers:
            await worker.start()
        handle = await lifecycle.deploy(fault_stack.client, pull_request(number, FIRST_SHA),
                                        task_queue=settings.task_queue)

        async def one_killed() -> list[WorkerProcess]:
            return [w for w in workers if not w.running]

        dead = await until(one_killed, CONVERGE_TIMEOUT, f"a kill in {kind.activity}")
        assert len(dead) == 1, "\n".join(w.output for w in workers)
        survivor = next(w for w in workers if w.running)
        assert await dead[0].wait_exit(10) == -9
        killed = dead[0].kill_switch_fired()
        assert killed is not None and killed.activity_type == kind.activity, dead[0].output

        async def started_again() -> AttemptStart | None:
            return restarted(killed, [survivor])

        again = await until(started_again, CONVERGE_TIMEOUT, "the retried attempt")
        seconds = again.at - killed.at
        await converged(fault_stack, handle, FIRST_SHA, survivor)
        # From the server's side too: the attempt timed out and ran again, at that time.
        assert await retried_after_timeout(handle, kind.activity)
        server_start = await retry_started_at(handle, killed.activity_id)
        assert server_start is not None
        print(f"{kind.name}: kill → attempt {again.attempt} started {seconds:.2f}s "
              f"(server's ActivityTaskStarted {server_start - killed.at:.2f}s)")
        assert seconds <= RECOVERY_LIMIT, (
            f"{kind.activity} ran again {seconds:.1f}s after the kill\n{survivor.output}")
        assert await lifecycle.destroy(fault_stack.client, REPOSITORY, number, "closed")
        await destroyed(handle, survivor)
    finally:
        for worker in workers:
            await worker.stop()
    left = await fault_stack.leftovers(number)
    assert left == [], f"left behind by {environment_id(REPOSITORY, number)}: {left}"
