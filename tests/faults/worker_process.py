"""The real lifecycle worker as a subprocess, with an optional kill switch (tests only).

    python -m tests.faults.worker_process

Settings come from the environment (PREVIEW_*), exactly as for `python -m worker`. The
kill switch, also from the environment, SIGKILLs this process right before or right
after the N-th activity of one type that this process executes:

    PREVIEW_FAULT_ACTIVITY=ensure_namespace   # activity type
    PREVIEW_FAULT_NTH=1                       # which one (1 = the first)
    PREVIEW_FAULT_WHEN=before                 # before | after | during
    PREVIEW_FAULT_DELAY=0.5                   # during: seconds into the activity

"N-th" counts distinct scheduled activities (workflow run + activity id), so a retry of
an earlier one does not move the boundary, and a retry is never a target: two workers
armed alike lose only the one that ran the first attempt. `during` kills that many
seconds into the activity, or as soon as it returns if sooner (its result never
reaches the server). SIGKILL leaves no chance to clean up: the server only learns of it
when the activity's heartbeat timeout expires, as after a crashed machine.

    PREVIEW_FAULT_TRACE=1                     # print a line as each activity starts

so a test can tell when, and on which worker, a killed step ran again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any, NoReturn

from temporalio import activity, client
from temporalio.client import Client
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from engine.client import connect
from engine.settings import Settings
from worker import Resources, Target, build_worker

READY_LINE = "fault worker ready"
KILL_LINE = "fault worker killing itself"
STARTED_LINE = "fault worker started"  # + type, attempt, workflow id, activity id, epoch


class KillSwitch(client.Interceptor, Interceptor):
    """SIGKILLs the process at one activity boundary.

    A client interceptor that is also a worker interceptor: every worker built on that
    client runs it, so the worker itself is built exactly as production builds it."""

    def __init__(self, activity_type: str, nth: int, when: str, delay: float = 0.5) -> None:
        if when not in ("before", "after", "during") or nth < 1:
            raise SystemExit(f"bad kill switch: {activity_type} #{nth} {when}")
        self.activity_type = activity_type
        self.nth = nth
        self.when = when
        self.delay = delay
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
        return len(self.seen) == self.nth and info.attempt == 1

    def kill(self) -> NoReturn:
        info = activity.info()
        print(f"{KILL_LINE} {self.when} {info.activity_type} #{self.nth} "
              f"(activity {info.activity_id}) workflow {info.workflow_id} "
              f"at {time.time():.3f}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("SIGKILL returned")  # it never does: for the type checker


class _Inbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, switch: KillSwitch) -> None:
        super().__init__(next)
        self.switch = switch

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        target = self.switch.is_target()
        if target and self.switch.when == "before":
            self.switch.kill()
        if target and self.switch.when == "during":
            running = asyncio.ensure_future(self.next.execute_activity(input))
            await asyncio.wait({running}, timeout=self.switch.delay)
            self.switch.kill()
        result = await self.next.execute_activity(input)
        if target:  # after: the work is done, its result never reaches the server
            self.switch.kill()
        return result


class Trace(client.Interceptor, Interceptor):
    """Prints a line as each activity attempt starts (STARTED_LINE)."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Traced(next)


class _Traced(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        print(f"{STARTED_LINE} {info.activity_type} {info.attempt} {info.workflow_id} "
              f"{info.activity_id} {time.time():.3f}", flush=True)
        return await self.next.execute_activity(input)


def kill_switch_from_env() -> KillSwitch | None:
    activity_type = os.environ.get("PREVIEW_FAULT_ACTIVITY")
    if not activity_type:
        return None
    return KillSwitch(activity_type, int(os.environ.get("PREVIEW_FAULT_NTH", "1")),
                      os.environ.get("PREVIEW_FAULT_WHEN", "before"),
                      float(os.environ.get("PREVIEW_FAULT_DELAY", "0.5")))


async def serve() -> None:
    settings = Settings()
    temporal = await connect(settings)
    added: list[client.Interceptor] = []
    if os.environ.get("PREVIEW_FAULT_TRACE") == "1":
        added.append(Trace())  # outermost: it sees the attempt start before a kill
    if (switch := kill_switch_from_env()) is not None:
        added.append(switch)
    if added:
        config = temporal.config()
        config["interceptors"] = [*config["interceptors"], *added]
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
