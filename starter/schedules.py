"""Temporal Schedules of the engine: golden-copy refreshes and the orphan sweeper."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from workflows.golden import GoldenRefreshRequest, GoldenRefreshWorkflow, refresh_workflow_id
from workflows.sweeper import OrphanSweepWorkflow, SweepRequest

SWEEPER_SCHEDULE_ID = "preview-orphan-sweeper"


async def ensure_schedule(client: Client, schedule_id: str, schedule: Schedule) -> ScheduleHandle:
    """Create the schedule, or bring an existing one up to date.

    Updating keeps the schedule's state, so a schedule an operator paused stays paused.
    """
    try:
        return await client.create_schedule(schedule_id, schedule)
    except ScheduleAlreadyRunningError:
        handle = client.get_schedule_handle(schedule_id)

        def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
            kept = dataclasses.replace(schedule, state=current.description.schedule.state)
            return ScheduleUpdate(schedule=kept)

        await handle.update(update)
        return handle


async def ensure_sweeper_schedule(
    client: Client, request: SweepRequest, *, task_queue: str,
    every: timedelta = timedelta(hours=6),
) -> ScheduleHandle:
    """The orphan sweeper, every `every`; runs never overlap."""
    mode = "dry run" if request.dry_run else "removes orphans"
    return await ensure_schedule(client, SWEEPER_SCHEDULE_ID, Schedule(
        action=ScheduleActionStartWorkflow(
            OrphanSweepWorkflow.run, request, id=SWEEPER_SCHEDULE_ID, task_queue=task_queue,
            execution_timeout=timedelta(hours=6),
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(note=f"orphan sweeper ({mode})"),
    ))


async def ensure_golden_schedule(
    client: Client,
    request: GoldenRefreshRequest,
    *,
    task_queue: str,
    every: timedelta | None = None,
    cron: str | None = None,
    schedule_id: str | None = None,
    execution_timeout: timedelta = timedelta(hours=24),
) -> ScheduleHandle:
    """Create the source's refresh schedule, or bring an existing one up to date.

    Runs never overlap (a refresh still running skips the next one). Updating keeps the
    schedule's state, so a schedule an operator paused stays paused.
    """
    if (every is None) == (cron is None):
        raise ValueError("give exactly one of `every` or `cron`")
    schedule_id = schedule_id or refresh_workflow_id(request.source_name)
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            GoldenRefreshWorkflow.run,
            request,
            id=refresh_workflow_id(request.source_name),
            task_queue=task_queue,
            execution_timeout=execution_timeout,
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=every)] if every else [],
            cron_expressions=[cron] if cron else [],
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP,
                              catchup_window=timedelta(hours=1)),
        state=ScheduleState(note=f"golden copy refresh of {request.source_name}"),
    )
    return await ensure_schedule(client, schedule_id, schedule)
