"""Latency of a preview on the real stack: webhook → its URL answers, or → Ready.

By default (`--node real`) previews of the example blueprint run on a real node, and
the figures are webhook → the first 200 from the preview's URL, push → new commit
served and the failed requests during that rollout, and where the time goes:
bench/url_latency.py says how.

    .venv/bin/python -m bench.latency --runs 10       # real node: 1 warm-up + 10 runs

The rest of this docstring is `--node fake`: kwok's nodes, where pods never run, so the
figure is webhook → Ready, with its critical path. The blueprint has 3 applications
(web → api → database, and a worker) and 1 shared PostgreSQL database cloned from a
golden copy (data_policy clone: a GoldenRefreshWorkflow makes the golden copy of a
small source database once, before the runs; `--data-policy seed` seeds an empty
database instead), plus DNS records in Route53 (moto). Everything runs as in
production: `python -m worker` and `python -m starter` subprocesses, the Temporal dev
server, the Kubernetes control plane, PostgreSQL and moto on loopback.

Each run sends a signed `pull_request.opened` webhook over HTTP, waits for Ready, reads
the workflow's history, then closes the PR (webhook) and waits for the teardown to
finish and checks that nothing is left (namespace, database, preview slot). Runs are
sequential, so each measures one preview on an otherwise idle engine.

From each history: per plan step, when its activity was scheduled, started and
completed; the critical path (from the last step to complete, back through the
dependency that completed last, to the first); and the orchestration overhead =
total / sum of the critical path's step execution times (started → completed).

    .venv/bin/python -m bench.latency --node fake     # 1 warm-up + 20 measured runs
    .venv/bin/python -m bench.latency --node fake --runs 30 --data-policy seed
    .venv/bin/python -m bench.latency --node fake --golden-sizes 100MB,1GB  # runs per size

With --golden-sizes the runs are repeated, in one stack, for a golden copy of each size
(the source grown to that size, refreshed again by GoldenRefreshWorkflow): what a larger
database costs a preview. `figures` are then the largest size's; `by_golden_size` has
each, and `golden_size_comparison` the ratio of their p50s.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from activities.control_plane.planning import plan_options
from bench.common import (
    BenchStack,
    Recorder,
    event_seconds,
    finish,
    history_events,
    import_blueprints,
    leftovers,
    parse_size,
    post_webhook,
    pull_request_payload,
    sha_for,
    state_changes,
    summary,
    wait_status,
)
from domain.blueprint import Blueprint
from domain.naming import environment_id, workflow_id
from domain.plan import Plan, plan_preview
from engine.settings import Settings
from starter.events import github_pull_request
from workflows.preview import PreviewEnvironmentWorkflow

REPOSITORY = "bench/latency"
SOURCE = "bench_source"
STEP_OUTCOMES = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "completed",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "failed",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "timed_out",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "canceled",
}


def blueprint(data_policy: str, zone_id: str | None) -> Blueprint:
    database: dict[str, Any] = {"name": "main", "mode": "shared", "data_policy": data_policy}
    if data_policy == "seed":
        database["seed_sql"] = ("CREATE TABLE greeting (text text); "
                                "INSERT INTO greeting VALUES ('hello');")
    else:
        database["source"] = SOURCE
    return Blueprint.model_validate({
        "project": {"name": "latency", "repository": REPOSITORY},
        "applications": [
            {"name": "web", "image": "registry.local/bench/web", "depends_on": ["api"]},
            {"name": "api", "image": "registry.local/bench/api", "depends_on": ["main"]},
            {"name": "worker", "image": "registry.local/bench/worker", "public": False},
        ],
        "databases": [database],
        "network": {"base_domain": "preview.example.com", "hosted_zone_id": zone_id},
        "variables": [{"key": "NODE_ENV", "value": "production"}],
        "policy": {"max_live_previews": 5},
    })


async def make_golden(client: Client, settings: Settings, admin_url: str, rows: int,
                      target_bytes: int | None = None) -> dict[str, Any]:
    """A source database (`rows` customers, or as many as make `target_bytes`) and its
    golden copy, made by the real GoldenRefreshWorkflow."""
    from domain.golden import GoldenRefreshRequest
    from workflows.golden import GoldenRefreshWorkflow

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{SOURCE}"')
        await conn.execute(f'CREATE DATABASE "{SOURCE}"')
    finally:
        await conn.close()
    source_url = admin_url.rsplit("/", 1)[0] + f"/{SOURCE}"
    conn = await asyncpg.connect(source_url)
    try:
        await conn.execute("CREATE TABLE customers (id bigint PRIMARY KEY, name text, email text)")
        insert = ("INSERT INTO customers SELECT g, 'name ' || g, 'user' || g || '@example.com' "
                  "FROM generate_series($1::bigint, $2::bigint) g")
        if target_bytes is None:
            await conn.execute(insert, 1, rows)
        else:
            rows, chunk = 0, 1_000_000
            while await conn.fetchval("SELECT pg_database_size(current_database())") < target_bytes:
                await conn.execute(insert, rows + 1, rows + chunk)
                rows += chunk
        await conn.execute("VACUUM ANALYZE customers")
        size = await conn.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await conn.close()
    began = time.monotonic()
    generation = await client.execute_workflow(
        GoldenRefreshWorkflow.run,
        GoldenRefreshRequest(source_url=source_url, source_name=SOURCE),
        id=f"bench-golden-{uuid.uuid4().hex[:6]}", task_queue=settings.task_queue,
    )
    return {"source_rows": rows, "source_bytes": size, "generation": generation,
            "refresh_seconds": round(time.monotonic() - began, 2)}


async def _summary_text(client: Client, event: HistoryEvent) -> str:
    if not event.HasField("user_metadata") or not event.user_metadata.HasField("summary"):
        return ""
    decoded = await client.data_converter.decode([event.user_metadata.summary], [str])
    return str(decoded[0])


async def analyse(client: Client, events: list[HistoryEvent], plan: Plan,
                  sent_at: float) -> dict[str, Any]:
    """Per-step timings of the create phase (up to the Ready upsert) and its critical path."""
    # The saga's summaries read "<verb> <step summary>" (workflows/saga.py).
    by_summary = {s.summary or s.key: s.key for s in plan.steps}
    deps = {s.key: set(s.depends_on) for s in plan.steps}
    scheduled: dict[int, dict[str, Any]] = {}
    ready_at: float | None = None
    for event in events:
        kind, at = event.event_type, event_seconds(event)
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            text = await _summary_text(client, event)
            scheduled[event.event_id] = {
                "activity": attrs.activity_type.name, "summary": text,
                "key": by_summary.get(text.partition(" ")[2]), "scheduled": at,
            }
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs_s = event.activity_task_started_event_attributes
            scheduled[attrs_s.scheduled_event_id].update(started=at, attempt=attrs_s.attempt)
        elif kind in STEP_OUTCOMES:
            field = event.WhichOneof("attributes")
            sched_id = getattr(event, field).scheduled_event_id  # type: ignore[arg-type]
            scheduled[sched_id].update(ended=at, outcome=STEP_OUTCOMES[kind])
        elif (kind == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
              and [state for _, state in state_changes([event])] == ["ready"]):
            ready_at = at
            break
    if ready_at is None:
        raise RuntimeError("no Ready in the history")
    first_event = event_seconds(events[0])

    def rel(t: float) -> float:
        return round(t - sent_at, 4)

    steps: dict[str, dict[str, Any]] = {}
    others: list[dict[str, Any]] = []
    for item in scheduled.values():
        if "ended" not in item:
            continue
        timing = {
            "scheduled_at": rel(item["scheduled"]),
            "started_at": rel(item["started"]),
            "completed_at": rel(item["ended"]),
            "queue_seconds": round(item["started"] - item["scheduled"], 4),
            "run_seconds": round(item["ended"] - item["started"], 4),
            "attempts": item.get("attempt", 1),
            "outcome": item["outcome"],
        }
        if item["key"]:
            steps[item["key"]] = timing
        else:
            others.append({"activity": item["activity"], **timing})

    if not steps:
        raise RuntimeError("no plan step found in the history by its activity summary: "
                           "did workflows/saga.py change how it writes summaries?")
    # The critical path: the step that completed last, then back through the dependency
    # that completed last (the one that let it be scheduled), down to a root.
    path: list[str] = []
    key: str | None = max(steps, key=lambda k: steps[k]["completed_at"])
    while key is not None:
        path.append(key)
        done = [d for d in deps[key] if d in steps]
        key = max(done, key=lambda k: steps[k]["completed_at"]) if done else None
    path.reverse()
    total = ready_at - sent_at
    run_sum = sum(steps[k]["run_seconds"] for k in path)
    queue_sum = sum(steps[k]["queue_seconds"] for k in path)
    first_step = min(s["scheduled_at"] for s in steps.values())
    last_step = max(s["completed_at"] for s in steps.values())
    return {
        "total_seconds": round(total, 4),
        "phases": {
            "webhook_to_workflow_started": rel(first_event),
            "workflow_started_to_first_step": round(first_step - rel(first_event), 4),
            "plan_steps_first_scheduled_to_last_completed": round(last_step - first_step, 4),
            "last_step_to_ready": round(rel(ready_at) - last_step, 4),
        },
        "critical_path": path,
        "critical_path_run_seconds": round(run_sum, 4),
        "critical_path_queue_seconds": round(queue_sum, 4),
        "orchestration_overhead": round(total / run_sum, 3) if run_sum else None,
        "steps": steps,
        "other_activities": sorted(others, key=lambda o: o["scheduled_at"]),
        "events_to_ready": sum(1 for e in events if event_seconds(e) <= ready_at),
    }


async def one_run(client: Client, http: httpx.AsyncClient, settings: Settings,
                  bp: Blueprint, number: int, timeout: float) -> dict[str, Any]:
    sha = sha_for(number, "latency")
    opened = pull_request_payload("opened", REPOSITORY, number, sha)
    plan = plan_preview(bp, github_pull_request(opened), (), plan_options(settings))
    handle = client.get_workflow_handle_for(PreviewEnvironmentWorkflow.run,
                                            workflow_id(REPOSITORY, number))
    sent_at = time.time()
    answer = await post_webhook(http, opened)
    answered_at = time.time()
    status = await wait_status(handle, lambda s: s.state in ("ready", "failed"), timeout)
    seen_at = time.time()
    if status.state != "ready":
        raise RuntimeError(f"PR {number} failed: {status.last_error}")
    result = await analyse(client, await history_events(client, handle.id), plan, sent_at)
    result.update(number=number, outcome=answer["outcome"],
                  webhook_answer_seconds=round(answered_at - sent_at, 4),
                  observed_by_polling_seconds=round(seen_at - sent_at, 3),
                  # The status's line for the database: how it was made (clone or copy).
                  database_detail=next((line for line in status.resources
                                        if "file_copy_method" in line
                                        or "pg_dump | pg_restore" in line), ""))

    closed = pull_request_payload("closed", REPOSITORY, number, sha)
    began = time.monotonic()
    await post_webhook(http, closed)
    final = await asyncio.wait_for(handle.result(), timeout)
    result["destroy_seconds"] = round(time.monotonic() - began, 3)
    if final.state != "destroyed":
        raise RuntimeError(f"PR {number} not destroyed: {final}")
    left = await leftovers(settings, [environment_id(REPOSITORY, number)])
    if any(left.values()):
        raise RuntimeError(f"PR {number} left {left}")
    result["history_events_create_and_destroy"] = len(await history_events(client, handle.id))
    return result


def database_details(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """How the runs' databases were made: each distinct status line with its time taken
    out, the number of runs that had it, and the times those runs took."""
    counts: collections.Counter[str] = collections.Counter()
    times: dict[str, list[float]] = collections.defaultdict(list)
    for run in runs:
        line = run.get("database_detail") or "(no database line in the status)"
        taken = re.search(r" in ([0-9.]+) (ms|s)\b", line)
        if taken:
            line = line[:taken.start()] + line[taken.end():]
            times[line].append(float(taken.group(1)) / (1000 if taken.group(2) == "ms" else 1))
        counts[line] += 1
    return {line: {"runs": n, "seconds": summary(times[line], 4)}
            for line, n in sorted(counts.items())}


def aggregate_analyses(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Percentiles over runs of what analyse() found in each history."""
    keys = sorted({k for r in runs for k in r["steps"]})
    paths = collections.Counter(" → ".join(r["critical_path"]) for r in runs)
    return {
        "total_seconds": summary([r["total_seconds"] for r in runs], 3),
        "orchestration_overhead": summary([r["orchestration_overhead"] for r in runs], 3),
        "critical_path_run_seconds": summary([r["critical_path_run_seconds"] for r in runs], 3),
        "critical_path_queue_seconds": summary([r["critical_path_queue_seconds"] for r in runs],
                                               3),
        "phases": {p: summary([r["phases"][p] for r in runs], 3) for p in runs[0]["phases"]},
        "critical_paths": dict(paths.most_common()),
        "steps": {k: {"queue_seconds_p50": summary([r["steps"][k]["queue_seconds"] for r in runs
                                                    if k in r["steps"]])["p50"],
                      "run_seconds_p50": summary([r["steps"][k]["run_seconds"] for r in runs
                                                  if k in r["steps"]])["p50"],
                      "run_seconds_p95": summary([r["steps"][k]["run_seconds"] for r in runs
                                                  if k in r["steps"]])["p95"],
                      "completed_at_p50": summary([r["steps"][k]["completed_at"] for r in runs
                                                   if k in r["steps"]])["p50"],
                      "on_critical_path": sum(k in r["critical_path"] for r in runs)}
                  for k in keys},
    }


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        **aggregate_analyses(runs),
        "observed_by_polling_seconds": summary([r["observed_by_polling_seconds"] for r in runs],
                                               3),
        "webhook_answer_seconds": summary([r["webhook_answer_seconds"] for r in runs], 4),
        "destroy_seconds": summary([r["destroy_seconds"] for r in runs], 3),
        "history_events_create_and_destroy": summary(
            [r["history_events_create_and_destroy"] for r in runs], 1),
    }


