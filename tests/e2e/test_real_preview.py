"""A preview that really runs: the example blueprint (examples/preview.yaml) on the real
node. A pull request's webhook → its URL answers through the ingress with the PR's head
commit, the api's answer holds a masked customer of the cloned database (never the
original) and a Redis counter; a push → the new commit is served, and a client polling
through the rollout gets no failed request; close → the URL stops answering and nothing
is left.

Everything is checked from outside: HTTP through Traefik on 127.0.0.1 as a browser
would, kubectl, and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from pydantic import SecretStr
from temporalio.client import Client

from domain.blueprint import Blueprint
from domain.blueprint_file import parse_blueprint
from domain.naming import environment_id, pg_identifier, workflow_id
from domain.pull_request import PullRequest
from engine.sealing import Sealer
from engine.settings import Settings
from stack import demo, images
from stack import helm as stack_helm
from stack.postgres import PostgresServer
from starter import lifecycle
from starter.app import create_app
from store import Store
from tests.browser.support import serving
from tests.e2e.test_lifecycle import databases
from tests.faults.support import CONVERGE_TIMEOUT, WorkerProcess
from tests.plugins.node import RealCluster
from worker import Resources, Target, build_worker
from workflows.preview import PreviewEnvironmentWorkflow, PreviewStatus
from workflows.saga import ActivityTimeouts

pytestmark = [pytest.mark.kube, pytest.mark.slow]

ROOT = Path(__file__).parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "github-webhooks"
EXAMPLE = ROOT / "examples" / "preview.yaml"
WEBHOOK_SECRET = "real-preview-webhook-secret"
REPOSITORY = "Codertocat/Hello-World"
# Short heartbeats: the server notices the killed worker's activity within seconds.
KILL_TIMEOUTS = ActivityTimeouts(heartbeat_seconds=5, max_interval_seconds=2, max_attempts=8)


@pytest.fixture(scope="module")
async def stack(real_cluster: RealCluster, postgres_server: PostgresServer,
                temporal_client: Client, test_settings: Settings,
                git_host_module: Any) -> AsyncIterator[dict[str, Any]]:
    node = real_cluster.real_node
    settings = test_settings.model_copy(update={
        "task_queue": f"real-{uuid.uuid4().hex[:6]}",
        "database_url": await postgres_server.new_database("real_preview"),
        "preview_database_url": postgres_server.admin_url,
        **node.engine_settings(real_cluster.registry_host, postgres_server.port),
        "check_images": True,
        "github_api_url": git_host_module.url,
        "github_token": SecretStr(git_host_module.token),
        "github_webhook_secret": SecretStr(WEBHOOK_SECRET),
        "blueprint_source": "store",
        "helm_binary": str(stack_helm.build()),
    })
    blueprint = parse_blueprint(EXAMPLE.read_text(), "examples/preview.yaml")
    store = await Store.connect(settings.database_url, Sealer.from_settings(settings))
    await store.migrate()
    await store.import_blueprint(blueprint, actor="e2e")
    await store.put_secret(blueprint.project.name, "SESSION_SECRET", "s3ss10n", actor="e2e")

    resources = Resources()
    timeouts = ActivityTimeouts(heartbeat_seconds=30, max_attempts=5, max_interval_seconds=2)
    worker = await build_worker(temporal_client, settings, Target(), resources)
    app = create_app(settings, temporal_client, store, timeouts=timeouts)
    # The starter also listens where the ingress sends what no route takes (a sleeping
    # preview's host), as in production behind the controller's default backend.
    async with worker, serving(app, port=real_cluster.default_backend_port), \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                              base_url="http://starter") as http:
        source = postgres_server.url(demo.SOURCE_DATABASE)
        await demo.create_source_database(postgres_server.admin_url, source)
        await demo.refresh_golden_copies(temporal_client, blueprint, source, settings.task_queue)
        yield {"settings": settings, "http": http, "git_host": git_host_module}
    await resources.close()
    await store.close()


async def send(http: httpx.AsyncClient, name: str, number: int, sha: str, second: int) -> None:
    """The fixture's event for PR `number` at `sha`, updated at `second` (later wins)."""
    payload = json.loads((FIXTURES / f"{name}.json").read_text())
    payload["number"] = payload["pull_request"]["number"] = number
    payload["pull_request"]["head"]["sha"] = sha
    payload["pull_request"]["updated_at"] = f"2030-01-01T00:00:{second:02d}Z"
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    answer = await http.post("/webhooks/github", content=body, headers={
        "X-GitHub-Event": "pull_request", "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": signature})
    assert answer.status_code == 202, answer.text


