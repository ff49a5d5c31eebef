"""Metrics an operator can watch, scraped from a real worker and a real starter during a
preview's life.

The worker runs on the Temporal dev server with the runtime production gives it
(worker.telemetry_runtime: Prometheus on 127.0.0.1): the lifecycle workflow over the
recording Inventory, except that images are asked of a real registry
(tests/plugins/registry.py), so the preview waits for CI's push as in production. The
starter app takes signed webhooks (deliveries in real PostgreSQL). One preview is opened,
waits for its images, becomes ready, is redeployed, fails a redeploy (undone) and is
closed; a sweep removes orphans; a preview database is cloned from a golden copy. Both
endpoints are scraped before, while the preview is ready, and at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
import yaml
from pydantic import SecretStr
from temporalio import activity
from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.control_plane.blueprint_files import BlueprintFileActivities
from activities.control_plane.planning import PlanningActivities
from activities.postgres import GoldenCopyActivities, PostgresAccess, PreviewDatabaseActivities
from activities.postgres.clones import CLONE_DURATION
from activities.registry import IMAGE_CHECKS, RegistryActivities
from domain.blueprint import DataPolicy
from domain.contract import (
    LIST_KUBE_ENVIRONMENTS,
    LIST_PREVIEW_DATABASES,
    LIST_SWEEP_TARGETS,
    LIVE_ENVIRONMENTS,
    REMOVE_KUBE_ENVIRONMENT,
    REMOVE_PREVIEW_DATABASE,
    spec_types,
)
from domain.golden import GoldenRefreshRequest
from domain.naming import Ownership, environment_id, pg_identifier, workflow_id
from domain.plan import PlanOptions
from domain.resources import (
    ImageSpec,
    KubeEnvironmentInput,
    KubeSweepInput,
    PostgresCloneSpec,
    PreviewDatabase,
    StepInput,
    SweepTargets,
)
from engine.client import data_converter
from engine.settings import DEVELOPMENT_SECRETS, Settings
from stack.ports import free_port
from stack.postgres import PostgresServer
from stack.temporal import TemporalDevServer
from starter.app import create_app
from starter.metrics import StarterMetrics
from store import Store
from tests.activities.postgres.shop import KEY, SEALER, fresh_database
from tests.metrics.exposition import Scrape, lint
from tests.plugins.postgres import migrated_store
from tests.plugins.registry import PULLER, LoopbackRegistry
from tests.polling import wait_until
from tests.workflows.harness import BLUEPRINT, FAST
from tests.workflows.inventory import Inventory
from worker import activity_name, telemetry_runtime
from workflows.metrics import WORKFLOW_METRICS
from workflows.preview import PreviewEnvironmentWorkflow, PreviewState, PreviewStatus
from workflows.sweeper import OrphanSweepWorkflow, SweepRequest

ROOT = Path(__file__).parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "github-webhooks"
DASHBOARD = ROOT / "deploy" / "grafana" / "preview-engine.json"
SECRET = f"metrics-webhook-secret-{uuid.uuid4().hex}"
ACCOUNT = "111111111111"
TAG = uuid.uuid4().hex[:8]
# Names that must never reach a label: unusual enough to be found if they did.
REPOSITORY = f"metricsorg{TAG}/private-shop-{TAG}"
BRANCH = f"feature/secret-plans-{TAG}"
NUMBER = 7000 + int(TAG[:3], 16)
SHAS = [hashlib.sha1(f"{TAG}-{i}".encode()).hexdigest() for i in range(3)]
SPEC_KINDS = {cls.model_fields["kind"].default for cls in spec_types()}

T = TypeVar("T")


async def poll(what: str, check: Callable[[], Awaitable[T | None]], timeout: float = 60.0,
               interval: float = 0.1) -> T:
    """Await check() until it returns something truthy, or fail naming `what`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)  # polling a condition with a deadline


@dataclass
class Observed:
    """Both endpoints scraped at three moments, and what the test used."""

    worker: list[Scrape] = field(default_factory=list)
    starter: list[Scrape] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    statuses: list[PreviewStatus] = field(default_factory=list)
    ready_before: float = 0.0
    ready_while: float = 0.0


@dataclass(frozen=True)
class Telemetry:
    runtime: Runtime
    url: str  # its /metrics


