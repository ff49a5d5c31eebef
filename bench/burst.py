"""A burst of pull requests opened at once: all reach Ready, then all go away cleanly.

N signed `pull_request.opened` webhooks are POSTed concurrently (over real HTTP to
`python -m starter`), one `python -m worker` builds the previews on the Kubernetes
control plane, PostgreSQL and moto; then N `pull_request.closed` webhooks at once, and
a check that no namespace, preview database or preview slot is left.

Reported: the time until every preview is Ready (from the first webhook sent to the
last Ready event in the histories), per-preview webhook → Ready percentiles, the
teardown time, and the worker's peak RSS (VmHWM of the worker subprocess from
/proc/<pid>/status, which counts from the worker's start).

Previews limited by the policy's `max_live_previews` fail with a QuotaExceeded error
instead (the plan's "slot" step); `run_burst` reports which did, and
tests/load/test_burst.py checks both cases on a smaller blueprint.

    .venv/bin/python -m bench.burst --blueprint small        # 100 previews, 1 app + 1 db
    .venv/bin/python -m bench.burst --previews 70 --output bench/results/burst_full.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from bench.common import (
    BenchStack,
    Recorder,
    finish,
    history_events,
    import_blueprints,
    leftovers,
    post_webhook,
    pull_request_payload,
    rss_of,
    sha_for,
    state_changes,
    summary,
)
from domain.blueprint import Blueprint
from domain.naming import environment_id, workflow_id
from engine.settings import Settings
from workflows.preview import PreviewEnvironmentWorkflow

REPOSITORY = "bench/burst"
Send = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def blueprint(kind: str, repository: str, max_live: int) -> Blueprint:
    """`full`: the latency benchmark's shape (3 apps, 1 seeded database); `small`: 1 app
    and 1 empty database."""
    if kind == "small":
        apps: list[dict[str, Any]] = [{"name": "web", "image": "registry.local/bench/web"}]
        database: dict[str, Any] = {"name": "main", "mode": "shared", "data_policy": "empty"}
    else:
        apps = [
            {"name": "web", "image": "registry.local/bench/web", "depends_on": ["api"]},
            {"name": "api", "image": "registry.local/bench/api", "depends_on": ["main"]},
            {"name": "worker", "image": "registry.local/bench/worker", "public": False},
        ]
        database = {"name": "main", "mode": "shared", "data_policy": "seed",
                    "seed_sql": "CREATE TABLE greeting (text text); "
                                "INSERT INTO greeting VALUES ('hello');"}
    return Blueprint.model_validate({
        "project": {"name": repository.replace("/", "-"), "repository": repository},
        "applications": apps,
        "databases": [database],
        "variables": [{"key": "NODE_ENV", "value": "production"}],
        "policy": {"max_live_previews": max_live},
    })


@dataclass
class Outcome:
    number: int
    state: str
    seconds_to_state: float | None = None  # webhook sent → Ready/failed event
    error: str | None = None
    retried: dict[str, int] = field(default_factory=dict)  # activity → attempts beyond 1st
    pending: list[str] = field(default_factory=list)  # activities still running, and why


@dataclass
class BurstResult:
    sent_at: float
    send_seconds: float
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    timed_out: bool = False

    def numbers(self, state: str) -> list[int]:
        return sorted(n for n, o in self.outcomes.items() if o.state == state)


async def count(client: Client, repository: str, state: str) -> int:
    query = f'PreviewRepository = "{repository.lower()}" AND PreviewState = "{state}"'
    return (await client.count_workflows(query)).count


async def run_burst(send: Send, client: Client, repository: str, numbers: list[int],
                    timeout: float, on_tick: Callable[[], None] = lambda: None,
                    ) -> BurstResult:
    """Open every PR at once; wait until each is Ready or failed; read when each got there.

    Waiting reads the visibility store (counts by search attribute), not the workflows'
    status query, so the wait itself puts no load on the worker. Each outcome is then
    read from its workflow's query and history.
    """
    payloads = [pull_request_payload("opened", repository, n, sha_for(n, repository))
                for n in numbers]
    sent_at = time.time()
    answers = await asyncio.gather(*(send(p) for p in payloads))
    result = BurstResult(sent_at=sent_at, send_seconds=time.time() - sent_at)
    if bad := [a for a in answers if a.get("outcome") != "deployed"]:
        raise RuntimeError(f"webhooks not acted on: {bad[:3]}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        ready, failed = await asyncio.gather(count(client, repository, "ready"),
                                             count(client, repository, "failed"))
        on_tick()
        if ready + failed >= len(numbers):
            break
        if loop.time() > deadline:
            result.timed_out = True  # report what each got to; the caller decides
            break
        await asyncio.sleep(0.5)

    async def outcome(n: int) -> Outcome:
        handle = client.get_workflow_handle_for(PreviewEnvironmentWorkflow.run,
                                                workflow_id(repository, n))
        status = await handle.query(PreviewEnvironmentWorkflow.status)
        events = await history_events(client, handle.id)
        changes = state_changes(events)
        at = next((t for t, s in changes if s == status.state), None)
        item = Outcome(n, status.state.value, None if at is None else at - sent_at,
                       status.last_error)
        names = {e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
                 for e in events
                 if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED}
        for e in events:
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                attrs = e.activity_task_started_event_attributes
                if attrs.attempt > 1:
                    name = names.get(attrs.scheduled_event_id, "?")
                    item.retried[name] = item.retried.get(name, 0) + attrs.attempt - 1
        if status.state.value not in ("ready", "failed"):
            described = await handle.describe()
            for act in described.raw_description.pending_activities:
                item.pending.append(
                    f"{act.activity_type.name} attempt {act.attempt}: "
                    f"{act.last_failure.message[:160] or 'no failure yet'}")
        return item

    gate = asyncio.Semaphore(20)

    async def gated(n: int) -> Outcome:
        async with gate:
            return await outcome(n)

    for item in await asyncio.gather(*(gated(n) for n in numbers)):
        result.outcomes[item.number] = item
    return result


def retries_by_activity(result: BurstResult) -> dict[str, int]:
    total: collections.Counter[str] = collections.Counter()
    for item in result.outcomes.values():
        total.update(item.retried)
    return dict(total.most_common())


async def close_all(send: Send, client: Client, repository: str, numbers: list[int],
                    timeout: float) -> float:
    """Close every PR at once; wait until every workflow has finished its teardown."""
    began = time.monotonic()
    await asyncio.gather(*(send(pull_request_payload(
        "closed", repository, n, sha_for(n, repository))) for n in numbers))

    async def finished(n: int) -> None:
        handle = client.get_workflow_handle_for(PreviewEnvironmentWorkflow.run,
                                                workflow_id(repository, n))
        final = await handle.result()
        if final.state != "destroyed":
            raise RuntimeError(f"PR {n} ended {final.state}: {final.last_error}")

    await asyncio.wait_for(asyncio.gather(*(finished(n) for n in numbers)), timeout)
    return time.monotonic() - began


async def bench(stack: BenchStack, args: argparse.Namespace) -> dict[str, Any]:
    settings: Settings = stack.settings
    bp = blueprint(args.blueprint, REPOSITORY, max(args.previews, 20))
    await import_blueprints(settings, [bp])
    pid = stack.start_worker()
    url = stack.start_starter()
    client = await stack.client()
    numbers = list(range(1, args.previews + 1))
    rss_idle = rss_of(pid)
    samples: list[tuple[float, int]] = []
    began = time.monotonic()

    def sample() -> None:
        samples.append((round(time.monotonic() - began, 1), rss_of(pid)["VmRSS"]))

    limits = httpx.Limits(max_connections=args.previews)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:

        async def send(payload: dict[str, Any]) -> dict[str, Any]:
            return await post_webhook(http, payload)

        burst = await run_burst(send, client, REPOSITORY, numbers, args.timeout, sample)
        rss_ready = rss_of(pid)
        not_ready = {n: {"state": o.state, "error": o.error, "pending": o.pending}
                     for n, o in burst.outcomes.items() if o.state != "ready"}
        times = [o.seconds_to_state for o in burst.outcomes.values()
                 if o.state == "ready" and o.seconds_to_state is not None]
        print(f"{len(times)}/{len(numbers)} ready"
              + (f" (gave up after {args.timeout} s)" if burst.timed_out else "")
              + (f"; the last after {max(times):.1f} s" if times else ""), flush=True)
        destroy_seconds = await close_all(send, client, REPOSITORY, numbers, args.timeout)
    left = await leftovers(settings, [environment_id(REPOSITORY, n) for n in numbers])
    rss_end = rss_of(pid)
    print(f"destroyed in {destroy_seconds:.1f} s; left behind: {left}", flush=True)
    return {
        "parameters": {"previews": args.previews, "blueprint": args.blueprint},
        "blueprint": bp.model_dump(mode="json", exclude_defaults=True),
        "figures": {
            "previews": len(numbers),
            "ready": len(times),
            "not_ready": not_ready,
            "gave_up_waiting": burst.timed_out,
            "seconds_to_all_ready": (round(max(times), 2)
                                     if times and len(times) == len(numbers) else None),
            "seconds_to_last_ready": round(max(times), 2) if times else None,
            "activity_retries": retries_by_activity(burst),
            "webhooks_sent_seconds": round(burst.send_seconds, 3),
            "seconds_to_ready": summary(times, 2),
            "seconds_to_destroy_all": round(destroy_seconds, 2),
            "left_behind": left,
            "worker_peak_rss_bytes": rss_end["VmHWM"],
            "worker_peak_rss_mib": round(rss_end["VmHWM"] / 2**20, 1),
            "worker_rss_mib": {
                "idle_before_burst": round(rss_idle["VmRSS"] / 2**20, 1),
                "all_ready": round(rss_ready["VmRSS"] / 2**20, 1),
                "after_teardown": round(rss_end["VmRSS"] / 2**20, 1),
            },
            "worker_peak_rss_source": "VmHWM of the `python -m worker` subprocess "
                                      "(/proc/<pid>/status), since the worker started",
        },
        "worker_rss_samples_mib": [(t, round(b / 2**20, 1)) for t, b in samples],
        "stack_startup_seconds": stack.startup_seconds,
    }


NOTES = [
    "All N webhooks are POSTed at once (N concurrent HTTP connections) to one "
    "`python -m starter`; one `python -m worker` (ThreadPoolExecutor(32), "
    "max_concurrent_activities=64, as worker.py builds it) runs every workflow and activity.",
    "seconds_to_all_ready = the last PreviewState=ready event (server time) minus the "
    "moment the first webhook was sent; per-preview times are measured the same way.",
    "The wait reads counts from Temporal's visibility store, not the workflows' status "
    "query, so the benchmark adds no queries to the worker while it works.",
    "Capacity of the local control plane (stack/kube.py): 2 kwok nodes of 110 pods each "
    "(220 pods) and a Service range of 10.0.0.0/24 (about 250 ClusterIPs). The full "
    "blueprint needs 3 pods and 3 Services per preview: 100 of them ran out of ClusterIPs "
    "('failed to allocate a serviceIP ... range is full', 55 of 100 Ready after 480 s) "
    "and 75 of them out of pods (5 previews waited in ensure_application for pods that "
    "could not be scheduled). So 100 previews run the small blueprint (1 pod, 1 Service "
    "each) and the full one runs with 70 (bench/results/burst_full.json).",
    "Teardown: N pull_request.closed webhooks at once; every workflow's result must be "
    "`destroyed`; then no namespace (Kubernetes API), preview database (pg_database) or "
    "preview slot (store's preview_slots) of those environments may remain.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--previews", type=int, default=100)
    parser.add_argument("--blueprint", choices=["full", "small"], default="small",
                        help="full: 3 apps + 1 seeded database; small: 1 app + 1 empty "
                             "database (default: 100 full previews exceed the local "
                             "control plane's 220 pods)")
    parser.add_argument("--timeout", type=float, default=480, help="per phase")
    parser.add_argument("--output", type=Path, help="default bench/results/burst.json")
    parser.add_argument("--keep-state", action="store_true")
    args = parser.parse_args()
    recorder = Recorder("bench.burst")
    with BenchStack(kube=True, moto=True, keep_state=args.keep_state) as stack:
        document = asyncio.run(bench(stack, args))
    fig = document["figures"]
    finish(recorder, "burst", document, NOTES,
           f"{fig['ready']}/{fig['previews']} Ready in {fig['seconds_to_all_ready']} s; "
           f"worker peak RSS {fig['worker_peak_rss_mib']} MiB", args.output)


if __name__ == "__main__":
    main()
