"""Shared parts of the fault tests: the blueprint, a worker subprocess, and the checks,
made from outside the code under test, that an environment is complete or fully gone."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from activities.control_plane.planning import plan_options
from domain.blueprint import Blueprint
from domain.naming import Ownership, environment_id, hostname
from domain.plan import Plan, PlanOptions, plan_preview
from domain.pull_request import PullRequest
from engine.client import data_converter
from engine.sealing import Sealer
from engine.settings import Settings
from stack.postgres import create_database
from store import Store
from tests.faults.worker_process import KILL_LINE, READY_LINE, STARTED_LINE
from workflows.preview import HEAD_SHA, STATE, PreviewEnvironmentWorkflow, PreviewStatus

ROOT = Path(__file__).parents[2]
REPOSITORY = "faults/shop"
BASE_DOMAIN = "faults.example.com"
SECRET_VALUE = f"sk_fault_{uuid.uuid4().hex}"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "faults", "AWS_SECRET_ACCESS_KEY": "faults"}
FIRST_SHA, SECOND_SHA = "a" * 40, "b" * 40
CONVERGE_TIMEOUT = 120.0  # seconds: any wait for the engine to get somewhere


def blueprint(zone_id: str) -> Blueprint:
    """Two applications, one shared-mode database and DNS: Kubernetes, PostgreSQL and
    AWS (Route53) are all on the path of a create and of a destroy."""
    return Blueprint.model_validate({
        "project": {"name": "faults-shop", "repository": REPOSITORY},
        "applications": [
            {"name": "web", "image": "registry.local/shop/web", "depends_on": ["api"]},
            {"name": "api", "image": "registry.local/shop/api", "depends_on": ["main"]},
        ],
        "databases": [{
            "name": "main", "mode": "shared", "data_policy": "seed",
            "seed_sql": "CREATE TABLE greeting (text text); INSERT INTO greeting VALUES ('hi');",
        }],
        "network": {"base_domain": BASE_DOMAIN, "hosted_zone_id": zone_id},
        "variables": [{"key": "GREETING", "value": "hello"}],
    })


def pull_request(number: int, sha: str, minute: int = 0) -> PullRequest:
    return PullRequest(repository=REPOSITORY, number=number, head_sha=sha, branch="feature",
                       updated_at=f"2030-01-01T00:{minute:02d}:00Z")  # type: ignore[arg-type]


def plan_for(pr: PullRequest, zone_id: str = "ZFAULTS", options: PlanOptions | None = None,
             ) -> Plan:
    # The fault stack's worker checks no image (fake nodes pull none): plan as it does.
    return plan_preview(blueprint(zone_id), pr,
                        options=options or PlanOptions(check_images=False))


def settings_env(settings: Settings) -> dict[str, str]:
    return settings.as_environment()


def unique_number() -> int:
    # The Temporal server, cluster and PostgreSQL are shared by the session.
    return uuid.uuid4().int % 10**6 + 1


# --- the worker as a subprocess ----------------------------------------------------------


class WorkerProcess:
    """`python -m tests.faults.worker_process`; output kept for the failure message."""

    def __init__(self, settings: Settings, kill: dict[str, str] | None = None,
                 label: str = "worker") -> None:
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("PREVIEW_", "AWS_"))}
        self.env = {**base, **AWS_ENV, **settings_env(settings), **(kill or {})}
        self.label = label
        self.lines: list[str] = []
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def output(self) -> str:
        lines = self.lines if len(self.lines) <= 80 else [
            *self.lines[:30], f"[... {len(self.lines) - 80} lines ...]", *self.lines[-50:]]
        return f"--- {self.label} output ---\n" + "\n".join(lines)

    @property
    def killed_itself(self) -> bool:
        return any(line.startswith(KILL_LINE) for line in self.lines)

    async def start(self, timeout: float = 60) -> WorkerProcess:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.faults.worker_process",
            cwd=ROOT, env=self.env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )
        self._reader = asyncio.ensure_future(self._read())
        waiter = asyncio.ensure_future(self._ready.wait())
        exited = asyncio.ensure_future(self._process.wait())
        try:
            await asyncio.wait({waiter, exited}, timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            exited.cancel()
        if not self._ready.is_set():
            await self.stop()
            raise AssertionError(f"{self.label} not ready within {timeout}s\n{self.output}")
        return self

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for raw in self._process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if line.startswith(READY_LINE):
                self._ready.set()

    async def wait_exit(self, timeout: float) -> int:
        assert self._process is not None
        try:
            code = await asyncio.wait_for(self._process.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.label} still running after {timeout}s\n"
                                 f"{self.output}") from None
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 10)  # the last lines, then EOF
        return code

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def attempt_starts(self) -> list[AttemptStart]:
        """Every activity attempt this worker started (it needs PREVIEW_FAULT_TRACE=1)."""
        starts = []
        for line in self.lines:
            if line.startswith(STARTED_LINE):
                kind, attempt, workflow_id, activity_id, at = line.split()[-5:]
                starts.append(AttemptStart(kind, int(attempt), workflow_id, activity_id,
                                           float(at)))
        return starts

    def kill_switch_fired(self) -> AttemptStart | None:
        """The attempt its kill switch killed it in, `at` the moment of the kill."""
        for line in self.lines:
            if line.startswith(KILL_LINE) and (found := _KILLED.search(line)):
                return AttemptStart(found["type"], 1, found["workflow"], found["activity"],
                                    float(found["at"]))
        return None

    async def stop(self, timeout: float = 20) -> None:
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._reader is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 5)


@dataclass(frozen=True)
class AttemptStart:
    activity_type: str
    attempt: int
    workflow_id: str
    activity_id: str
    at: float  # Unix time, this machine's clock


_KILLED = re.compile(r" (?P<type>\w+) #\d+ \(activity (?P<activity>\S+)\) "
                     r"workflow (?P<workflow>\S+) at (?P<at>[\d.]+)$")


def restarted(attempt: AttemptStart, workers: list[WorkerProcess]) -> AttemptStart | None:
    """The first later attempt of that same activity that one of `workers` started."""
    later = [s for w in workers for s in w.attempt_starts()
             if (s.workflow_id, s.activity_id) == (attempt.workflow_id, attempt.activity_id)
             and s.attempt > attempt.attempt]
    return min(later, key=lambda s: s.at, default=None)


# --- waiting on a workflow without a worker ---------------------------------------------


async def search_state(handle: WorkflowHandle[Any, Any]) -> tuple[str | None, str | None, str]:
    """(PreviewState, PreviewHeadSha, execution status) from the server alone: unlike a
    query, describe needs no worker, so it works while the worker is dead."""
    desc = await handle.describe()
    attributes = desc.typed_search_attributes
    status = desc.status.name if desc.status is not None else "UNKNOWN"
    return attributes.get(STATE), attributes.get(HEAD_SHA), status


async def until(check: Callable[[], Any], timeout: float, what: str,
                interval: float = 0.2) -> Any:
    """Poll an async `check` until it returns something truthy, within a deadline.

    RPC errors count as "not yet" (the server may be restarting)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        try:
            last = await check()
        except RPCError as error:
            last = f"RPC error: {error}"
        else:
            if last:
                return last
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)