async def until(handle: Any, predicate: Any, timeout: float = 240) -> PreviewStatus:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status: PreviewStatus = await handle.query(PreviewEnvironmentWorkflow.status)
        if predicate(status):
            return status
        assert status.state != "failed", status.last_error
        assert loop.time() < deadline, f"not reached in {timeout}s: {status}"
        await asyncio.sleep(0.2)


async def eventually(read: Any, predicate: Any, timeout: float = 60) -> Any:
    """Poll `read()` (blocking; in a thread) until `predicate` holds, within a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate(value := await asyncio.to_thread(read)):
        assert loop.time() < deadline, f"not reached in {timeout}s: {value}"
        await asyncio.sleep(0.2)
    return value


class Poller(threading.Thread):
    """A client that requests a URL over and over and counts what it got."""

    def __init__(self, cluster: RealCluster, url: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.url = cluster, url
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.commits: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set() and len(self.commits) < 20_000:  # bounded
            try:
                answer = self.cluster.open(self.url)
                if answer.status_code != 200:
                    self.failures.append(f"{answer.status_code}: {answer.text[:80]}")
                else:
                    self.commits.append(answer.json()["commit"])
            except httpx.HTTPError as error:
                self.failures.append(repr(error))


async def in_browser(chromium: Path, url: str, screenshot: Path) -> dict[str, str]:
    """Open `url` in Chromium; the demo page's labelled fields, as shown."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=["--no-sandbox", "--disable-background-networking",
                                                 "--disable-component-update"])
        try:
            page = await browser.new_page(viewport={"width": 900, "height": 700})
            await page.goto(url, wait_until="load")
            fields = {key: (await page.locator(f"#{key}").inner_text()).strip()
                      for key in ("commit", "node-env", "customer-email", "visits")}
            await page.screenshot(path=str(screenshot), full_page=True)
            return fields
        finally:
            await browser.close()


async def test_a_pull_request_gets_a_url_that_answers_with_its_commit(
        stack: dict[str, Any], real_cluster: RealCluster, temporal_client: Client,
        postgres_server: PostgresServer, chromium: Path, tmp_path: Path) -> None:
    http = stack["http"]
    number = uuid.uuid4().int % 10**5 + 1
    databases_before = await databases(postgres_server.admin_url)
    first, second = uuid.uuid4().hex + "abcdef01", uuid.uuid4().hex + "12345678"
    images.push_demo_images(real_cluster.registry_host, first)  # CI, for the head commit
    await send(http, "pull_request.opened", number, first, 1)
    handle = temporal_client.get_workflow_handle_for(
        PreviewEnvironmentWorkflow.run, workflow_id("Codertocat/Hello-World", number))
    async with destroyed_at_the_end(temporal_client, number):
        await opened_closed_and_gone(stack, real_cluster, handle, number, first, second,
                                     postgres_server.port, chromium, tmp_path)
    assert await databases(postgres_server.admin_url) == databases_before


@contextlib.asynccontextmanager
async def destroyed_at_the_end(client: Client, number: int,
                               repository: str = REPOSITORY) -> AsyncIterator[None]:
    """Whatever happens in the test, the preview goes: one left running would hold the
    node's CPU and fail the next test for want of it."""
    try:
        yield
    finally:
        await destroy_quietly(client, number, repository)


async def destroy_quietly(client: Client, number: int, repository: str = REPOSITORY) -> None:
    """Destroy the preview if it still runs and wait for it to be gone (a failing test's
    cleanup: its own failure is what it reports)."""
    with contextlib.suppress(Exception):
        if await lifecycle.destroy(client, repository, number, "test over"):
            await asyncio.wait_for(client.get_workflow_handle(
                workflow_id(repository, number)).result(), CONVERGE_TIMEOUT)


