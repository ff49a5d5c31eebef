"""Is this pod's worker polling its task queue? The workers' startup, readiness and
liveness probe (the chart mounts it; it runs in the engine's image).

    python worker_probe.py [--target cluster:NAME|account:ID] [--max-age SECONDS]

It asks Temporal which workers poll the queue the worker serves (the lifecycle queue's
workflow tasks, or a tenant queue's activity tasks) and looks for this pod's worker by
its identity: the SDK's default `<pid>@<host name>`, and the worker is the container's
PID 1. Exit 1 when Temporal answers and no such poller was seen within max-age seconds
(the worker is stuck, or its pollers died); exit 0 when it was, or when Temporal cannot
be asked at all: a restart cannot bring Temporal back.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from datetime import timedelta

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.service import RPCError, RPCStatusCode

from domain.systems import tenant_queue
from engine.client import connect
from engine.settings import Settings

TIMEOUT = timedelta(seconds=10)
OUT_OF_REACH = {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED}


class Unreachable(Exception):
    """Temporal cannot be asked right now."""


def queue_of(settings: Settings, target: str | None) -> tuple[str, TaskQueueType.ValueType]:
    """The queue a worker of `target` polls, and the kind of task to look for."""
    if not target:
        return settings.task_queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW
    kind, _, name = target.partition(":")
    if kind not in ("cluster", "account") or not name:
        raise SystemExit(f"--target must be cluster:NAME or account:ID, got {target!r}")
    # A tenant worker runs activities only.
    queue = tenant_queue(settings.task_queue, "cluster" if kind == "cluster" else "account", name)
    return queue, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY


async def last_seen(settings: Settings, queue: str, kind: TaskQueueType.ValueType,
                    identity: str) -> float | None:
    """Seconds since `identity` last polled `queue`; None if it is not among its pollers."""
    try:
        client = await asyncio.wait_for(connect(settings), TIMEOUT.total_seconds())
    except (RuntimeError, TimeoutError) as error:  # the SDK's "failed client connect"
        raise Unreachable(error) from None
    answer = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(namespace=settings.temporal_namespace,
                                 task_queue=TaskQueue(name=queue), task_queue_type=kind),
        timeout=TIMEOUT)
    for poller in answer.pollers:
        if poller.identity == identity:
            return max(0.0, time.time() - poller.last_access_time.ToSeconds())
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", help="cluster:NAME or account:ID (a tenant worker)")
    parser.add_argument("--max-age", type=float, default=300.0,
                        help="seconds since the last poll after which the worker is stuck")
    parser.add_argument("--identity", default=f"1@{socket.gethostname()}",
                        help="the worker's Temporal identity (default: PID 1 of this host)")
    args = parser.parse_args(argv)
    settings = Settings()
    queue, kind = queue_of(settings, args.target)
    try:
        age = asyncio.run(last_seen(settings, queue, kind, args.identity))
    except (Unreachable, RPCError) as error:
        if isinstance(error, RPCError) and error.status not in OUT_OF_REACH:
            raise
        # Temporal out of reach is not this worker's fault: a restart cannot fix it.
        print(f"cannot ask Temporal ({error}); passing", flush=True)
        return 0
    if age is None:
        print(f"{args.identity} is not polling {queue}", flush=True)
        return 1
    if age > args.max_age:
        print(f"{args.identity} last polled {queue} {age:.0f}s ago", flush=True)
        return 1
    print(f"{args.identity} polled {queue} {age:.0f}s ago", flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Leave without the interpreter's finalisation: the SDK's runtime threads may still
    # be winding down a refused connect, and racing them there has aborted the probe
    # (SIGABRT, seen once under load), which the kubelet would count as a failure.
    os._exit(code)
