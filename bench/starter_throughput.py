"""Starter throughput and tail latency, as a ratio to raw `Client.start_workflow`.

Two ways to start the same preview workflows, each with the same count of requests at
the same concurrency, in alternating order over several rounds, on one Temporal dev
server, with NO worker (the workflows just wait, so nothing else competes):

- starter: signed GitHub `pull_request.opened` webhooks (unique PR numbers) POSTed
  over real HTTP on loopback to `python -m starter` (uvicorn, a subprocess): signature
  check, delivery log in PostgreSQL, event mapping, signal-with-start;
- baseline: the very call the starter makes, `Client.start_workflow` with
  start_signal="deploy" (starter.lifecycle.deploy), from this process.

Bodies and signatures are made before the clock starts. Throughput = requests / wall
time from the first send to the last answer; latency is per request. Every workflow
started is terminated at the end.

    .venv/bin/python -m bench.starter_throughput                   # 300 at concurrency 20
    .venv/bin/python -m bench.starter_throughput --requests 500 --concurrency 50
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from temporalio.client import Client

from bench.common import (
    BenchStack,
    Recorder,
    finish,
    import_blueprints,
    pull_request_payload,
    sha_for,
    signed,
    summary,
)
from domain.blueprint import Blueprint
from domain.naming import workflow_id
from engine.settings import Settings
from starter import lifecycle
from starter.events import github_pull_request
from workflows.saga import ActivityTimeouts

REPOSITORY = "bench/throughput"


async def bounded(count: int, concurrency: int,
                  one: Callable[[int], Awaitable[None]]) -> tuple[float, list[float]]:
    """Run `one(i)` for i < count, `concurrency` at a time; wall time and latencies."""
    latencies: list[float] = [0.0] * count
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def lane() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            began = time.perf_counter()
            await one(i)
            latencies[i] = time.perf_counter() - began

    began = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return time.perf_counter() - began, latencies


async def via_client(client: Client, settings: Settings, numbers: list[int],
                     concurrency: int) -> tuple[float, list[float]]:
    prs = [github_pull_request(pull_request_payload("opened", REPOSITORY, n, sha_for(n)))
           for n in numbers]
    timeouts = ActivityTimeouts()

    async def one(i: int) -> None:
        await lifecycle.deploy(client, prs[i], task_queue=settings.task_queue,
                               timeouts=timeouts)

    return await bounded(len(numbers), concurrency, one)


async def via_starter(http: httpx.AsyncClient, numbers: list[int],
                      concurrency: int) -> tuple[float, list[float]]:
    requests = [signed(pull_request_payload("opened", REPOSITORY, n, sha_for(n)))
                for n in numbers]

    async def one(i: int) -> None:
        body, headers = requests[i]
        answer = await http.post("/webhooks/github", content=body, headers=headers)
        if answer.status_code != 202 or answer.json()["outcome"] != "deployed":
            raise RuntimeError(f"webhook answered {answer.status_code}: {answer.text}")

    return await bounded(len(numbers), concurrency, one)


async def terminate_all(client: Client, numbers: list[int], concurrency: int) -> int:
    gate = asyncio.Semaphore(concurrency)

    async def one(n: int) -> None:
        async with gate:
            await client.get_workflow_handle(workflow_id(REPOSITORY, n)).terminate(
                reason="benchmark finished")

    await asyncio.gather(*(one(n) for n in numbers))
    return len(numbers)


def _figures(wall: float, latencies: list[float]) -> dict[str, Any]:
    return {"requests": len(latencies), "wall_seconds": round(wall, 3),
            "per_second": round(len(latencies) / wall, 1),
            "latency_seconds": summary(latencies, 4)}


async def bench(stack: BenchStack, args: argparse.Namespace) -> dict[str, Any]:
    settings = stack.settings
    await import_blueprints(settings, [Blueprint.model_validate({
        "project": {"name": "throughput", "repository": REPOSITORY},
        "applications": [{"name": "web", "image": "registry.local/bench/web"}]})])
    url = stack.start_starter()
    client = await stack.client()
    next_number = iter(range(1, 10**7))
    started: list[int] = []

    def numbers(count: int) -> list[int]:
        chunk = [next(next_number) for _ in range(count)]
        started.extend(chunk)
        return chunk

    limits = httpx.Limits(max_connections=args.concurrency,
                          max_keepalive_connections=args.concurrency)
    rounds: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        # Warm-up: connections, the server's caches, the starter's first requests.
        await via_client(client, settings, numbers(args.warmup), args.concurrency)
        await via_starter(http, numbers(args.warmup), args.concurrency)
        for r in range(args.rounds):
            result: dict[str, Any] = {}
            order = ["baseline", "starter"] if r % 2 == 0 else ["starter", "baseline"]
            for mode in order:
                batch = numbers(args.requests)
                if mode == "baseline":
                    wall, lat = await via_client(client, settings, batch, args.concurrency)
                else:
                    wall, lat = await via_starter(http, batch, args.concurrency)
                result[mode] = _figures(wall, lat)
                result[mode]["latencies"] = [round(x, 4) for x in lat]
            result["order"] = order
            result["throughput_ratio"] = round(
                result["starter"]["per_second"] / result["baseline"]["per_second"], 3)
            rounds.append(result)
            print(f"round {r + 1}: starter {result['starter']['per_second']}/s "
                  f"p99 {result['starter']['latency_seconds']['p99']} s, baseline "
                  f"{result['baseline']['per_second']}/s p99 "
                  f"{result['baseline']['latency_seconds']['p99']} s, ratio "
                  f"{result['throughput_ratio']}", flush=True)
    began = time.monotonic()
    terminated = await terminate_all(client, started, args.concurrency)
    terminate_seconds = round(time.monotonic() - began, 1)

    pooled: dict[str, Any] = {}
    for mode in ("baseline", "starter"):
        wall = sum(r[mode]["wall_seconds"] for r in rounds)
        lat = [x for r in rounds for x in r[mode].pop("latencies")]
        pooled[mode] = _figures(wall, lat)
    figures = {
        **pooled,
        "throughput_ratio": round(pooled["starter"]["per_second"]
                                  / pooled["baseline"]["per_second"], 3),
        "p99_latency_ratio": round(pooled["starter"]["latency_seconds"]["p99"]
                                   / pooled["baseline"]["latency_seconds"]["p99"], 3),
        "throughput_ratio_per_round": [r["throughput_ratio"] for r in rounds],
    }
    return {
        "parameters": {"requests": args.requests, "concurrency": args.concurrency,
                       "rounds": args.rounds, "warmup": args.warmup},
        "figures": figures,
        "rounds": rounds,
        "workflows_started": len(started),
        "workflows_terminated": terminated,
        "terminate_seconds": terminate_seconds,
    }


NOTES = [
    "No worker runs: each start only writes the workflow and its deploy signal; the "
    "workflows wait on their task queue until terminated at the end.",
    "starter = `python -m starter` (uvicorn, 1 process) over HTTP/1.1 keep-alive on "
    "127.0.0.1; each request: HMAC-SHA256 check, delivery id recorded in PostgreSQL, "
    "signal-with-start, outcome recorded. baseline = the same signal-with-start "
    "(starter.lifecycle.deploy) straight from this process's Temporal client.",
    "Both share one Temporal dev server (SQLite) and 2 cores with the load generator; "
    "throughput_ratio = starter requests/s ÷ baseline starts/s, pooled over all rounds.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=300, help="per mode and round")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--keep-state", action="store_true")
    args = parser.parse_args()
    recorder = Recorder("bench.starter_throughput")
    with BenchStack(kube=False, moto=False, keep_state=args.keep_state) as stack:
        document = asyncio.run(bench(stack, args))
    fig = document["figures"]
    finish(recorder, "starter_throughput", document, NOTES,
           f"starter {fig['starter']['per_second']}/s p99 "
           f"{fig['starter']['latency_seconds']['p99']} s; baseline "
           f"{fig['baseline']['per_second']}/s p99 {fig['baseline']['latency_seconds']['p99']} s;"
           f" ratio {fig['throughput_ratio']}")


if __name__ == "__main__":
    main()