async def opened_closed_and_gone(stack: dict[str, Any], real_cluster: RealCluster,
                                 handle: Any, number: int, first: str, second: str,
                                 database_port: int, chromium: Path, tmp_path: Path) -> None:
    http = stack["http"]

    async def get(url: str) -> httpx.Response:
        # In a thread: the ingress's default backend is the starter on this event loop.
        return await asyncio.to_thread(real_cluster.open, url)

    status = await until(handle, lambda s: s.state == "ready")

    port = real_cluster.real_node.ingress_port
    web, api = status.urls["web"], status.urls["api"]
    assert web == f"http://web-pr-{number}.preview.localhost:{port}"
    page = await get(web)  # ready means the URL answers: no retry
    assert page.status_code == 200, page.text[:300]
    assert f'id="commit">{first}<' in page.text.replace(" ", "")
    assert 'id="node-env">development<' in page.text.replace(" ", "")  # the override
    answers = [(await get(api)).json() for _ in range(2)]
    assert answers[0]["commit"] == first
    assert answers[1]["visits"] == answers[0]["visits"] + 1  # Redis keeps the count
    customer = answers[0]["customer"]
    originals = {email for _, email in demo.CUSTOMERS}
    assert customer["email"] not in originals and "@" in customer["email"]  # masked
    assert customer["name"][0] == demo.CUSTOMERS[0][0][0]  # keep_first 1

    # The blueprint's jobs: the migration ran before the api was served (it reads the new
    # column), its output and the seed's reached the api's variables, and the migration
    # report says what the migration did to the cloned data.
    assert customer["plan"] == "free"
    assert answers[0]["schema_version"] == "2"
    seeded_at = answers[0]["seeded_at"]
    assert seeded_at
    [report] = status.migrations
    assert (report.job, report.database) == ("migrate", "main")
    assert len(report.schema_changes) == 2, report.schema_changes
    assert report.schema_changes[0].startswith("+ column public.customers.plan text NOT NULL")
    assert report.schema_changes[1].startswith("+ index public.customers.customers_plan_idx")
    assert report.rewrites == []  # a constant default adds the column without a rewrite
    assert report.data_bytes > 0 and report.seconds > 0
    comment = stack["git_host"].comments(REPOSITORY, number)[-1]["body"]
    assert "Migrations" in comment and "customers_plan_idx" in comment
    preview_db = pg_identifier(environment_id(REPOSITORY, number), "main")

    # In Chromium, as the person who opens the PR's link sees it (`*.localhost` is
    # loopback to the browser itself).
    shown = await in_browser(chromium, web, tmp_path / "preview.png")
    assert shown["commit"] == first and shown["node-env"] == "development"
    assert shown["customer-email"] == customer["email"] and shown["visits"].isdigit()

    # From inside the api's container: no root, no token, no metadata address, no other
    # namespace; its own applications, cluster DNS and the database server are there.
    env = environment_id("Codertocat/Hello-World", number)
    pod = real_cluster.kubectl("get", "pods", "-n", env, "-l", "app.kubernetes.io/name=api",
                               "-o", "jsonpath={.items[0].metadata.name}")
    who = real_cluster.in_pod(env, pod, "/demo", "whoami").stdout
    assert who.startswith("uid=") and not who.startswith("uid=0 ") and "token=false" in who
    for target, opens in (("web:3000", True), ("cache-sessions:6379", True),
                          (f"{real_cluster.gateway}:{database_port}", True),
                          ("169.254.169.254:80", False),
                          (f"{real_cluster.real_node.host_address}:22", False)):
        said = real_cluster.in_pod(env, pod, "/demo", "probe", target).stdout.strip()
        assert (said == "connected") == opens, (target, said)

    # A push: the new commit is served, and nothing fails while it rolls out.
    images.push_demo_images(real_cluster.registry_host, second)
    poller = Poller(real_cluster, api)
    poller.start()
    await send(http, "pull_request.synchronize", number, second, 2)
    await until(handle, lambda s: s.state == "ready" and s.head_sha == second)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not poller.commits or poller.commits[-1] != second:
        assert loop.time() < deadline, "the new commit was never served"
        await asyncio.sleep(0.2)
    poller.stop.set()
    poller.join(timeout=10)
    assert poller.failures == [], poller.failures[:5]
    assert len(poller.commits) > 20  # it really polled through the rollout
    assert first in poller.commits and second in poller.commits
    # The new commit's migration ran (nothing left to change); the seed did not run again.
    after_push = (await get(api)).json()
    assert after_push["seeded_at"] == seeded_at and after_push["schema_version"] == "2"
    status = await handle.query(PreviewEnvironmentWorkflow.status)
    assert [r.schema_changes for r in status.migrations] == [[]]
    assert await admin_value(stack, preview_db, "SELECT count(*) FROM seed_runs") == 1

    # Sleep: no pod is left. Opening the URL wakes it: a page that says so and reloads,
    # then the application again, at the same commit.
    await handle.signal(PreviewEnvironmentWorkflow.sleep)
    await until(handle, lambda s: s.state == "sleeping")
    # (The jobs' completed pods stay, running nothing, for their logs.)
    await eventually(lambda: real_cluster.kubectl(
        "get", "pods", "-n", env, "-o", "name", "--field-selector=status.phase!=Succeeded"),
        lambda pods: pods.strip() == "")
    # In a thread: the starter that answers runs on this event loop.
    waking = await get(web)
    assert waking.status_code == 202, waking.text
    assert "waking up" in waking.text and 'http-equiv="refresh"' in waking.text
    await until(handle, lambda s: s.state == "ready")
    back = await eventually(lambda: real_cluster.open(api), lambda r: r.status_code == 200)
    assert back.json()["commit"] == second

    # Close: the destroy job runs first (it tells whoever listens on the database, which
    # is still there); then the URL stops answering and the namespace and database go.
    farewells: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(stack["settings"].preview_database_url,
                                     database=preview_db)
    await listener.add_listener("preview_farewell",
                                lambda *args: farewells.put_nowait(args[-1]))
    try:
        await send(http, "pull_request.closed", number, second, 3)
        assert await asyncio.wait_for(farewells.get(), CONVERGE_TIMEOUT) == second
        result = await handle.result()
    finally:
        with contextlib.suppress(Exception):  # the teardown ended its session
            await listener.close(timeout=5)
    assert result.state == "destroyed"
    gone = await get(web)  # no route, no preview either
    assert gone.status_code == 404 and "No preview here" in gone.text
    assert env not in real_cluster.kubectl("get", "namespaces", "-o", "name")


