"""Workflow history size: events per lifecycle, and after 1000 redeploys.

The lifecycle workflow (workflows/preview.py) runs on a real Temporal dev server with a
real worker, but its resource activities are the recording stand-ins of
tests/workflows/inventory.py (no Kubernetes, PostgreSQL or AWS: the history's shape
does not depend on what an activity does, and 1000 redeploys stay fast). The
blueprint is tests/workflows/harness.py's: 3 applications and 1 shared database.

1. One lifecycle: create → Ready, one redeploy (new commit) → Ready, destroy → done;
   the history's length after each, and its events by type.
2. A long-lived preview: create, then `--redeploys` sequential redeploys (each a
   `deploy_and_wait` update with a new commit, so none coalesce), then destroy. The
   workflow continues as new past `PreviewInput.history_limit` events or when the
   server suggests it; reported: the current run's events, the number of runs, and the
   events of each run (following continued_execution_run_id back from the last run).

    .venv/bin/python -m bench.history                    # 1000 redeploys
    .venv/bin/python -m bench.history --redeploys 200 --history-limit 2000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError

from bench.common import Recorder, finish, history_events, summary
from domain.pull_request import PullRequest
from engine.client import data_converter
from engine.settings import Settings
from stack.temporal import TemporalDevServer
from starter import lifecycle
from tests.workflows.harness import BLUEPRINT, FAST, Harness, pull_request
from workflows.preview import (
    DestroyRequest,
    PreviewEnvironmentWorkflow,
    PreviewInput,
    PreviewState,
    PreviewStatus,
)


async def wait_ready(handle: WorkflowHandle[Any, Any], timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await handle.query(PreviewEnvironmentWorkflow.status)).state != PreviewState.ready:
        if loop.time() > deadline:
            raise TimeoutError(f"{handle.id} not ready in {timeout}s")
        await asyncio.sleep(0.05)


async def runs_of(client: Client, workflow_id: str) -> list[dict[str, Any]]:
    """Every run of a workflow id, oldest first, with its event count."""
    runs: list[dict[str, Any]] = []
    run_id: str | None = None
    while True:
        events = await history_events(client, workflow_id, run_id)
        started = events[0].workflow_execution_started_event_attributes
        last = EventType.Name(events[-1].event_type).removeprefix("EVENT_TYPE_")
        runs.append({"events": len(events), "last_event": last})
        if not started.continued_execution_run_id:
            break
        run_id = started.continued_execution_run_id
    runs.reverse()
    return runs


async def lifecycle_once(client: Client, task_queue: str) -> dict[str, Any]:
    pr = pull_request(1, "1" * 40)
    handle = await lifecycle.deploy(client, pr, task_queue=task_queue, timeouts=FAST)
    await wait_ready(handle)
    created = len(await history_events(client, handle.id))
    await handle.execute_update(PreviewEnvironmentWorkflow.deploy_and_wait,
                                pull_request(1, "2" * 40))
    redeployed = len(await history_events(client, handle.id))
    await handle.signal(PreviewEnvironmentWorkflow.destroy, DestroyRequest(reason="bench"))
    await handle.result()
    events = await history_events(client, handle.id)
    by_type = collections.Counter(
        EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in events)
    return {
        "events_after_create": created,
        "events_of_one_redeploy": redeployed - created,
        "events_of_destroy": len(events) - redeployed,
        "events_total": len(events),
        "events_by_type": dict(by_type.most_common()),
    }


async def live(handle: WorkflowHandle[Any, Any], sha: str, timeout: float) -> PreviewStatus:
    """Poll the status query until `sha` is deployed and the preview Ready."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            status = await handle.query(PreviewEnvironmentWorkflow.status)
            if status.head_sha == sha and status.state == PreviewState.ready:
                return status
        except RPCError:
            pass  # between two runs (continue-as-new): ask the new one next time
        if loop.time() > deadline:
            raise TimeoutError(f"{sha[:8]} not live within {timeout}s")
        await asyncio.sleep(0.02)


