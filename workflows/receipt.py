"""After a teardown, look again from outside: list every cluster, AWS target and
database server the preview used (the orphan sweeper's listings, on the worker that
reaches each) and report what still carries the environment's marks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from domain.feedback import TeardownReceipt
    from domain.plan import Step
    from domain.receipt import checks_for, leftovers
    from workflows.saga import failure_message

# A tenant's worker that is down must not hold the receipt (nor the PR comment) for long.
TENANT_PICKUP = timedelta(minutes=2)


async def teardown_receipt(environment: str, used: Sequence[Step],
                           removed: list[str]) -> TeardownReceipt:
    left: list[str] = []
    checked: list[str] = []
    unchecked: list[str] = []
    for check in checks_for(used):
        try:
            listed = await workflow.execute_activity(
                check.activity.name, args=[] if check.argument is None else [check.argument],
                result_type=check.activity.output, task_queue=check.task_queue,
                schedule_to_start_timeout=TENANT_PICKUP if check.task_queue else None,
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=timedelta(minutes=2),
                retry_policy=RetryPolicy(maximum_attempts=3),
                summary=f"check {check.system} holds nothing of {environment}",
            )
        except ActivityError as error:
            unchecked.append(f"{check.system}: {failure_message(error)}")
            continue
        checked.append(check.system)
        left += leftovers(check, listed, environment)
    return TeardownReceipt(finished_at=workflow.now(), removed=removed, checked=checked,
                           leftovers=left, unchecked=unchecked)
