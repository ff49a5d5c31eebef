"""The real lifecycle worker as a subprocess, with an optional kill switch (tests only).

    python -m tests.faults.worker_process

Settings come from the environment (PREVIEW_*), exactly as for `python -m worker`. The
kill switch, also from the environment, SIGKILLs this process right before or right
after the N-th activity of one type that this process executes:

    PREVIEW_FAULT_ACTIVITY=ensure_namespace   # activity type
    PREVIEW_FAULT_NTH=1                       # which one (1 = the first)
    PREVIEW_FAULT_WHEN=before                 # before | after

"N-th" counts distinct scheduled activities (workflow run + activity id), so a retry of
an earlier one does not move the boundary. SIGKILL leaves no chance to clean up: the
server only learns of it when the activity's heartbeat timeout expires, as after a
crashed machine.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from temporalio import activity, client
from temporalio.client import Client
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from engine.client import connect
from engine.settings import Settings
from worker import Resources, Target, build_worker

READY_LINE = "fault worker ready"
KILL_LINE = "fault worker killing itself"


class KillSwitch(client.Interceptor, Interceptor):
    """SIGKILLs the process at one activity boundary.

    A client interceptor that is also a worker interceptor: every worker built on that
    client runs it, so the worker itself is built exactly as production builds it."""

    def __init__(self, activity_type: str, nth: int, when: str) -> None:
        if when not in ("before", "after") or nth < 1:
            raise SystemExit(f"bad kill switch: {activity_type} #{nth} {when}")
        self.activity_type = activity_type
        self.nth = nth
        self.when = when
        self.seen: set[tuple[str, str]] = set()

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Inbound(next, self)

    def is_target(self) -> bool:
        info = activity.info()
        if info.activity_type != self.activity_type:
            return False
        key = (info.workflow_run_id or "", info.activity_id)
        if key in self.seen:
            return False  # a retry of one already counted
        self.seen.add(key)
        return len(self.seen) == self.nth

    def kill(self) -> None:
        info = activity.info()
        print(f"{KILL_LINE} {self.when} {info.activity_type} #{self.nth} "
              f"(activity {info.activity_id})", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


class _Inbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, switch: KillSwitch) -> None:
        super().__init__(next)
        self.switch = switch

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        target = self.switch.is_target()
        if target and self.switch.when == "before":
            self.switch.kill()
        result = await self.next.execute_activity(input)
        if target:  # after: the work is done, its result never reaches the server
            self.switch.kill()
        return result


def kill_switch_from_env() -> KillSwitch | None:
    activity_type = os.environ.get("PREVIEW_FAULT_ACTIVITY")
    if not activity_type:
        return None
    return KillSwitch(activity_type, int(os.environ.get("PREVIEW_FAULT_NTH", "1")),
                      os.environ.get("PREVIEW_FAULT_WHEN", "before"))


async def serve() -> None:
    settings = Settings()
    temporal = await connect(settings)
    switch = kill_switch_from_env()
    if switch is not None:
        config = temporal.config()
        config["interceptors"] = [*config["interceptors"], switch]
        temporal = Client(**config)
    resources = Resources()
    worker = await build_worker(temporal, settings, Target(), resources)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        print(f"{READY_LINE}: {worker.task_queue}", flush=True)
        await stop.wait()
    await resources.close()


def main() -> None:
    asyncio.run(serve())
    # As `python -m worker`: skip finalisation, where the SDK's threads can crash it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