async def admin_value(stack: dict[str, Any], database: str, query: str) -> Any:
    conn = await asyncpg.connect(stack["settings"].preview_database_url, database=database)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def test_a_failing_migration_fails_the_preview_with_its_log_masked_and_undoes_it(
        stack: dict[str, Any], real_cluster: RealCluster, temporal_client: Client,
        postgres_server: PostgresServer) -> None:
    """The example's migration, told to fail (as a broken one would, printing its
    connection string first): the preview fails with the job's last log lines, the URL
    in them masked, on its status and its PR, and everything made is undone."""
    repository = "Codertocat/Failing-Migration"
    data = yaml.safe_load(EXAMPLE.read_text())
    data["project"] = {"name": "failing-migration", "repository": repository}
    data["variables"].append({"key": "MIGRATION_FAIL", "value": "yes",
                              "scope": "application", "application": "migrate"})
    store = await Store.connect(stack["settings"].database_url,
                                Sealer.from_settings(stack["settings"]))
    try:
        await store.import_blueprint(Blueprint.model_validate(data), actor="e2e")
    finally:
        await store.close()
    number = uuid.uuid4().int % 10**5 + 1
    sha = uuid.uuid4().hex + "badc0ffe"
    images.push_demo_images(real_cluster.registry_host, sha)
    databases_before = await databases(postgres_server.admin_url)
    handle = await lifecycle.deploy(
        temporal_client, PullRequest(repository=repository, number=number, head_sha=sha,
                                     branch="broken-migration"),
        task_queue=stack["settings"].task_queue)
    async with destroyed_at_the_end(temporal_client, number, repository):
        status = await until(handle, lambda s: s.state in ("failed", "ready"))
        assert status.state == "failed"
        error = status.last_error or ""
        assert "job/migrate" in error and "deploy job migrate failed" in error, error
        # The job printed its DATABASE_URL: the excerpt shows where, never what.
        assert "applying step 1 on ***" in error and "relation" in error, error
        assert "postgresql://" not in error and "postgres://" not in error
        # Told to the PR right after the state changes (eventually, not at once).
        comment = await eventually(
            lambda: stack["git_host"].comments(repository, number)[-1]["body"],
            lambda body: "Preview environment failed" in body)
        assert "applying step 1 on ***" in comment and "postgresql://" not in comment
        env = environment_id(repository, number)
        await eventually(lambda: real_cluster.kubectl("get", "namespaces", "-o", "name"),
                         lambda names: env not in names)
        assert await databases(postgres_server.admin_url) == databases_before