@pytest.fixture(scope="module")
def telemetry() -> Telemetry:
    # The worker's own runtime, on a loopback port of its own (never 0.0.0.0 in tests).
    address = f"127.0.0.1:{free_port()}"
    return Telemetry(telemetry_runtime(address), f"http://{address}/metrics")


@pytest.fixture(scope="module")
async def metrics_client(temporal_server: TemporalDevServer, test_settings: Settings,
                         telemetry: Telemetry) -> Client:
    return await Client.connect(temporal_server.address, runtime=telemetry.runtime,
                                data_converter=data_converter(test_settings))


@pytest.fixture(scope="module")
async def store(postgres_server: PostgresServer) -> AsyncIterator[Store]:
    store = await migrated_store(await postgres_server.new_database("metrics"), max_size=4)
    yield store
    await store.close()


def blueprint(registry: LoopbackRegistry) -> dict[str, Any]:
    images = f"{registry.host}/metrics-{TAG}"
    applications = [
        {**app, "image": f"{images}/{app['name']}"} for app in BLUEPRINT["applications"]]
    return {**BLUEPRINT, "project": {"name": "shop", "repository": REPOSITORY},
            "applications": applications}


def pr_delivery(action: str, sha: str, minute: int) -> bytes:
    payload = json.loads((FIXTURES / "pull_request.opened.json").read_text())
    payload["action"] = action
    payload["number"] = NUMBER
    payload["repository"]["full_name"] = REPOSITORY
    pull = payload["pull_request"]
    pull.update(number=NUMBER, updated_at=f"2030-01-01T00:{minute:02d}:00Z")
    pull["head"].update(sha=sha, ref=BRANCH)
    pull["head"]["repo"]["full_name"] = REPOSITORY
    return json.dumps(payload).encode()


def signed(body: bytes, event: str, secret: str = SECRET) -> dict[str, str]:
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-GitHub-Event": event, "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": signature, "Content-Type": "application/json"}


@activity.defn(name=LIVE_ENVIRONMENTS.name)
async def live_environments() -> list[str]:
    return ["env-live"]


@activity.defn(name=LIST_SWEEP_TARGETS.name)
async def list_sweep_targets() -> SweepTargets:
    return SweepTargets()  # no project: no preview workflow to ask for by id


@activity.defn(name=LIST_KUBE_ENVIRONMENTS.name)
async def list_kube(_: KubeSweepInput) -> dict[str, list[str]]:
    return {"env-live": ["namespace live"], "env-orphan-1": ["namespace one"],
            "env-orphan-2": ["namespace two"]}


@activity.defn(name=REMOVE_KUBE_ENVIRONMENT.name)
async def remove_kube(arg: KubeEnvironmentInput) -> list[str]:
    return [f"namespace of {arg.environment}"]


@activity.defn(name=LIST_PREVIEW_DATABASES.name)
async def list_databases() -> list[PreviewDatabase]:
    return [PreviewDatabase(database="pv_orphan", environment="env-orphan-db")]


@activity.defn(name=REMOVE_PREVIEW_DATABASE.name)
async def remove_database(environment: str) -> list[str]:
    return ["pv_orphan"]


async def clone_a_database(runtime: Runtime, postgres_server: PostgresServer) -> str:
    """A preview database cloned from a tiny golden copy, inside an activity context whose
    meter is the worker runtime's; the clone's password (to look for in the scrape)."""
    source = f"metrics{TAG}"
    url = await fresh_database(postgres_server, f"metrics_source_{TAG}")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text); "
                           "INSERT INTO notes VALUES (1, 'hello')")
    finally:
        await conn.close()
    access = PostgresAccess(postgres_server.admin_url, SEALER, KEY)
    await GoldenCopyActivities(access).refresh_golden_copy(
        GoldenRefreshRequest(source_url=url, source_name=source))
    env = environment_id(REPOSITORY, NUMBER)
    spec = PostgresCloneSpec(owner=Ownership(environment=env),
                             database=pg_identifier("pvm", env, "main"),
                             role=pg_identifier("pvm", env, "app"),
                             source=source, data_policy=DataPolicy.clone)
    clones = PreviewDatabaseActivities(access)
    environment = ActivityEnvironment()
    environment.metric_meter = runtime.metric_meter
    out = await environment.run(clones.ensure_database_clone, StepInput(spec=spec))
    await clones.remove_database_clone(StepInput(spec=spec))
    return SEALER.unseal(out.secrets["password"])