async def bench(stack: BenchStack, args: argparse.Namespace) -> dict[str, Any]:
    settings = stack.settings
    zone_id = None
    if stack.moto_endpoint:
        route53 = boto3.client("route53", endpoint_url=stack.moto_endpoint,
                               region_name="us-east-1", aws_access_key_id="bench",
                               aws_secret_access_key="bench")
        zone = route53.create_hosted_zone(Name="preview.example.com",
                                          CallerReference=str(uuid.uuid4()))
        zone_id = zone["HostedZone"]["Id"].split("/")[-1]
    bp = blueprint(args.data_policy, zone_id)
    await import_blueprints(settings, [bp])
    stack.start_worker()
    url = stack.start_starter()
    client = await stack.client()
    sizes: list[int | None] = [parse_size(s) for s in args.golden_sizes.split(",") if s]
    phases: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for phase, size in enumerate(sizes or [None]):
            golden = None
            if args.data_policy == "clone":
                golden = await make_golden(client, settings, settings.preview_database_url,
                                           args.source_rows, size)
                print(f"golden copy {golden['generation']} ({golden['source_bytes'] / 1e6:.0f} "
                      f"MB source) in {golden['refresh_seconds']} s", flush=True)
            runs: list[dict[str, Any]] = []
            warmups: list[dict[str, Any]] = []
            for i in range(args.warmup + args.runs):
                number = 1000 + 100 * phase + i
                run = await one_run(client, http, settings, bp, number, args.timeout)
                (warmups if i < args.warmup else runs).append(run)
                print(f"run {i + 1}/{args.warmup + args.runs}"
                      f"{' (warm-up)' if i < args.warmup else ''}"
                      f": ready in {run['total_seconds']:.2f} s, critical path "
                      f"{run['critical_path_run_seconds']:.2f} s "
                      f"(x{run['orchestration_overhead']}), destroyed in "
                      f"{run['destroy_seconds']:.2f} s", flush=True)
            phases.append({"golden_size": args.golden_sizes.split(",")[phase] if size else None,
                           "golden": golden, "figures": aggregate(runs), "runs": runs,
                           "warmup_runs": warmups})
    last = phases[-1]
    document = {
        "parameters": {"node": "fake", "runs": args.runs, "warmup": args.warmup,
                       "data_policy": args.data_policy, "source_rows": args.source_rows,
                       "golden_sizes": args.golden_sizes or None},
        "blueprint": bp.model_dump(mode="json", exclude_defaults=True),
        "golden": last["golden"],
        "stack_startup_seconds": stack.startup_seconds,
        "figures": last["figures"],
        "runs": last["runs"],
        "warmup_runs": last["warmup_runs"],
    }
    if len(phases) > 1:
        p50 = {p["golden_size"]: p["figures"]["total_seconds"]["p50"] for p in phases}
        steps = {p["golden_size"]: p["figures"]["steps"].get("database/main", {}).get(
            "run_seconds_p50") for p in phases}
        document["by_golden_size"] = phases
        document["golden_size_comparison"] = {
            "webhook_to_ready_p50_seconds": p50,
            "database_step_run_p50_seconds": steps,
            "ratio_largest_to_smallest_p50": round(
                phases[-1]["figures"]["total_seconds"]["p50"]
                / phases[0]["figures"]["total_seconds"]["p50"], 3),
            "clone_details": {p["golden_size"]: database_details(p["runs"]) for p in phases},
        }
    return document


