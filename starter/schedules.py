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