async def test_a_worker_killed_during_a_create_converges_on_the_real_node(
        stack: dict[str, Any], real_cluster: RealCluster, temporal_client: Client,
        postgres_server: PostgresServer) -> None:
    """kill -9 of the worker right before it rolls out the second application (the first
    one's pods already run): a fresh worker finishes the create, the URL answers with the
    commit, and the destroy leaves nothing."""
    settings = stack["settings"].model_copy(update={"task_queue": f"kill-{uuid.uuid4().hex[:6]}"})
    number = uuid.uuid4().int % 10**5 + 1
    sha = uuid.uuid4().hex + "0badf00d"
    images.push_demo_images(real_cluster.registry_host, sha)
    databases_before = await databases(postgres_server.admin_url)
    kill = {"PREVIEW_FAULT_ACTIVITY": "ensure_application", "PREVIEW_FAULT_NTH": "2",
            "PREVIEW_FAULT_WHEN": "before"}
    doomed = WorkerProcess(settings, kill, "worker with a kill switch")
    fresh = WorkerProcess(settings, None, "fresh worker")
    fresh_started = False
    try:
        await doomed.start()
        handle = await lifecycle.deploy(
            temporal_client, PullRequest(repository=REPOSITORY, number=number, head_sha=sha,
                                         branch="feature"),
            task_queue=settings.task_queue, timeouts=KILL_TIMEOUTS)
        assert await doomed.wait_exit(CONVERGE_TIMEOUT) == -9 and doomed.killed_itself, (
            doomed.output)
        env = environment_id(REPOSITORY, number)
        running = real_cluster.kubectl("get", "pods", "-n", env, "-o", "name")
        assert running.strip(), "no pod ran before the kill"  # it died mid-create
        await fresh.start()
        fresh_started = True
        status = await until(handle, lambda s: s.state == "ready" and s.head_sha == sha,
                             timeout=CONVERGE_TIMEOUT)
        web = await asyncio.to_thread(real_cluster.open, status.urls["web"])
        assert web.status_code == 200, web.text[:300]
        api = await asyncio.to_thread(real_cluster.open, status.urls["api"])
        assert api.json()["commit"] == sha
        assert await lifecycle.destroy(temporal_client, REPOSITORY, number, "closed")
        assert (await asyncio.wait_for(handle.result(), CONVERGE_TIMEOUT)).state == "destroyed"
    finally:
        if not fresh_started:
            # A worker must be there to take the preview down again.
            await fresh.start()
        await destroy_quietly(temporal_client, number)
        await doomed.stop()
        await fresh.stop()
    assert env not in real_cluster.kubectl("get", "namespaces", "-o", "name")
    assert await databases(postgres_server.admin_url) == databases_before
    pods = real_cluster.kubectl("get", "pods", "-A", "-o", "name")
    assert env not in pods


async def import_blueprint(stack: dict[str, Any], data: dict[str, Any]) -> None:
    store = await Store.connect(stack["settings"].database_url,
                                Sealer.from_settings(stack["settings"]))
    try:
        await store.import_blueprint(Blueprint.model_validate(data), actor="e2e")
    finally:
        await store.close()


