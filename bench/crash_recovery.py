"""Crash recovery: a worker SIGKILLed at a random moment of a create, and how many
seconds pass until the step it was running runs again on another worker.

As a team runs the engine: two worker processes poll one task queue; when one dies a
fresh one is started at once (as an orchestrator would restart it). Each run opens a PR
(the fault tests' blueprint: two applications, a shared-mode PostgreSQL database seeded
from SQL, Route53 records in moto, on the real Kubernetes control plane), waits a random
moment within a create's usual duration, SIGKILLs the worker that is running a step at
that moment (or, between steps, the one that ran the last workflow task), then waits
for Ready, destroys the preview and checks that nothing is left.

Figures, per run, from the history and the workers' own lines (tests/faults/worker_process
prints each attempt's start, PREVIEW_FAULT_TRACE=1):
- recovery = kill → the retried attempt of the killed step started (on another worker),
  per kind of step (activity type);
- between steps (no step was running on the dead worker): kill → the next step started;
- kill → Ready, against a create without a kill (measured first, in the same run).

The same kill moments run twice: with the engine's per-kind heartbeat timeouts
(domain/resources.py) and with the old single 60 s one (`heartbeat_per_kind=False`),
the baseline.

    .venv/bin/python -m bench.crash_recovery                       # 7 kills, 7 baseline
    .venv/bin/python -m bench.crash_recovery --kills 3 --baseline-kills 0
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
from temporalio.api.enums.v1 import EventType, PendingActivityState, TimeoutType
from temporalio.client import Client, WorkflowHandle

from bench.common import BenchStack, Recorder, event_seconds, finish, leftovers, summary
from domain.naming import environment_id
from engine.sealing import Sealer
from engine.settings import Settings
from starter import lifecycle
from store import Store
from tests.faults.support import (
    FIRST_SHA,
    REPOSITORY,
    AttemptStart,
    WorkerProcess,
    import_blueprint,
    pull_request,
    restarted,
    search_state,
    until,
)
from workflows.saga import ActivityTimeouts

READY_TIMEOUT = 240.0  # seconds: the baseline's recovery alone may take a minute


class Pool:
    """The workers polling the task queue; a killed one is replaced at once."""

    def __init__(self, settings: Settings, size: int) -> None:
        self.settings = settings
        self.size = size
        self.alive: list[WorkerProcess] = []
        self.dead: list[WorkerProcess] = []
        self.started = 0

    def _new(self) -> WorkerProcess:
        self.started += 1
        return WorkerProcess(self.settings, {"PREVIEW_FAULT_TRACE": "1"},
                             f"worker {self.started}")

    async def fill(self) -> None:
        new = [self._new() for _ in range(self.size - len(self.alive))]
        await asyncio.gather(*(w.start() for w in new))
        self.alive += new

    def by_pid(self, pid: int) -> WorkerProcess | None:
        return next((w for w in self.alive if w.pid == pid), None)

    async def kill(self, victim: WorkerProcess) -> tuple[float, asyncio.Task[None]]:
        """SIGKILL (the moment, Unix time) and a replacement starting at once."""
        assert victim.pid is not None
        at = time.time()
        os.kill(victim.pid, signal.SIGKILL)
        self.alive.remove(victim)
        self.dead.append(victim)
        await victim.wait_exit(10)
        return at, asyncio.ensure_future(self.fill())

    @property
    def everyone(self) -> list[WorkerProcess]:
        return self.alive + self.dead

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.alive))


async def victim_now(handle: WorkflowHandle[Any, Any], pool: Pool,
                     ) -> tuple[WorkerProcess, list[str]]:
    """The worker running a step of this workflow now (and the steps), else the one
    that ran its last workflow task."""
    desc = await handle.describe()
    running = [a for a in desc.raw_description.pending_activities
               if a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED]
    for activity in running:
        worker = pool.by_pid(int(activity.last_worker_identity.split("@")[0]))
        if worker is not None:
            return worker, [a.activity_type.name for a in running
                            if a.last_worker_identity == activity.last_worker_identity]
    history = await handle.fetch_history()
    for event in reversed(history.events):
        if event.HasField("workflow_task_started_event_attributes"):
            identity = event.workflow_task_started_event_attributes.identity
            if (worker := pool.by_pid(int(identity.split("@")[0]))) is not None:
                return worker, []
    return random.choice(pool.alive), []


async def wait_ready(handle: WorkflowHandle[Any, Any]) -> float:
    async def ready() -> bool:
        state, head, status = await search_state(handle)
        assert status == "RUNNING" and state != "failed", f"{handle.id}: {status}/{state}"
        return state == "ready" and head == FIRST_SHA

    await until(ready, READY_TIMEOUT, f"{handle.id} ready", interval=0.1)
    return time.time()


async def destroy(client: Client, settings: Settings, handle: WorkflowHandle[Any, Any],
                  number: int) -> float:
    began = time.monotonic()
    assert await lifecycle.destroy(client, REPOSITORY, number, "closed")
    result = await asyncio.wait_for(handle.result(), READY_TIMEOUT)
    assert result.state == "destroyed", result
    left = await leftovers(settings, [environment_id(REPOSITORY, number)])
    assert not any(left.values()), f"left behind: {left}"
    return round(time.monotonic() - began, 2)


async def timed_out_and_retried(handle: WorkflowHandle[Any, Any], after: float,
                                ) -> list[AttemptStart]:
    """Activities whose attempt timed out after `after` and ran again: from the history
    (attempt 1 as the attempt that died, `at` the server's start of the final attempt).
    The history, not the dead worker's lines: an activity dispatched eagerly to it may
    have died before its first line."""
    history = await handle.fetch_history()
    scheduled = {e.event_id: e.activity_task_scheduled_event_attributes
                 for e in history.events
                 if e.HasField("activity_task_scheduled_event_attributes")}
    found = []
    for event in history.events:
        started = event.activity_task_started_event_attributes
        if (event.HasField("activity_task_started_event_attributes") and started.attempt >= 2
                and started.last_failure.HasField("timeout_failure_info")
                and event_seconds(event) >= after):
            what = scheduled[started.scheduled_event_id]
            found.append(AttemptStart(what.activity_type.name, 1, handle.id, what.activity_id,
                                      event_seconds(event)))
    return found


async def workflow_task_timeouts(handle: WorkflowHandle[Any, Any], after: float,
                                 ) -> dict[str, int]:
    """Workflow tasks that timed out after `after`, by kind: START_TO_CLOSE (it was in
    flight on the dead worker), SCHEDULE_TO_START (offered on the dead worker's sticky
    queue)."""
    history = await handle.fetch_history()
    found: dict[str, int] = {}
    for event in history.events:
        if (event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT
                and event_seconds(event) >= after):
            kind = TimeoutType.Name(event.workflow_task_timed_out_event_attributes
                                    .timeout_type).removeprefix("TIMEOUT_TYPE_")
            found[kind] = found.get(kind, 0) + 1
    return found


async def one_run(client: Client, settings: Settings, pool: Pool, timeouts: ActivityTimeouts,
                  moment: float | None) -> dict[str, Any]:
    number = uuid.uuid4().int % 10**6 + 1
    opened = time.time()
    handle = await lifecycle.deploy(client, pull_request(number, FIRST_SHA),
                                    task_queue=settings.task_queue, timeouts=timeouts)
    run: dict[str, Any] = {"pr": number, "moment_seconds": moment}
    if moment is None:  # the reference: a create without a kill
        run["ready_seconds"] = round(await wait_ready(handle) - opened, 3)
        run["destroy_seconds"] = await destroy(client, settings, handle, number)
        return run
    await asyncio.sleep(max(0.0, opened + moment - time.time()))  # the random moment
    victim, running = await victim_now(handle, pool)
    killed_at, refill = await pool.kill(victim)
    ready_at = await wait_ready(handle)
    await refill
    others = [w for w in pool.everyone if w is not victim]
    recoveries = []
    for retried in await timed_out_and_retried(handle, killed_at):
        again = restarted(retried, others)  # the earliest later attempt, if one printed it
        recoveries.append({
            "activity": retried.activity_type,
            "seconds": round((again.at if again else retried.at) - killed_at, 3),
            "server_started_seconds": round(retried.at - killed_at, 3),
            "attempt": again.attempt if again else retried.attempt})
    run.update({"killed": victim.label, "killed_at_seconds": round(killed_at - opened, 3),
                "running_at_kill": running, "recoveries": recoveries,
                "kill_to_ready_seconds": round(ready_at - killed_at, 3),
                "ready_seconds": round(ready_at - opened, 3),
                "workflow_task_timeouts": await workflow_task_timeouts(handle, killed_at)})
    if not recoveries:  # between steps: how soon did the next one start?
        later = [s.at for w in others for s in w.attempt_starts()
                 if s.workflow_id == handle.id and s.at > killed_at]
        run["next_step_started_seconds"] = round(min(later) - killed_at, 3) if later else None
    run["destroy_seconds"] = await destroy(client, settings, handle, number)
    return run


def figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    recoveries = [r for run in runs for r in run["recoveries"]]
    seconds = [r["seconds"] for r in recoveries]
    by_kind: dict[str, list[float]] = {}
    for r in recoveries:
        by_kind.setdefault(r["activity"], []).append(r["seconds"])
    between = [run["next_step_started_seconds"] for run in runs
               if not run["recoveries"] and run.get("next_step_started_seconds") is not None]
    stats = summary(seconds, 3)
    return {
        "kills": len(runs),
        "kills_mid_step": sum(1 for run in runs if run["recoveries"]),
        "recovery_seconds": {"median": stats.get("p50"), "max": stats.get("max"), **stats},
        "recovery_seconds_by_kind": {
            kind: {"n": len(v), "median": summary(v, 3)["p50"], "max": max(v)}
            for kind, v in sorted(by_kind.items())},
        "between_steps_next_step_seconds": summary(between, 3),
        "kill_to_ready_seconds": summary([run["kill_to_ready_seconds"] for run in runs], 3),
        "workflow_task_timeouts": {
            kind: sum(run["workflow_task_timeouts"].get(kind, 0) for run in runs)
            for kind in sorted({k for run in runs for k in run["workflow_task_timeouts"]})},
    }


async def bench(stack: BenchStack, args: argparse.Namespace) -> dict[str, Any]:
    route53 = boto3.client("route53", endpoint_url=stack.moto_endpoint, region_name="us-east-1",
                           aws_access_key_id="bench", aws_secret_access_key="bench")
    zone = route53.create_hosted_zone(Name="faults.example.com",
                                      CallerReference=str(uuid.uuid4()))
    zone_id = zone["HostedZone"]["Id"].split("/")[-1]
    settings = stack.settings.model_copy(update={
        "blueprint_source": "store", "check_images": False, "github_token": None})
    store = await Store.connect(settings.database_url, Sealer.from_settings(settings))
    try:
        await store.migrate()
        await import_blueprint(store, zone_id)
    finally:
        await store.close()
    client = await stack.client()
    pool = Pool(settings, args.workers)
    await pool.fill()
    try:
        references = [await one_run(client, settings, pool, ActivityTimeouts(), None)
                      for _ in range(args.references)]
        create = sorted(r["ready_seconds"] for r in references)[len(references) // 2]
        rng = random.Random(args.seed)
        moments = [round(rng.uniform(0.1, 0.9) * create, 3) for _ in range(args.kills)]
        phases: dict[str, Any] = {}
        for name, timeouts, count in (
                ("per_kind", ActivityTimeouts(), args.kills),
                ("baseline_60s", ActivityTimeouts(heartbeat_per_kind=False),
                 args.baseline_kills)):
            runs = []
            for i, moment in enumerate(moments[:count]):
                run = await one_run(client, settings, pool, timeouts, moment)
                runs.append(run)
                print(f"{name} {i + 1}/{count}: kill at {run['killed_at_seconds']} s "
                      f"({', '.join(run['running_at_kill']) or 'between steps'}) → "
                      + (", ".join(f"{r['activity']} again after {r['seconds']} s"
                                   for r in run["recoveries"])
                         or f"next step after {run.get('next_step_started_seconds')} s")
                      + f"; Ready {run['kill_to_ready_seconds']} s after the kill", flush=True)
            if runs:
                phases[name] = {"timeouts": timeouts.model_dump(), "figures": figures(runs),
                                "runs": runs}
    finally:
        await pool.stop()
    per_kind = phases["per_kind"]["figures"]
    document: dict[str, Any] = {
        "parameters": {"kills": args.kills, "baseline_kills": args.baseline_kills,
                       "workers": args.workers, "seed": args.seed,
                       "references": args.references},
        "stack_startup_seconds": stack.startup_seconds,
        "create_without_kill_seconds": {"median": create,
                                        "runs": [r["ready_seconds"] for r in references]},
        "kill_moments_seconds": moments,
        "figures": {
            "recovery_seconds": per_kind["recovery_seconds"],
            "recovery_seconds_by_kind": per_kind["recovery_seconds_by_kind"],
            "between_steps_next_step_seconds": per_kind["between_steps_next_step_seconds"],
            "kill_to_ready_seconds": per_kind["kill_to_ready_seconds"],
        },
        "phases": phases,
    }
    if "baseline_60s" in phases:
        base = phases["baseline_60s"]["figures"]
        document["figures"]["baseline_60s_recovery_seconds"] = base["recovery_seconds"]
        if base["recovery_seconds"].get("p50") and per_kind["recovery_seconds"].get("p50"):
            document["figures"]["median_ratio_to_baseline"] = round(
                per_kind["recovery_seconds"]["p50"] / base["recovery_seconds"]["p50"], 3)
    return document


NOTES = [
    "recovery = from the SIGKILL (bench clock) to the retried attempt of a step that was "
    "running on the killed worker starting on another worker (that worker's own line, same "
    "clock; the server's ActivityTaskStarted time of that attempt, in runs[].recoveries, "
    "agrees within milliseconds). Which steps were running comes from the history (attempts "
    "that timed out after the kill), not from the dead worker: activities dispatched "
    "eagerly to it may die before it prints anything.",
    "What it is made of: the step's heartbeat timeout counted from the last heartbeat the "
    "server received (7 s for every kind, domain/resources.py; the SDK sends heartbeats at "
    "most every 0.8 x timeout, so it fires 1.4-7 s after a kill, about 7 s here where "
    "each step lasts well under a second and was killed soon after it began), then the "
    "retry policy's 1 s initial interval, then the hand-off to the other worker "
    "(milliseconds: it is already long-polling the task queue).",
    "baseline_60s = the same kill moments with one 60 s heartbeat timeout for every step "
    "(the engine before per-kind timeouts): 12-60 s (heartbeats every 48 s), about 60 s "
    "here, plus the same 1 s. What was running at a moment differs between the phases.",
    "Two `python -m tests.faults.worker_process` workers (built by worker.build_worker, as "
    "`python -m worker`) poll one task queue; each killed one is replaced at once. Kill "
    "moments are uniform in 10-90 % of the median create time without a kill (same seed "
    "for both phases).",
    "A kill with no step running (between steps) costs a workflow task instead: the one in "
    "flight on the dead worker (START_TO_CLOSE, the workflow task timeout: 10 s) or offered "
    "on its sticky queue (SCHEDULE_TO_START: PREVIEW_STICKY_TIMEOUT_SECONDS, 3 s; the "
    "SDK's default, 10 s, before 6f226a6) times out first, so the next step starts that "
    "long after the kill (between_steps_next_step_seconds). The sticky timeout also follows "
    "a recovered step: its completion's workflow task is offered to the dead worker first, "
    "which is why kill_to_ready is about recovery + 3 s (recovery + 10 s before); "
    "workflow_task_timeouts counts both kinds.",
    "Each preview is destroyed after its run and checked gone (namespace, database, "
    "preview slot) before the next.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kills", type=int, default=7)
    parser.add_argument("--baseline-kills", type=int, default=7,
                        help="the same moments with the old single 60 s heartbeat (0: none)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--references", type=int, default=3,
                        help="creates without a kill, first: the create time kills fall in")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--keep-state", action="store_true")
    parser.add_argument("--output", type=Path, default=None,
                        help="instead of bench/results/crash_recovery.json")
    args = parser.parse_args()
    recorder = Recorder("bench.crash_recovery")
    with BenchStack(kube=True, moto=True, keep_state=args.keep_state) as stack:
        document = asyncio.run(bench(stack, args))
    fig = document["figures"]["recovery_seconds"]
    finish(recorder, "crash_recovery", document, NOTES,
           f"kill → step running again: median {fig.get('median')} s, max {fig.get('max')} s "
           f"({fig.get('n', 0)} steps)", args.output)


if __name__ == "__main__":
    main()