@pytest.fixture(scope="module")
async def observed(
    telemetry: Telemetry, metrics_client: Client, temporal_client: Client,
    test_settings: Settings, store: Store, registry: LoopbackRegistry,
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory,
) -> Observed:
    seen = Observed()
    folder = tmp_path_factory.mktemp("metrics-blueprints")
    (folder / "shop.yaml").write_text(yaml.safe_dump(blueprint(registry)))
    queue = f"metrics-{TAG}"
    inventory = Inventory()
    registry_settings = Settings(**registry.settings_update())
    images = RegistryActivities(registry_settings)
    activities = [a for a in inventory.activities() if activity_name(a) != ImageSpec.present]
    activities += [images.ensure_image, BlueprintFileActivities(folder).load_source_environment,
                   PlanningActivities(PlanOptions(task_queue=queue,
                                                  check_images=True)).plan_preview]
    worker = Worker(metrics_client, task_queue=queue, activities=activities,
                    workflows=[PreviewEnvironmentWorkflow])
    # The sweep's world is its own (the Inventory's listings serve teardown receipts).
    sweeper = Worker(metrics_client, task_queue=f"{queue}-sweep",
                     workflows=[OrphanSweepWorkflow],
                     activities=[live_environments, list_sweep_targets, list_kube,
                                 remove_kube, list_databases, remove_database])
    settings = test_settings.model_copy(update={
        "github_webhook_secret": SecretStr(SECRET), "task_queue": queue})
    app = create_app(settings, temporal_client, store, timeouts=FAST,
                     metrics=StarterMetrics(temporal_client, cache_seconds=0.2))
    handle = temporal_client.get_workflow_handle_for(
        PreviewEnvironmentWorkflow.run, workflow_id(REPOSITORY, NUMBER))
    seen.secrets = {"webhook secret": SECRET, "registry password": PULLER[1],
                    **DEVELOPMENT_SECRETS}
    seen.names = {"repository": REPOSITORY, "repository (lower)": REPOSITORY.lower(),
                  "branch": BRANCH, "environment": environment_id(REPOSITORY, NUMBER),
                  "workflow id": workflow_id(REPOSITORY, NUMBER), "image host": registry.host,
                  **{f"sha {i}": sha for i, sha in enumerate(SHAS)}}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://starter") as starter, \
            httpx.AsyncClient(timeout=10) as scraper, worker, sweeper:

        async def scrape() -> None:
            seen.worker.append(Scrape.parse((await scraper.get(telemetry.url)).text))
            answer = await starter.get("/metrics")
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
            seen.starter.append(Scrape.parse(answer.text))

        async def ready_count() -> float:
            text = (await starter.get("/metrics")).text
            return Scrape.parse(text).value("preview_environments", state="ready")

        async def post(body: bytes, event: str, secret: str = SECRET) -> httpx.Response:
            return await starter.post("/webhooks/github", content=body,
                                      headers=signed(body, event, secret))

        async def status_where(what: str, check: Callable[[PreviewStatus], bool]
                               ) -> PreviewStatus:
            async def now() -> PreviewStatus | None:
                status = await handle.query(PreviewEnvironmentWorkflow.status)
                return status if check(status) else None
            return await poll(what, now)

        async def push(sha: str) -> None:
            for app_ in BLUEPRINT["applications"]:  # crane blocks: off the event loop
                await asyncio.to_thread(registry.push, f"metrics-{TAG}/{app_['name']}", sha)

        seen.ready_before = await ready_count()
        await scrape()

        # A forged delivery, then the real one: the preview waits for CI's images.
        forged = await post(pr_delivery("opened", SHAS[0], 1), "pull_request", "forged")
        assert forged.status_code == 401
        opened = await post(pr_delivery("opened", SHAS[0], 1), "pull_request")
        assert opened.status_code == 202 and opened.json()["outcome"] == "deployed"
        # Every image asked for and absent, before CI pushes any.
        await status_where("the images to be waited for",
                           lambda s: len(s.waiting) == len(BLUEPRINT["applications"]))
        await push(SHAS[0])
        await handle.signal(PreviewEnvironmentWorkflow.recheck)  # CI's wake-up
        seen.statuses.append(await status_where(
            "ready", lambda s: s.state == PreviewState.ready and s.head_sha == SHAS[0]))
        seen.ready_while = await poll(
            "the ready preview counted", lambda: _above(ready_count, seen.ready_before))
        await scrape()

        # A redeploy, then one that fails at its application step and is undone.
        await push(SHAS[1])
        assert (await post(pr_delivery("synchronize", SHAS[1], 2), "pull_request")
                ).json()["outcome"] == "deployed"
        await status_where("the redeploy", lambda s: s.head_sha == SHAS[1])
        inventory.fail_if.append(lambda name, spec: name == "ensure_application"
                                 and getattr(spec, "image", "").endswith(SHAS[2]))
        await push(SHAS[2])
        await post(pr_delivery("synchronize", SHAS[2], 3), "pull_request")
        seen.statuses.append(await status_where("the failed redeploy",
                                                lambda s: s.last_error is not None))
        closed = await post(pr_delivery("closed", SHAS[2], 4), "pull_request")
        assert closed.json()["outcome"] == "destroyed"
        seen.statuses.append(await handle.result())

        await metrics_client.execute_workflow(
            # force: the planted orphans belong to no registered project (kept otherwise).
            OrphanSweepWorkflow.run, SweepRequest(dry_run=False, force=True), id=f"sweep-{TAG}",
            task_queue=f"{queue}-sweep")
        seen.secrets["database password"] = await clone_a_database(telemetry.runtime,
                                                                   postgres_server)
        await scrape()
    await images.close()
    return seen


