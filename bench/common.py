"""What every benchmark shares: the stack it runs on, percentiles, signed webhooks, JSON.

`BenchStack` starts the real parts on loopback from stack/ (PostgreSQL, Temporal's dev
server, optionally moto and the Kubernetes control plane, with kwok's fake nodes or one
real node whose pods run: `node="real"`) in a private state folder, and can add
`python -m worker` and `python -m starter` as subprocesses (stack.run's `Service`),
configured through PREVIEW_* variables exactly as in production.

`Recorder` writes bench/results/<name>.json with the exact command line, the machine
(nproc, memory, CPU model), the date, the load average before and after, and figures.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import asyncpg
import httpx
from pydantic import SecretStr
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle

from domain.blueprint import Blueprint
from engine.client import connect
from engine.settings import Settings
from stack.ports import free_port
from stack.postgres import PostgresServer, create_database
from stack.temporal import TemporalDevServer

if TYPE_CHECKING:
    from stack.node import RealNode

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
FIXTURES = ROOT / "tests" / "fixtures" / "github-webhooks"
WEBHOOK_SECRET = "bench-webhook-secret"
CONTROL_DB = "preview_control"


# -- the machine and the result file ---------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine() -> dict[str, Any]:
    memory = memory_bytes()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_bytes": memory,
        "memory_gib": round(memory / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "temporalio": _version("temporalio"),
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that produced a result, as typed from the repository's root."""
    exe = Path(sys.executable)
    with_venv = str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else str(exe)
    return shlex.join([with_venv, "-m", module, *(sys.argv[1:] if argv is None else argv)])


def source_revision() -> dict[str, Any]:
    """The commit the benchmark ran on, and whether tracked files differed from it."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD") or None,
            "tracked_files_changed": len(changed.splitlines()) if changed else 0}


class Recorder:
    """Started when the benchmark starts; `write` adds the context every result carries."""

    def __init__(self, module: str) -> None:
        self.module = module
        self.command = command_line(module)
        self.started_at = datetime.now(UTC)
        self._t0 = time.monotonic()
        self.load_at_start = [round(x, 2) for x in os.getloadavg()]
        self.source = source_revision()

    def write(self, name: str, document: dict[str, Any], output: Path | None = None) -> Path:
        path = output or RESULTS / f"{name}.json"
        full = {
            "benchmark": name,
            "command": self.command,
            "date": self.started_at.isoformat(timespec="seconds"),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "total_seconds": round(time.monotonic() - self._t0, 1),
            "machine": {
                **machine(),
                "load_average_at_start": self.load_at_start,
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            },
            "source": self.source,
            **document,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(full, indent=2, default=str) + "\n")
        return path


# -- statistics -------------------------------------------------------------------------


def finish(recorder: Recorder, name: str, document: dict[str, Any], notes: list[str],
           line: str, output: Path | None = None) -> NoReturn:
    """Write the benchmark's JSON, say where, and leave at once (skipping finalisation:
    the SDK's threads can crash it, see temporal-notes.md)."""
    document["notes"] = notes
    path = recorder.write(name, document, output)
    print(f"{line}; wrote {path}")
    sys.stdout.flush()
    os._exit(0)


def parse_size(text: str) -> int:
    """`100MB`, `1GB`, `512KB` or plain bytes (decimal units, as database sizes go)."""
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9}
    text = text.strip().upper()
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float], digits: int = 4) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": round(min(values), digits),
        "p50": round(percentile(values, 50), digits),
        "p95": round(percentile(values, 95), digits),
        "p99": round(percentile(values, 99), digits),
        "max": round(max(values), digits),
        "mean": round(sum(values) / len(values), digits),
    }


# -- the stack --------------------------------------------------------------------------