async def redeploy_many(client: Client, task_queue: str, redeploys: int,
                        history_limit: int) -> dict[str, Any]:
    """Create, `redeploys` deploy signals (each waited for until live), destroy."""
    number = 2
    handle = await lifecycle.deploy(client, pull_request(number, "0" * 40),
                                    task_queue=task_queue, timeouts=FAST,
                                    history_limit=history_limit)
    await wait_ready(handle)
    # No run id: the handle follows continue-as-new to the newest run.
    latest = client.get_workflow_handle_for(PreviewEnvironmentWorkflow.run, handle.id)
    durations: list[float] = []
    began = time.monotonic()
    for i in range(1, redeploys + 1):
        pr = pull_request(number, f"{i:040x}")
        t0 = time.perf_counter()
        await latest.signal(PreviewEnvironmentWorkflow.deploy, pr)
        await live(latest, pr.head_sha, 60)
        durations.append(time.perf_counter() - t0)
        if i % 100 == 0 or i == redeploys:
            print(f"  {i} redeploys in {time.monotonic() - began:.0f} s", flush=True)
    elapsed = time.monotonic() - began
    runs = await runs_of(client, handle.id)
    await latest.signal(PreviewEnvironmentWorkflow.destroy, DestroyRequest(reason="bench"))
    final = await asyncio.wait_for(latest.result(), 120)
    runs_final = await runs_of(client, handle.id)
    return {
        "redeploys": redeploys,
        "via": "deploy signal, then the status query polled until that commit is live",
        "history_limit": history_limit,
        "seconds": round(elapsed, 1),
        "redeploy_seconds": summary(durations, 4),
        "slowest_redeploys": sorted(((round(d, 3), i + 1) for i, d in enumerate(durations)),
                                    reverse=True)[:5],
        "events_of_current_run": runs[-1]["events"],
        "runs": len(runs),
        "events_per_run": [r["events"] for r in runs],
        "events_all_runs": sum(r["events"] for r in runs),
        "max_events_in_one_run": max(r["events"] for r in runs),
        "after_destroy": {"state": final.state.value, "runs": len(runs_final),
                          "events_of_last_run": runs_final[-1]["events"]},
    }