# --- the stack --------------------------------------------------------------------------


@dataclass
class FaultStack:
    settings: Settings
    store: Store
    zone_id: str
    postgres: Any  # the session's PostgreSQL: the store and the preview databases
    moto: Any
    kube: Any
    client: Client
    timings: dict[str, dict[str, float]] = field(default_factory=dict)

    def worker(self, kill: dict[str, str] | None = None, label: str = "worker",
               settings: Settings | None = None) -> WorkerProcess:
        return WorkerProcess(settings or self.settings, kill, label)

    def plan(self, pr: PullRequest) -> Plan:
        return plan_for(pr, self.zone_id, plan_options(self.settings))

    async def leftovers(self, number: int) -> list[str]:
        """Everything of PR `number`'s preview still present anywhere, seen from outside."""
        return await find_leftovers(number, kube=self.kube, moto=self.moto,
                                    zone_id=self.zone_id, preview_admin_url=self.postgres.admin_url,
                                    store=self.store)


async def kubectl(kube: Any, *args: str) -> str:
    """kubectl in a thread: other runs keep going on the event loop meanwhile."""
    return str(await asyncio.to_thread(kube.kubectl, *args))


async def records(moto: Any, zone_id: str) -> list[dict[str, Any]]:
    """Every record set of the zone, read with boto3 (in a thread)."""
    route53 = moto.client("route53")

    def read() -> list[dict[str, Any]]:
        pages = route53.get_paginator("list_resource_record_sets").paginate(
            HostedZoneId=zone_id)
        return [record for page in pages for record in page["ResourceRecordSets"]]

    return await asyncio.to_thread(read)


KUBE_KINDS = ("namespaces,deployments,replicasets,pods,services,configmaps,secrets,ingresses,"
              "networkpolicies,resourcequotas,limitranges,statefulsets,jobs,"
              "persistentvolumeclaims")