def chart_blueprint(extra: bool, path: str | None = None) -> dict[str, Any]:
    """The chart of examples/charts/hello beside one blueprint application: from the
    registry, or from `path` in the PR's repository."""
    source = ({"path": path} if path else
              {"chart": "oci://registry.local/charts/hello", "version": "0.1.0"})
    return {
        "project": {"name": "chart-shop", "repository": "Codertocat/Chart-Shop"},
        "applications": [{"name": "web", "image": "registry.local/hello/web", "ports": [3000],
                          "health_check": {"path": "/healthz"}, "resources": {"cpu": "100m"}}],
        "charts": [{"name": "hello", **source, "public": True, "image_tag_values": ["image.tag"],
                    "values": {"ingress": {"host": "{{ hosts.hello }}"},
                               "greeting": "PR {{ pr.number }}",
                               "extra": {"enabled": extra}}}],
        "network": {"base_domain": "preview.localhost", "tls": "none"},
    }


@pytest.mark.parametrize("source", ["registry", "repository"])
async def test_a_chart_beside_an_application_answers_and_a_redeploy_prunes_it(
        stack: dict[str, Any], real_cluster: RealCluster, temporal_client: Client,
        source: str) -> None:
    """A preview made of a Helm chart (examples/charts/hello: Deployment, Service, Ingress,
    ConfigMaps) and a blueprint application: both answer through the ingress with the PR's
    commit; a redeploy whose chart no longer renders a ConfigMap removes it; teardown
    leaves nothing, and its receipt says so. The chart comes from the OCI registry (the
    blueprint's values drop the ConfigMap), or from a folder of the PR's repository (the
    PR's second commit deletes its template)."""
    repository = "Codertocat/Chart-Shop"
    chart = ROOT / "examples" / "charts" / "hello"
    number, first, second = uuid.uuid4().int % 10**5 + 1, uuid.uuid4().hex + "c0c0", \
        uuid.uuid4().hex + "d0d0"
    if source == "registry":
        stack_helm.push_chart(chart, real_cluster.registry_host)
        await import_blueprint(stack, chart_blueprint(extra=True))
    else:
        await import_blueprint(stack, chart_blueprint(extra=True, path="deploy/hello"))
        files = stack["git_host"].files
        files.put_folder(repository, first, "deploy/hello", chart)
        files.put_folder(repository, second, "deploy/hello", chart,
                         without=["templates/extra-configmap.yaml"])
    for sha in (first, second):
        images.push_demo_images(real_cluster.registry_host, sha)
    env = environment_id(repository, number)
    handle = await lifecycle.deploy(temporal_client, PullRequest(
        repository=repository, number=number, head_sha=first, branch="chart"),
        task_queue=stack["settings"].task_queue)
    async with destroyed_at_the_end(temporal_client, number, repository):
        status = await until(handle, lambda s: s.state == "ready")
        assert set(status.urls) == {"web", "hello"}
        for url in status.urls.values():
            page = await asyncio.to_thread(real_cluster.open, url)
            assert page.status_code == 200 and f'id="commit">{first}<' in page.text.replace(
                " ", ""), (url, page.text[:300])
        made = ("chart oci://registry.local/charts/hello 0.1.0" if source == "registry" else
                "chart deploy/hello of the repository (9 files, sha256 ")
        assert any(made in line for line in status.resources), status.resources
        configs = real_cluster.kubectl("get", "configmaps", "-n", env, "-o", "name")
        assert "configmap/hello-extra" in configs and "configmap/hello-config" in configs

        if source == "registry":
            await import_blueprint(stack, chart_blueprint(extra=False))
        handle = await lifecycle.deploy(temporal_client, PullRequest(
            repository=repository, number=number, head_sha=second, branch="chart"),
            task_queue=stack["settings"].task_queue)
        status = await until(handle, lambda s: s.state == "ready" and s.head_sha == second)
        page = await asyncio.to_thread(real_cluster.open, status.urls["hello"])
        assert f'id="commit">{second}<' in page.text.replace(" ", "")
        configs = real_cluster.kubectl("get", "configmaps", "-n", env, "-o", "name")
        assert "configmap/hello-extra" not in configs and "configmap/hello-config" in configs

        assert await lifecycle.destroy(temporal_client, repository, number, "closed")
        result = await asyncio.wait_for(handle.result(), CONVERGE_TIMEOUT)
        assert result.state == "destroyed"
        assert result.receipt is not None and result.receipt.clean, result.receipt
    assert env not in real_cluster.kubectl("get", "namespaces", "-o", "name")