async def updates_across_continue_as_new(client: Client, task_queue: str, number: int,
                                         limit: int, timeout: float = 20) -> dict[str, Any]:
    """Back-to-back `deploy_and_wait` updates (as a client deploying commit after commit
    would send them) until `limit` redeploys, each bounded by `timeout`: do they all
    complete when the workflow continues as new in between?"""
    handle = await lifecycle.deploy(client, pull_request(number, "0" * 40),
                                    task_queue=task_queue, timeouts=FAST)
    await wait_ready(handle)
    latest = client.get_workflow_handle_for(PreviewEnvironmentWorkflow.run, handle.id)
    outcome: dict[str, Any] = {"updates_sent": limit, "stuck": None,
                               "refused_while_continuing_as_new": 0}

    async def deploy_and_wait(pr: PullRequest) -> None:
        # The contract (as `preview deploy` does): an update refused while the run
        # continues as new is sent again, and the next run takes it.
        while True:
            try:
                await latest.execute_update(PreviewEnvironmentWorkflow.deploy_and_wait, pr)
                return
            except WorkflowUpdateFailedError as error:
                if "continuing as new" not in str(error.cause):
                    raise
                outcome["refused_while_continuing_as_new"] += 1
                await asyncio.sleep(0.1)

    for i in range(1, limit + 1):
        pr = pull_request(number, f"{i:040x}")
        try:
            await asyncio.wait_for(deploy_and_wait(pr), timeout)
        except (TimeoutError, RPCError, WorkflowUpdateFailedError,
                WorkflowUpdateRPCTimeoutOrCancelledError) as error:
            info = (await latest.describe()).raw_description.workflow_execution_info
            outcome["stuck"] = {"at_redeploy": i, "error": type(error).__name__,
                                "events_of_run": info.history_length,
                                "waited_seconds": timeout}
            break
    outcome["runs"] = len(await runs_of(client, handle.id))
    # A destroy signal frees a handler stuck that way (it stops waiting for the deploy).
    await latest.signal(PreviewEnvironmentWorkflow.destroy, DestroyRequest(reason="bench"))
    try:
        final = await asyncio.wait_for(latest.result(), 60)
        outcome["destroyed_afterwards"] = final.state == PreviewState.destroyed
    except TimeoutError:
        outcome["destroyed_afterwards"] = False
        await latest.terminate(reason="bench: stuck")
    return outcome


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="bench-history-"))
    server = TemporalDevServer(state / "temporal", headless=True).start()
    try:
        settings = Settings(_env_file=None, temporal_address=server.address)  # type: ignore[call-arg]
        client = await Client.connect(server.address, data_converter=data_converter(settings))
        blueprints = state / "blueprints"
        blueprints.mkdir()
        (blueprints / "shop.yaml").write_text(yaml.safe_dump(BLUEPRINT))
        # The saga tests' worker: recording activities, blueprint files, the planner.
        harness = Harness(client, blueprints)
        inventory, task_queue = harness.inventory, harness.task_queue
        async with harness.worker():
            once = await lifecycle_once(client, task_queue)
            print(f"one lifecycle: {once['events_total']} events", flush=True)
            probes = []
            for attempt in range(args.update_probes):
                probe = await updates_across_continue_as_new(
                    client, task_queue, 10 + attempt, args.update_probe_redeploys)
                print(f"deploy_and_wait across continue-as-new: {probe}", flush=True)
                probes.append(probe)
            many = await redeploy_many(client, task_queue, args.redeploys, args.history_limit)
        if inventory.present:
            raise RuntimeError(f"left in the inventory: {sorted(inventory.present)}")
        return {
            "parameters": {"redeploys": args.redeploys, "history_limit": args.history_limit},
            "activities": "recording stand-ins (tests/workflows/inventory.py); no real "
                          "cluster, database or cloud",
            "blueprint": BLUEPRINT,
            "figures": {"lifecycle": once, "many_redeploys": many,
                        "deploy_and_wait_across_continue_as_new": {
                            "probes": probes,
                            "stuck": sum(p["stuck"] is not None for p in probes)}},
        }
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)


NOTES = [
    "Real Temporal dev server and worker running workflows/preview.py; the resource "
    "activities are tests/workflows/inventory.py's recording stand-ins, the source "
    "environment comes from a blueprint file (activities/blueprints.py). The history's "
    "events do not depend on what the activities do, only on the plan (15 steps here).",
    "Redeploys are sequential `deploy_and_wait` updates, each with a new commit, each "
    "answered once that commit is live; the handle has no run id, so it follows "
    "continue-as-new to the newest run.",
    "deploy_and_wait_across_continue_as_new: separate previews redeployed with "
    "back-to-back updates, each sent again when refused because the run is continuing "
    "as new (counted); `stuck` says at which redeploy an update did not complete within "
    "its timeout.",
    "events_per_run follows WorkflowExecutionStarted.continued_execution_run_id back from "
    "the newest run; continue-as-new happens past PreviewInput.history_limit events or "
    "when the server suggests it (is_continue_as_new_suggested).",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--redeploys", type=int, default=1000)
    parser.add_argument("--update-probes", type=int, default=2,
                        help="workflows redeployed with back-to-back deploy_and_wait updates")
    parser.add_argument("--update-probe-redeploys", type=int, default=100,
                        help="updates per probe (the dev server suggests continue-as-new "
                             "near 4096 events, about 65 redeploys)")
    parser.add_argument("--history-limit", type=int,
                        default=PreviewInput.model_fields["history_limit"].default)
    args = parser.parse_args()
    recorder = Recorder("bench.history")
    document = asyncio.run(bench(args))
    fig = document["figures"]
    many = fig["many_redeploys"]
    finish(recorder, "history", document, NOTES,
           f"lifecycle {fig['lifecycle']['events_total']} events; after {many['redeploys']} "
           f"redeploys: {many['events_of_current_run']} events in the current run, "
           f"{many['runs']} runs")


if __name__ == "__main__":
    main()