async def find_leftovers(number: int, *, kube: Any, moto: Any, zone_id: str,
                         preview_admin_url: str, store: Store | None) -> list[str]:
    env = environment_id(REPOSITORY, number)
    found: list[str] = []
    # Kubernetes, with kubectl: the namespace, and anything else carrying our mark.
    namespaces = (await kubectl(kube, "get", "namespaces", "-o", "name")).split()
    found += [n for n in namespaces if n == f"namespace/{env}"]
    selector = ",".join(f"{k}={v}" for k, v in Ownership(environment=env).labels().items())
    marked = (await kubectl(kube, "get", KUBE_KINDS, "-A", "-l", selector, "-o", "name")).split()
    found += [f"kubernetes {m}" for m in marked if m != f"namespace/{env}"]
    # PostgreSQL, with asyncpg: databases, roles, and the engine's claim rows.
    pg_env = env.replace("-", "_")
    conn = await asyncpg.connect(preview_admin_url)
    try:
        found += [f"database {r['datname']}" for r in await conn.fetch(
            "SELECT datname FROM pg_database WHERE position($1 in datname) > 0", pg_env)]
        found += [f"role {r['rolname']}" for r in await conn.fetch(
            "SELECT rolname FROM pg_roles WHERE position($1 in rolname) > 0", pg_env)]
        if await conn.fetchval("SELECT to_regclass('preview_engine.databases')"):
            found += [f"clone claim {r['database']}" for r in await conn.fetch(
                "SELECT database FROM preview_engine.databases WHERE environment = $1", env)]
    finally:
        await conn.close()
    # Route53 in moto, with boto3: the CNAMEs and their ownership TXT records.
    hosts = {f"{hostname(app, number, BASE_DOMAIN)}." for app in ("web", "api")}
    for record in await records(moto, zone_id):
        if record["Name"].removeprefix("_owner.") in hosts:
            found.append(f"route53 {record['Type']} {record['Name']}")
    # The control-plane store: the preview's slot.
    if store is not None:
        found += [f"preview slot {r['environment']}" for r in await store.pool.fetch(
            "SELECT environment FROM preview_slots WHERE environment = $1", env)]
    return found


async def make_store(admin_url: str, database_url: str, settings: Settings) -> Store:
    """A fresh database on that server, with the store's schema."""
    await create_database(admin_url, database_url.rsplit("/", 1)[-1])
    store = await Store.connect(database_url, Sealer.from_settings(settings))
    await store.migrate()
    return store


async def import_blueprint(store: Store, zone_id: str) -> None:
    await store.import_blueprint(blueprint(zone_id), actor="faults")
    await store.put_secret("faults-shop", "STRIPE_KEY", SECRET_VALUE, actor="faults")


def hosted_zone(moto: Any) -> str:
    zone = moto.client("route53").create_hosted_zone(
        Name=BASE_DOMAIN, CallerReference=str(uuid.uuid4()))["HostedZone"]["Id"]
    return str(zone).split("/")[-1]


# --- checks ------------------------------------------------------------------------------


async def converged(stack: FaultStack, handle: WorkflowHandle[Any, Any], sha: str,
                    worker: WorkerProcess) -> PreviewStatus:
    """Ready at `sha`, every step complete, and exactly the planned objects exist."""
    async def ready() -> bool:
        state, head, status = await search_state(handle)
        assert status == "RUNNING", f"workflow {status}\n{worker.output}"
        if state == "ready" and head == sha:
            return True
        if state == "failed" or (state == "ready" and head != sha and worker.running):
            # A failed create says "failed"; a failed redeploy goes back to "ready" at the
            # old commit with last_error set (the query needs the live worker).
            last = (await handle.query(PreviewEnvironmentWorkflow.status)).last_error
            assert last is None, f"deploy of {sha[:7]} failed: {last}\n{worker.output}"
        return False

    await until(ready, CONVERGE_TIMEOUT, f"ready at {sha[:7]}")
    status = await handle.query(PreviewEnvironmentWorkflow.status)
    plan = stack.plan(pull_request(1, sha))
    assert (status.steps_done, status.steps_total) == (len(plan.steps), len(plan.steps))
    await check_environment(stack, status, sha)
    # The leftover check is not vacuous: on a live environment it sees every part.
    number = int(handle.id.rsplit("-", 1)[1])
    seen = await stack.leftovers(number)
    for part in ("namespace/", "kubernetes ", "database ", "role ", "clone claim ",
                 "route53 CNAME", "route53 TXT", "preview slot "):
        assert any(item.startswith(part) for item in seen), f"no {part!r} in {seen}"
    return status