COMPOSE = """services:
  web:
    image: registry.local/hello/web:dev
    ports: ["3000:3000"]
    environment:
      API_URL: http://api:8080
      PUBLIC_API: "{{ urls.api }}"
      NODE_ENV: development
    depends_on: [api]
  api:
    image: registry.local/hello/api:dev
    ports: ["8080:8080"]
    depends_on: [main, sessions]
  main:
    image: postgres:16
  sessions:
    image: registry.local/library/redis:7.0
"""
WORKER = """  worker:
    image: registry.local/hello/worker:dev
    expose: ["9090"]
    depends_on: [main]
"""


async def test_a_compose_preview_answers_with_its_database_cloned_and_masked(
        stack: dict[str, Any], real_cluster: RealCluster, temporal_client: Client,
        postgres_server: PostgresServer) -> None:
    """A blueprint that names its Compose file (web, api, postgres, redis) and says how
    the database is cloned and masked: the preview answers through the ingress, the api
    reads a masked customer of the clone, the web's PUBLIC_API is the api's preview URL
    on the page; a push whose Compose file adds a service gets that service."""
    repository = "Codertocat/Compose-Shop"
    example = yaml.safe_load(EXAMPLE.read_text())
    await import_blueprint(stack, {
        "project": {"name": "compose-shop", "repository": repository},
        "compose": {"path": "docker-compose.yml"},
        "databases": example["databases"],  # masked_clone of hello_production
        "network": example["network"],
    })
    number, first, second = uuid.uuid4().int % 10**5 + 1, uuid.uuid4().hex + "c0de", \
        uuid.uuid4().hex + "c0df"
    git_host = stack["git_host"]
    git_host.files.put(repository, first, "docker-compose.yml", COMPOSE)
    git_host.files.put(repository, second, "docker-compose.yml", COMPOSE + WORKER)
    for sha in (first, second):
        images.push_demo_images(real_cluster.registry_host, sha)
    databases_before = await databases(postgres_server.admin_url)
    env = environment_id(repository, number)
    handle = await lifecycle.deploy(temporal_client, PullRequest(
        repository=repository, number=number, head_sha=first, branch="compose"),
        task_queue=stack["settings"].task_queue)
    async with destroyed_at_the_end(temporal_client, number, repository):
        status = await until(handle, lambda s: s.state == "ready")
        assert set(status.urls) == {"web", "api"}
        page = (await asyncio.to_thread(real_cluster.open, status.urls["web"])).text
        fields = page.replace(" ", "")
        assert f'id="commit">{first}<' in fields
        assert f'id="public-api">{status.urls["api"]}<' in fields  # {{ urls.api }}
        answer = (await asyncio.to_thread(real_cluster.open, status.urls["api"])).json()
        # Its own Redis counts (the route's check already asked `/` too).
        assert answer["commit"] == first and answer["visits"] >= 1, answer
        email = answer["customer"]["email"]
        assert "@" in email and email not in {e for _, e in demo.CUSTOMERS}  # masked
        assert any(line.startswith("PostgreSQL clone of hello_production")
                   for line in status.resources), status.resources

        handle = await lifecycle.deploy(temporal_client, PullRequest(
            repository=repository, number=number, head_sha=second, branch="compose"),
            task_queue=stack["settings"].task_queue)
        status = await until(handle, lambda s: s.state == "ready" and s.head_sha == second)
        deployments = real_cluster.kubectl("get", "deployments", "-n", env, "-o", "name")
        assert "deployment.apps/worker" in deployments, deployments
        assert await lifecycle.destroy(temporal_client, repository, number, "closed")
        assert (await asyncio.wait_for(handle.result(), CONVERGE_TIMEOUT)).state == "destroyed"
    assert env not in real_cluster.kubectl("get", "namespaces", "-o", "name")
    assert await databases(postgres_server.admin_url) == databases_before