async def _above(count: Callable[[], Awaitable[float]], floor: float) -> float | None:
    value = await count()
    return value if value > floor else None



def delta(scrapes: list[Scrape], sample: str, start: int = 0, end: int = -1, /,
          **labels: str) -> float:
    """How much `sample` (summed over series with `labels`) moved between two scrapes."""
    return scrapes[end].value(sample, **labels) - scrapes[start].value(sample, **labels)


def test_the_starter_counts_webhooks_signatures_answers_and_states(observed: Observed) -> None:
    starter = observed.starter
    received = "preview_webhooks_received_total"
    github = {"provider": "github", "event": "pull_request"}
    assert delta(starter, received, 0, 1, outcome="deployed", **github) == 1
    assert delta(starter, received, outcome="deployed", **github) == 3  # opened + 2 pushes
    assert delta(starter, received, outcome="destroyed", **github) == 1
    assert delta(starter, received, outcome="unauthorized", **github) == 1
    assert delta(starter, "preview_webhook_signature_failures_total", 0, 1,
                 provider="github") == 1
    answers = "preview_http_request_duration_seconds_count"
    assert delta(starter, answers, route="/webhooks/github", method="POST", status="202") == 4
    assert delta(starter, answers, route="/webhooks/github", status="401") == 1
    assert delta(starter, "preview_http_request_duration_seconds_sum",
                 route="/webhooks/github") > 0
    # Route templates only: the path a request named never becomes a label.
    assert starter[-1].label_values(answers, "route") <= {"/webhooks/github", "/metrics"}
    # The ready preview was counted by state while it ran.
    assert observed.ready_while >= observed.ready_before + 1
    assert starter[-1].label_values("preview_environments", "state") == {
        state.value for state in PreviewState}