NOTES = [
    "total = from just before the webhook POST (bench clock) to the history event that "
    "upserts PreviewState=ready (server clock, same machine). observed_by_polling adds the "
    "status-query polling delay (100 ms period).",
    "Step times come from the workflow history: queue = ActivityTaskScheduled → Started "
    "(waiting for a worker slot; about 0 here because the SDK dispatches activities "
    "eagerly to the worker that completed the workflow task), run = Started → Completed "
    "(the activity's own work; for app/* it includes waiting for the rollout, which "
    "activities/kubernetes.py polls every 2 s, so a rollout costs at least one 2 s poll).",
    "critical path = the plan step that completed last, then, repeatedly, its dependency "
    "that completed last. orchestration_overhead = total / sum of the critical path's run "
    "times; what it adds: webhook handling and workflow start, workflow tasks between "
    "steps, queue waits, publish_feedback, load_source_environment and the plan (a local "
    "activity) before the saga.",
    "Runs are sequential on one worker process (`python -m worker`) and one starter "
    "(`python -m starter`); each preview is destroyed (pull_request.closed webhook) and "
    "checked gone (namespace, database, preview slot) before the next run.",
    "No GitHub token is set: publish_feedback runs but sends nothing.",
]


def _terminate(*_: object) -> None:
    raise SystemExit(143)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--node", choices=["real", "fake"], default="real",
                        help="real: the example blueprint on a real node, webhook → first 200 "
                             "(root); fake: kwok's nodes, webhook → Ready")
    parser.add_argument("--runs", type=int, default=None, help="20 (fake) or 10 (real)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--data-policy", choices=["clone", "seed"], default="clone",
                        help="--node fake only")
    parser.add_argument("--source-rows", type=int, default=20_000,
                        help="--node fake: rows of the source database the golden copy is "
                             "made from")
    parser.add_argument("--golden-sizes", default="",
                        help="--node fake, e.g. 100MB,1GB: the runs again for a golden copy of "
                             "each size (overrides --source-rows)")
    parser.add_argument("--poll-interval", type=float, default=0.05,
                        help="--node real: seconds between requests to a preview's URL")
    parser.add_argument("--no-baseline", action="store_true",
                        help="--node real: skip the bare-Kubernetes baseline")
    parser.add_argument("--timeout", type=float, default=240, help="per run and phase")
    parser.add_argument("--keep-state", action="store_true")
    parser.add_argument("--output", type=Path, default=None,
                        help="write here instead of bench/results/latency.json")
    args = parser.parse_args()
    # SIGTERM (timeout, a CI's cancel) unwinds like Ctrl-C: the stack stops every part it
    # started instead of leaving its subprocesses and the node behind.
    signal.signal(signal.SIGTERM, _terminate)
    recorder = Recorder("bench.latency")
    if args.node == "real":
        from bench.url_latency import run_real

        args.runs = 10 if args.runs is None else args.runs
        document, notes, line = run_real(args)
        finish(recorder, "latency", document, notes, line, args.output)
    args.runs = 20 if args.runs is None else args.runs
    largest = max([parse_size(s) for s in args.golden_sizes.split(",") if s] or [0])
    # The stack's PostgreSQL image holds the source, its golden copy and their WAL.
    image = f"{max(4, 4 * largest // 10**9 + 4)}G"
    with BenchStack(kube=True, moto=True, keep_state=args.keep_state,
                    pg_image_size=image) as stack:
        document = asyncio.run(bench(stack, args))
    fig = document["figures"]
    finish(recorder, "latency", document, NOTES,
           f"webhook → Ready p50 {fig['total_seconds']['p50']} s, "
           f"p95 {fig['total_seconds']['p95']} s; overhead p50 "
           f"x{fig['orchestration_overhead']['p50']}", args.output)


if __name__ == "__main__":
    main()