async def check_environment(stack: FaultStack, status: PreviewStatus, sha: str) -> None:
    """From outside: what the plan asks for is there once, nothing more, nothing half-made."""
    env = status.environment_id
    kube = stack.kube
    jsonpath = "jsonpath={range .items[*]}{.metadata.name}={.spec.template.spec.containers[0]" \
               ".image}/{.status.readyReplicas} {end}"
    deployments = set((await kubectl(kube, "get", "deploy", "-n", env, "-o", jsonpath)).split())
    assert deployments == {f"web=registry.local/shop/web:{sha}/1",
                           f"api=registry.local/shop/api:{sha}/1"}
    listed = await kubectl(kube, "get", "svc,ingress,configmap,secret", "-n", env, "-o", "name",
                           "-l", "app.kubernetes.io/managed-by=preview-engine")
    names = set(listed.split())
    assert names == {"service/web", "service/api", "ingress.networking.k8s.io/web",
                     "ingress.networking.k8s.io/api", "configmap/web-config",
                     "configmap/api-config", "secret/web-secrets", "secret/api-secrets"}
    config = json.loads(await kubectl(kube, "get", "configmap", "api-config", "-n", env, "-o",
                                      "json"))
    assert config["data"]["HEAD_SHA"] == sha
    secret = json.loads(await kubectl(kube, "get", "secret", "api-secrets", "-n", env, "-o",
                                      "json"))
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert values["STRIPE_KEY"] == SECRET_VALUE
    # The database is there once, seeded once, reachable with the URL the app was given.
    conn = await asyncpg.connect(values["DATABASE_URL"])
    try:
        assert await conn.fetchval("SELECT count(*) FROM greeting") == 1
    finally:
        await conn.close()
    pg_env = env.replace("-", "_")
    conn = await asyncpg.connect(stack.postgres.admin_url)
    try:
        databases = await conn.fetchval(
            "SELECT count(*) FROM pg_database WHERE position($1 in datname) > 0", pg_env)
    finally:
        await conn.close()
    assert databases == 1
    number = int(status.urls["web"].split("-pr-")[1].split(".")[0])
    ours = sorted((r["Type"], r["Name"]) for r in await records(stack.moto, stack.zone_id)
                  if f"-pr-{number}." in r["Name"])
    assert ours == sorted(
        [("CNAME", f"{app}-pr-{number}.{BASE_DOMAIN}.") for app in ("api", "web")]
        + [("TXT", f"_owner.{app}-pr-{number}.{BASE_DOMAIN}.") for app in ("api", "web")])
    slots = await stack.store.pool.fetchval(
        "SELECT count(*) FROM preview_slots WHERE environment = $1", env)
    assert slots == 1


async def retried_after_timeout(handle: WorkflowHandle[Any, Any], activity_type: str) -> bool:
    """Whether the server timed out an attempt of an `activity_type` activity and ran it
    again: what a worker killed in the middle of it looks like from the history."""
    history = await handle.fetch_history()
    scheduled = {
        e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events if e.HasField("activity_task_scheduled_event_attributes")
    }
    for event in history.events:
        if event.HasField("activity_task_started_event_attributes"):
            started = event.activity_task_started_event_attributes
            if (scheduled.get(started.scheduled_event_id) == activity_type
                    and started.attempt >= 2
                    and started.last_failure.HasField("timeout_failure_info")):
                return True
    return False


async def destroyed(handle: WorkflowHandle[Any, Any], worker: WorkerProcess) -> None:
    try:
        result = await asyncio.wait_for(handle.result(), CONVERGE_TIMEOUT)
    except TimeoutError:
        raise AssertionError(f"not destroyed within {CONVERGE_TIMEOUT}s\n"
                             f"{worker.output}") from None
    assert result.state == "destroyed", result


async def connect_when_healthy(address: str, settings: Settings, timeout: float = 60) -> Client:
    """A client of a dev server that has just started: its port opens before its frontend
    answers ("Frontend is not healthy yet"), so retry the connection within a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await Client.connect(address, data_converter=data_converter(settings))
        except RuntimeError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def retry_started_at(handle: WorkflowHandle[Any, Any], activity_id: str) -> float | None:
    """Server time (Unix) of the ActivityTaskStarted event of a retried attempt (2 or
    later) of one activity, from the history; None if it has not been written yet (the
    server writes a retry's Started event only once the attempt ends)."""
    history = await handle.fetch_history()
    scheduled = {e.event_id for e in history.events
                 if e.HasField("activity_task_scheduled_event_attributes")
                 and e.activity_task_scheduled_event_attributes.activity_id == activity_id}
    for event in history.events:
        started = event.activity_task_started_event_attributes
        if (event.HasField("activity_task_started_event_attributes")
                and started.scheduled_event_id in scheduled and started.attempt >= 2):
            return event.event_time.seconds + event.event_time.nanos / 1e9
    return None