def test_the_worker_times_operations_steps_waits_and_clones(observed: Observed) -> None:
    worker = observed.worker
    assert [s.state for s in observed.statuses] == [
        PreviewState.ready, PreviewState.ready, PreviewState.destroyed]
    operations = "preview_operation_duration_seconds_count"
    assert delta(worker, operations, 0, 1, operation="create", outcome="succeeded") == 1
    assert delta(worker, operations, 1, 2, operation="redeploy", outcome="succeeded") == 1
    assert delta(worker, operations, 1, 2, operation="redeploy", outcome="failed") == 1
    assert delta(worker, operations, 1, 2, operation="teardown", outcome="succeeded") == 1
    # The create waited for CI's images: its time holds that wait.
    waited = delta(worker, "preview_step_wait_duration_seconds_sum", 0, 1, kind="image",
                   outcome="present")
    created = delta(worker, "preview_operation_duration_seconds_sum", 0, 1,
                    operation="create")
    assert waited > 0 and created >= waited / 3  # three images waited side by side
    assert delta(worker, "preview_step_wait_duration_seconds_count", 0, 1, kind="image",
                 outcome="present") == len(BLUEPRINT["applications"])
    # Where the time goes: every step's kind and action, the image re-asked on its timer.
    steps = "preview_step_duration_seconds_count"
    kinds = worker[-1].label_values(steps, "kind")
    assert {"namespace", "application", "image"} <= kinds <= SPEC_KINDS
    assert worker[-1].label_values(steps, "action") == {"present", "recheck", "absent"}
    assert delta(worker, steps, 0, 1, kind="image", action="recheck") >= 3
    assert delta(worker, "preview_step_duration_seconds_sum", 0, 1, kind="application") > 0
    # The failed redeploy: its step failures by type, and what was undone.
    assert delta(worker, "preview_step_failures_total", 1, 2, kind="application",
                 action="present", error_type="Injected") >= 1
    assert delta(worker, "preview_step_failures_total", 0, 1) == 0
    assert delta(worker, "preview_step_undos_total", 1, 2, kind="application",
                 outcome="succeeded") >= 1
    assert delta(worker, "preview_step_undos_total", 1, 2, outcome="failed") == 0
    # The real registry was asked: absent before CI pushed, present after.
    checks = "preview_image_checks_total"
    assert delta(worker, checks, 0, 1, registry="oci", outcome="absent") >= 3
    assert delta(worker, checks, 0, 1, registry="oci", outcome="present") >= 3
    # The sweep, by system kind (no cluster name, no environment).
    found, removed = "preview_sweeper_orphans_found_total", "preview_sweeper_orphans_removed_total"
    assert delta(worker, found, 1, 2, system="kubernetes") == 2
    assert delta(worker, removed, 1, 2, system="kubernetes") == 2
    assert delta(worker, found, 1, 2, system="postgres") == 1
    assert delta(worker, removed, 1, 2, system="postgres") == 1
    # One clone of the golden copy, by the method PostgreSQL used.
    clones = "preview_database_clone_duration_seconds_count"
    assert delta(worker, clones, 1, 2) == 1
    assert worker[-1].label_values(clones, "method") <= {"clone", "copy"}
    # The SDK's own, on the same endpoint.
    assert delta(worker, "temporal_workflow_completed_total",
                 workflow_type="PreviewEnvironmentWorkflow") == 1
    assert delta(worker, "temporal_activity_execution_latency_seconds_count",
                 activity_type="ensure_image") >= 6


# The SDK's counter `local_activity_total` gets a second _total from its own exporter.
SDK_QUIRKS = {"temporal_local_activity_total_total"}
ENGINE_LABELS = {"kind", "action", "outcome", "error_type", "system", "operation", "registry",
                 "method", "route", "status", "provider", "event", "state", "le",
                 # added by the SDK's meters and exporter
                 "namespace", "task_queue", "workflow_type", "activity_type", "service_name"}
BOUNDED = {
    "action": {"present", "recheck", "absent"},
    "outcome": {"succeeded", "failed", "interrupted", "skipped", "present", "gave_up",
                "absent", "deployed", "destroyed", "ignored", "duplicate", "pong",
                "installation", "woken", "unauthorized", "invalid", "too_large",
                "unavailable", "error"},
    "operation": {"create", "redeploy", "teardown"},
    "system": {"kubernetes", "aws", "postgres", "other"},
    "registry": {"oci", "ecr"},
    "method": {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
               "clone", "copy", "stream"},
    "provider": {"github", "gitlab"},
}