class BenchStack:
    """The real parts on loopback in a private folder; everything it starts, it stops."""

    def __init__(self, *, kube: bool = True, moto: bool = True, keep_state: bool = False,
                 log_level: str = "INFO", pg_image_size: str | None = None,
                 node: Literal["fake", "real"] = "fake") -> None:
        """node (with kube): `fake`, kwok's nodes (the API only, pods never run); `real`,
        no kwok but one real node (stack/preview_node.py, root only) and the registry it
        pulls `registry.local/...` from, with the engine checking images there."""
        self.state = Path(tempfile.mkdtemp(prefix="bench-stack-"))
        os.chmod(self.state, 0o755)  # PostgreSQL runs as `postgres` under root
        self.with_kube, self.with_moto, self.keep_state = kube, moto, keep_state
        self.node_kind = node
        self.node: RealNode | None = None
        self.registry_host: str | None = None
        self.log_level = log_level
        self.pg_image_size = pg_image_size  # of its PostgreSQL's XFS image (stack/reflink.py)
        self._stoppers: list[Callable[[], None]] = []
        self.postgres: PostgresServer | None = None
        self.temporal: TemporalDevServer | None = None
        self.moto_endpoint: str | None = None
        self.kubeconfig: str | None = None
        self.worker_pid: int | None = None
        self.starter_url: str | None = None
        self.settings = Settings(  # type: ignore[call-arg]
            _env_file=None, github_webhook_secret=SecretStr(WEBHOOK_SECRET),
            # The development keys are fine on loopback; no registry runs here to check
            # images in.
            profile="local", check_images=False)

    def __enter__(self) -> BenchStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> BenchStack:
        began = time.monotonic()
        postgres = PostgresServer(self.state / "postgres", image_size=self.pg_image_size).start()
        self.postgres = postgres
        self._stoppers.append(postgres.stop)
        asyncio.run(create_database(postgres.admin_url, CONTROL_DB))
        temporal = TemporalDevServer(self.state / "temporal", headless=True).start()
        self.temporal = temporal
        self._stoppers.append(temporal.stop)
        update: dict[str, Any] = {
            "temporal_address": temporal.address,
            "database_url": postgres.url(CONTROL_DB),
            "preview_database_url": postgres.admin_url,
            "task_queue": f"bench-{uuid.uuid4().hex[:6]}",
            "github_webhook_secret": SecretStr(WEBHOOK_SECRET),
            "listen_port": free_port(),
        }
        if self.with_moto:
            from stack.moto import MotoServer

            moto = MotoServer(self.state / "moto.log").start()
            self._stoppers.append(moto.stop)
            self.moto_endpoint = update["aws_endpoint_url"] = moto.endpoint_url
        if self.with_kube and self.node_kind == "real":
            update.update(self._start_real_node(postgres, update["listen_port"]))
            self.kubeconfig = update["kubeconfig"]
        elif self.with_kube:
            from stack.kube import ControlPlane, build

            plane = ControlPlane(self.state / "kube", bin_dir=build())
            plane.start()
            self._stoppers.append(plane.stop)
            self.kubeconfig = update["kubeconfig"] = str(plane.kubeconfig)
        self.settings = self.settings.model_copy(update=update)
        self.startup_seconds = round(time.monotonic() - began, 1)
        return self

    def _start_real_node(self, postgres: PostgresServer, starter_port: int) -> dict[str, Any]:
        """The registry, a control plane without kwok and a real node (as `make run`
        starts them); the settings that point the engine at them."""
        from stack import kube, node_build, registry
        from stack.preview_node import start_preview_node

        for build in (kube.build, registry.build, node_build.build):
            build()
        images = registry.Registry(self.state / "registry").start()
        self._stoppers.append(images.stop)
        plane = kube.ControlPlane(self.state / "kube", fake_nodes=0)
        plane.start()
        self._stoppers.append(plane.stop)
        # The ingress's default backend is the starter (it wakes a sleeping preview).
        self.node = start_preview_node(
            plane, images, self.state / "node", pod_services={"postgres": postgres.port},
            default_backend=f"http://127.0.0.1:{starter_port}")
        self._stoppers.append(self.node.stop)
        self.registry_host = images.host
        return {**self.node.engine_settings(images.host, postgres.port), "check_images": True}

    @property
    def env(self) -> dict[str, str]:
        """The environment of our subprocesses: PREVIEW_* from the settings."""
        return {**os.environ, **self.settings.as_environment(),
                "PREVIEW_LOG_LEVEL": self.log_level,
                "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}

    def _service(self, name: str, module: str) -> int:
        from stack.run import Service

        service = Service(name, [sys.executable, "-m", module], self.env,
                          self.state / f"{name}.log")
        self._stoppers.append(service.stop)
        return service.process.pid

    def start_worker(self, timeout: float = 60) -> int:
        """`python -m worker` on our task queue; its pid (for /proc/<pid>/status)."""
        self.worker_pid = self._service("worker", "worker")
        log = self.state / "worker.log"
        deadline = time.monotonic() + timeout
        while "worker ready" not in (log.read_text() if log.exists() else ""):
            if not Path(f"/proc/{self.worker_pid}").exists() or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start; see {log}")
            time.sleep(0.1)  # polling a condition with a deadline
        return self.worker_pid

    def start_starter(self, timeout: float = 60) -> str:
        """`python -m starter` (uvicorn) on a loopback port; its base URL."""
        self._service("starter", "starter")
        url = f"http://127.0.0.1:{self.settings.listen_port}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the starter did not answer; see {self.state}/starter.log")
            time.sleep(0.1)  # polling a condition with a deadline
        self.starter_url = url
        return url

    def stop(self) -> None:
        for stop in reversed(self._stoppers):
            try:
                stop()
            except Exception as error:  # keep stopping the rest
                print(f"could not stop a part: {error}", file=sys.stderr)
        self._stoppers.clear()
        if self.keep_state:
            print(f"stack state kept in {self.state}", file=sys.stderr)
        else:
            shutil.rmtree(self.state, ignore_errors=True)

    async def client(self) -> Client:
        return await connect(self.settings)