def engine_catalogue(client: Client) -> set[str]:
    """Every family name the engine's code exports (the SDK's come on top)."""
    names = {m.exported for m in WORKFLOW_METRICS}
    names |= {f"{IMAGE_CHECKS}_total", f"{CLONE_DURATION}_seconds"}
    starter = StarterMetrics(client)  # its families are known before anything is counted
    for family in [*starter.registry.collect(), *starter.states.describe()]:
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def test_names_and_labels_follow_prometheus_and_stay_bounded(
    observed: Observed, temporal_client: Client
) -> None:
    catalogue = engine_catalogue(temporal_client)
    for scrape in (observed.worker[-1], observed.starter[-1]):
        problems = [p for p in lint(scrape, strict_prefix="preview_")
                    if p.split(" ")[0] not in SDK_QUIRKS]
        assert problems == []
        engine = {name: f for name, f in scrape.families.items()
                  if name.startswith("preview_")}
        assert set(engine) <= catalogue
        series = [s for f in engine.values() for s in f.samples]
        assert len(series) < 1500, "the engine's series must stay few"
        for sample in series:
            assert set(sample.labels) <= ENGINE_LABELS, sample
            for label, allowed in BOUNDED.items():
                if label in sample.labels:
                    assert sample.labels[label] in allowed, sample
            if "kind" in sample.labels:
                assert sample.labels["kind"] in SPEC_KINDS | {"unknown"}, sample
            assert str(NUMBER) not in sample.labels.values(), sample
    # Everything the engine declares was exported in this run.
    seen = set(observed.worker[-1].families) | set(observed.starter[-1].families)
    assert catalogue <= seen


def test_no_secret_and_no_name_reaches_the_metrics(observed: Observed) -> None:
    texts = [s.text for s in (*observed.worker, *observed.starter)]
    assert len(texts) == 6 and all(texts)
    for what, value in {**observed.secrets, **observed.names}.items():
        for text in texts:
            assert value not in text, f"the {what} is in the metrics"
            assert value.lower() not in text.lower(), f"the {what} is in the metrics"


def dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    names: set[str] = set()
    for expr in exprs:
        bare = re.sub(r"\{[^}]*\}", "", re.sub(r"\[[^\]]*\]", "", expr))  # no matchers
        bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "",
                      bare)  # nor the labels of by (...) and the like
        for token in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare):
            if token.startswith(("preview_", "temporal_")):
                names.add(token)
    return names


def test_the_dashboard_queries_only_metrics_the_code_exports(
    observed: Observed, temporal_client: Client
) -> None:
    catalogue = engine_catalogue(temporal_client)
    exported = catalogue | set(observed.worker[-1].families)
    families = set()
    for name in dashboard_metrics():
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        families.add(family if family in exported else name)
        assert name in exported or family in exported, f"the dashboard queries {name}"
    # It shows every metric of the engine's own.
    assert catalogue <= families


def test_the_worker_process_serves_metrics_where_its_setting_says(
    temporal_server: TemporalDevServer, tmp_path: Path
) -> None:
    """`python -m worker` as deployed (an account tenant's: it needs no cluster or store)
    makes its Temporal runtime from PREVIEW_WORKER_METRICS_ADDRESS before its client."""
    address = f"127.0.0.1:{free_port()}"
    queue = f"metrics-process-{TAG}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREVIEW_")}
    env.update(PREVIEW_PROFILE="local", PREVIEW_TEMPORAL_ADDRESS=temporal_server.address,
               PREVIEW_TASK_QUEUE=queue, PREVIEW_WORKER_METRICS_ADDRESS=address,
               AWS_ACCESS_KEY_ID="metrics-test", AWS_SECRET_ACCESS_KEY="metrics-test")
    log = tmp_path / "worker.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "--target", f"account:{ACCOUNT}"], env=env,
            cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)

    def polling() -> Scrape | None:
        if process.poll() is not None:
            raise AssertionError(f"the worker exited {process.returncode}: {log.read_text()}")
        try:
            scrape = Scrape.parse(httpx.get(f"http://{address}/metrics", timeout=2).text)
        except httpx.HTTPError:
            return None  # not bound yet
        pollers = scrape.value("temporal_num_pollers", task_queue=f"{queue}-account-{ACCOUNT}")
        return scrape if pollers else None

    try:
        scrape = wait_until("the worker's pollers on its metrics endpoint", polling)
        assert scrape.value("temporal_worker_start_total") >= 1
        assert [p for p in lint(scrape) if p.split(" ")[0] not in SDK_QUIRKS] == []
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert process.returncode == 0, log.read_text()