async def import_blueprints(settings: Settings, blueprints: Iterable[Blueprint]) -> None:
    """Migrate the control-plane store and import the blueprints, as an operator would."""
    from engine.sealing import Sealer
    from store import Store

    store = await Store.connect(settings.database_url, Sealer.from_settings(settings))
    try:
        await store.migrate()
        for blueprint in blueprints:
            await store.import_blueprint(blueprint, actor="bench")
    finally:
        await store.close()


# -- webhooks ---------------------------------------------------------------------------


def pull_request_payload(action: str, repository: str, number: int, sha: str,
                         updated_at: str | None = None) -> dict[str, Any]:
    """GitHub's own `pull_request` fixture, re-aimed at one repository and PR number."""
    name = action if (FIXTURES / f"pull_request.{action}.json").exists() else "opened"
    payload: dict[str, Any] = json.loads((FIXTURES / f"pull_request.{name}.json").read_text())
    payload["action"] = action
    payload["number"] = number
    pr = payload["pull_request"]
    pr["number"] = number
    pr["head"]["sha"] = sha
    for side in ("head", "base"):
        if pr[side].get("repo"):
            pr[side]["repo"]["full_name"] = repository
    payload["repository"]["full_name"] = repository
    if updated_at:
        pr["updated_at"] = updated_at
    return payload


def signed(payload: dict[str, Any], secret: str = WEBHOOK_SECRET,
           event: str = "pull_request") -> tuple[bytes, dict[str, str]]:
    """The body and headers GitHub would send: HMAC-SHA256 signature, a fresh delivery id."""
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": signature,
        "Content-Type": "application/json",
    }


async def post_webhook(http: httpx.AsyncClient, payload: dict[str, Any],
                       secret: str = WEBHOOK_SECRET) -> dict[str, Any]:
    body, headers = signed(payload, secret)
    answer = await http.post("/webhooks/github", content=body, headers=headers)
    if answer.status_code != 202:
        raise RuntimeError(f"webhook answered {answer.status_code}: {answer.text}")
    result: dict[str, Any] = answer.json()
    return result


def sha_for(number: int, salt: str = "") -> str:
    return hashlib.sha1(f"{salt}{number}".encode()).hexdigest()


# -- workflows and their histories ------------------------------------------------------


async def wait_status(handle: WorkflowHandle[Any, Any], predicate: Callable[[Any], bool],
                      timeout: float, interval: float = 0.1) -> Any:
    """Poll the workflow's `status` query until `predicate` holds, within a deadline."""
    from workflows.preview import PreviewEnvironmentWorkflow

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    status = None
    while True:
        try:
            status = await handle.query(PreviewEnvironmentWorkflow.status)
            if predicate(status):
                return status
        except Exception as error:  # not started yet: keep polling until the deadline
            if loop.time() > deadline:
                raise TimeoutError(f"{handle.id}: {error}") from error
        if loop.time() > deadline:
            raise TimeoutError(f"{handle.id}: not reached in {timeout}s; last status {status}")
        await asyncio.sleep(interval)


def event_seconds(event: HistoryEvent) -> float:
    """An event's server timestamp as Unix seconds."""
    return float(event.event_time.seconds) + event.event_time.nanos / 1e9


async def history_events(client: Client, workflow_id: str,
                         run_id: str | None = None) -> list[HistoryEvent]:
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    return list(history.events)


def state_changes(events: Iterable[HistoryEvent]) -> list[tuple[float, str]]:
    """(server time, PreviewState) of every state the workflow published, in order."""
    changes = []
    for event in events:
        if event.event_type != EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            continue
        fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes
        payload = fields.indexed_fields.get("PreviewState")
        if payload is not None:
            changes.append((event_seconds(event), str(json.loads(payload.data))))
    return changes


def rss_of(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of a process, in bytes, from /proc/<pid>/status."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            found[key] = int(value.split()[0]) * 1024
    return found


# -- what a preview leaves behind ------------------------------------------------------


def namespaces(kubeconfig: str) -> set[str]:
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    api = k8s_config.new_client_from_config(config_file=kubeconfig)
    try:
        items = k8s.CoreV1Api(api).list_namespace().items
        return {str(ns.metadata.name) for ns in items if ns.metadata is not None}
    finally:
        api.close()


async def leftovers(settings: Settings, environment_ids: Iterable[str]) -> dict[str, list[str]]:
    """Namespaces, databases and preview slots of these environments that still exist."""
    ids = set(environment_ids)
    found: dict[str, list[str]] = {"namespaces": [], "databases": [], "slots": []}
    if settings.kubeconfig:
        found["namespaces"] = sorted(
            await asyncio.to_thread(namespaces, settings.kubeconfig) & ids)
    conn = await asyncpg.connect(settings.preview_database_url)
    try:
        names = [r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")]
    finally:
        await conn.close()
    found["databases"] = sorted(
        d for d in names if any(e.replace("-", "_") in d for e in ids))
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch("SELECT environment FROM preview_slots")
    finally:
        await conn.close()
    found["slots"] = sorted(r["environment"] for r in rows if r["environment"] in ids)
    return found
