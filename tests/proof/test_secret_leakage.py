"""Secrets go where they are needed and nowhere else, over a whole preview lifecycle.

On the real stack (Temporal dev server, Kubernetes control plane, PostgreSQL, moto, a
local Git host) the worker and the starter run as subprocesses, as `python -m
stack.run` runs them, with PREVIEW_LOG_LEVEL=DEBUG. A preview is created through a
signed webhook, redeployed with a new commit, and destroyed. Two secret values are
followed: a project secret put into the store (store.put_secret) and the database
password the engine generates (read from the preview's own Kubernetes Secret while it is
up). Each value, URL-quoted and base64-encoded at every alignment (standard and URL-safe
alphabets), is then searched for in:

- the raw Temporal history of every run (a client without the codec) and, stronger,
  every payload of it decoded with the codec (secrets travel sealed even inside);
- every line the worker and the starter wrote, at DEBUG;
- every object in the preview namespace (annotations included, the Secrets' data
  excepted), its events, the namespace object and the cluster's events after teardown;
- every GET route of /api for the project (with a project token and the admin token);
- the store: the audit log, and every other table of its database;
- the servers' own logs (PostgreSQL, Temporal, moto), the Git host's recorded calls,
  the DNS records, and the workflow's status query.

Positive controls keep the search honest: the Secrets' data does hold the base64 forms,
and the logs are DEBUG logs of this very preview.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from pydantic import SecretStr
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHandle

from domain.blueprint import COLLECTIONS, Blueprint
from domain.naming import environment_id, workflow_id
from engine.sealing import Sealer
from engine.settings import Settings
from stack.ports import free_port
from stack.run import Service
from store import Store
from workflows.preview import PreviewEnvironmentWorkflow, PreviewStatus

pytestmark = [pytest.mark.slow, pytest.mark.kube]

ROOT = Path(__file__).parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "github-webhooks"
REPOSITORY = "Codertocat/Hello-World"
PROJECT = "hello"
WEBHOOK_SECRET = f"leak-webhook-{uuid.uuid4().hex[:8]}"
ADMIN_TOKEN = f"leak-admin-{uuid.uuid4().hex}"
SECRET_VALUE = f"sk_live_{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}"
NEW_SHA = "e" * 40


def blueprint(zone_id: str) -> Blueprint:
    return Blueprint.model_validate({
        "project": {"name": PROJECT, "repository": REPOSITORY},
        "applications": [
            {"name": "web", "image": "registry.local/hello/web", "depends_on": ["api"]},
            {"name": "api", "image": "registry.local/hello/api", "depends_on": ["main"]},
        ],
        "databases": [{"name": "main", "mode": "shared", "data_policy": "seed",
                       "seed_sql": "CREATE TABLE greeting (text text);"}],
        "network": {"base_domain": "preview.example.com", "hosted_zone_id": zone_id},
        "variables": [{"key": "NODE_ENV", "value": "production"}],
    })


# ---------------------------------------------------------------------------- the search


def encoded_forms(value: str) -> dict[str, str]:
    """The value, URL-quoted, and its base64 at each of the 3 byte alignments it can have
    inside a larger base64 blob (only the characters that depend on the value alone)."""
    raw = value.encode()
    forms = {"plain": value, "url-quoted": quote(value, safe="")}
    for offset in range(3):
        start, end = -(-8 * offset // 6), 8 * (offset + len(raw)) // 6
        for name, encode in (("base64", base64.b64encode), ("base64url",
                                                              base64.urlsafe_b64encode)):
            forms[f"{name}@{offset}"] = encode(b"\0" * offset + raw).decode()[start:end]
    return forms


@dataclass
class Leak:
    place: str
    secret: str
    form: str
    context: str

    def __str__(self) -> str:
        return f"{self.place}: {self.secret} as {self.form}: …{self.context}…"


def leaks(place: str, text: str, needles: dict[str, str]) -> list[Leak]:
    found = []
    for secret, value in needles.items():
        for form, needle in encoded_forms(value).items():
            for match in re.finditer(re.escape(needle), text):
                context = text[max(0, match.start() - 80): match.end() + 40]
                found.append(Leak(place, secret, form, context.replace("\n", "⏎")))
    return found


def assert_nowhere(places: dict[str, str], needles: dict[str, str]) -> None:
    found = [leak for place, text in places.items() for leak in leaks(place, text, needles)]
    assert not found, "secret found:\n" + "\n".join(str(leak) for leak in found[:20])


def test_encoded_forms_find_a_value_inside_a_base64_blob() -> None:
    """The search itself: a value inside a larger base64 blob is found at any offset."""
    for prefix in ("", "a", "ab", "abc", "abcd"):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            blob = encode(f'{prefix}{{"k": "{SECRET_VALUE}"}}'.encode()).decode()
            assert leaks("blob", blob, {"s": SECRET_VALUE}), (prefix, encode)
    assert not leaks("other", base64.b64encode(b"x" * 200).decode(), {"s": SECRET_VALUE})


# ---------------------------------------------------------------------------- the lifecycle


@dataclass
class Evidence:
    """Everything gathered over one lifecycle, by place."""

    env: str = ""
    needles: dict[str, str] = field(default_factory=dict)
    secret_objects: list[dict[str, Any]] = field(default_factory=list)
    kube: dict[str, str] = field(default_factory=dict)
    api: dict[str, str] = field(default_factory=dict)
    api_statuses: dict[str, int] = field(default_factory=dict)
    history_raw: dict[str, str] = field(default_factory=dict)
    history_decoded: dict[str, str] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    store: dict[str, str] = field(default_factory=dict)
    servers: dict[str, str] = field(default_factory=dict)
    elsewhere: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def settings_env(settings: Settings) -> dict[str, str]:
    return settings.as_environment()


class LogSlice:
    """What a server appends to its log file from now on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = path.stat().st_size if path.is_file() else 0

    def read(self) -> str:
        if not self.path.is_file():
            return ""
        with open(self.path, "rb") as log:
            log.seek(self.start)
            return log.read().decode(errors="replace")


async def wait_until(predicate: Any, what: str, timeout: float) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert loop.time() < deadline, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.2)  # polling a condition with a deadline


async def wait_for_status(
    handle: WorkflowHandle[Any, Any], predicate: Any, timeout: float = 240
) -> PreviewStatus:
    async def check() -> PreviewStatus | None:
        status: PreviewStatus = await handle.query(PreviewEnvironmentWorkflow.status)
        assert status.state != "failed", status.last_error
        return status if predicate(status) else None

    result: PreviewStatus = await wait_until(check, "preview status", timeout)
    return result


def signed_body(name: str, number: int, **pr: Any) -> tuple[bytes, dict[str, str]]:
    payload = json.loads((FIXTURES / f"{name}.json").read_text())
    payload["number"] = payload["pull_request"]["number"] = number
    payload["pull_request"].update(pr)
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, {"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": str(uuid.uuid4()),
                  "X-Hub-Signature-256": signature, "Content-Type": "application/json"}


def payloads_in(message: Message) -> Iterator[Payload]:
    """Every Payload anywhere inside a protobuf message (repeated, maps, nested)."""
    if isinstance(message, Payload):
        yield message
        return
    for descriptor, value in message.ListFields():
        if descriptor.type != FieldDescriptor.TYPE_MESSAGE or descriptor.message_type is None:
            continue
        if descriptor.message_type.GetOptions().map_entry:
            for item in value.values():
                if isinstance(item, Message):
                    yield from payloads_in(item)
        elif descriptor.is_repeated:
            for item in value:
                yield from payloads_in(item)
        else:
            yield from payloads_in(value)


def kube_objects(kubectl: Any, namespace: str) -> list[dict[str, Any]]:
    kinds = [k for k in kubectl("api-resources", "--verbs=list", "--namespaced", "-o",
                                "name").split() if k]
    listed = json.loads(kubectl("get", ",".join(kinds), "-n", namespace, "-o", "json",
                                "--ignore-not-found"))
    items: list[dict[str, Any]] = listed.get("items", [])
    return items


def without_secret_data(item: dict[str, Any]) -> dict[str, Any]:
    if item.get("kind") != "Secret":
        return item
    return {k: v for k, v in item.items() if k not in ("data", "stringData")}


async def api_answers(http: httpx.AsyncClient, project_token: str,
                      evidence: Evidence, stage: str) -> None:
    """GET every /api route the OpenAPI lists, filled in with this project's names."""
    spec = (await http.get("/openapi.json")).json()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    scoped = {"Authorization": f"Bearer {project_token}"}

    async def get(path: str, headers: dict[str, str], **params: str) -> Any:
        answer = await http.get(path, headers=headers, params=params)
        label = f"{stage} GET {path} {params or ''} as {'admin' if headers is admin else 'project'}"
        evidence.api[label] = answer.text
        evidence.api_statuses[label] = answer.status_code
        return answer.json() if answer.headers.get("content-type", "").startswith(
            "application/json") else None

    names: dict[str, list[str]] = {}
    kinds = ["environments", *(c.path for c in COLLECTIONS), "variables", "secrets"]
    for kind in kinds:
        listed = await get(f"/api/projects/{PROJECT}/{kind}", scoped)
        names[kind] = sorted({item.get("name") or item.get("key") for item in listed["items"]})
    for path, operations in spec["paths"].items():
        if "get" not in operations or not path.startswith("/api"):
            continue
        if "{project}" not in path:
            await get(path, admin)
            continue
        kind = path.split("/")[4] if path.count("/") >= 5 else ""
        fills = names.get(kind, [""]) if ("{name}" in path or "{key}" in path) else [""]
        if not fills:
            continue  # the project has none of this kind: nothing to GET by name
        for name in fills:
            concrete = (path.replace("{project}", PROJECT).replace("{name}", name)
                        .replace("{key}", name))
            for headers in (scoped, admin):
                await get(concrete, headers)
    await get(f"/api/projects/{PROJECT}/blueprint", scoped, format="yaml")
    await get(f"/api/projects/{PROJECT}/variables/NODE_ENV", scoped, applies_to="both")


@pytest.fixture(scope="module")
async def evidence(
    postgres_server: Any, moto_server: Any, kube_cluster: Any, git_host_module: Any,
    temporal_server: Any, temporal_client: Client, test_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Evidence]:
    loop = asyncio.get_running_loop()
    began = loop.time()
    found = Evidence()
    number = uuid.uuid4().int % 10**6 + 1
    found.env = env = environment_id(REPOSITORY, number)
    store_url = await postgres_server.new_database("leak")
    zone = moto_server.client("route53").create_hosted_zone(
        Name="preview.example.com", CallerReference=str(uuid.uuid4()))["HostedZone"]["Id"]
    port = free_port()
    settings = test_settings.model_copy(update={
        "task_queue": f"leak-{uuid.uuid4().hex[:6]}",
        "database_url": store_url,
        "preview_database_url": postgres_server.admin_url,
        "aws_endpoint_url": moto_server.endpoint_url,
        "kubeconfig": str(kube_cluster.kubeconfig),
        "github_api_url": git_host_module.url,
        "github_token": SecretStr(git_host_module.token),
        "github_webhook_secret": SecretStr(WEBHOOK_SECRET),
        "admin_token": SecretStr(ADMIN_TOKEN),
        "blueprint_source": "store",
        "listen_host": "127.0.0.1",
        "listen_port": port,
    })
    store = await Store.connect(settings.database_url, Sealer.from_settings(settings))
    await store.migrate()
    await store.import_blueprint(blueprint(zone.split("/")[-1]), actor="leak-test")
    await store.put_secret(PROJECT, "STRIPE_KEY", SECRET_VALUE, actor="leak-test")
    project_token, _ = await store.create_token("leak-test", PROJECT, "leak-test")

    server_logs = {
        "postgres server log": LogSlice(Path(postgres_server.data_dir) / "postgres.log"),
        "temporal server log": LogSlice(Path(temporal_server.state_dir) / "temporal.log"),
        "moto server log": LogSlice(Path(moto_server.log_path)),
    }
    logs_dir = tmp_path_factory.mktemp("leak-logs")
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PREVIEW_")}
    child_env.update(settings_env(settings), PREVIEW_LOG_LEVEL="DEBUG", PYTHONUNBUFFERED="1",
                     AWS_ACCESS_KEY_ID="leak-test", AWS_SECRET_ACCESS_KEY="leak-test")
    services: list[Service] = []
    wid = workflow_id(REPOSITORY, number)
    handle = temporal_client.get_workflow_handle_for(PreviewEnvironmentWorkflow.run, wid)
    destroyed = False
    try:
        for name in ("worker", "starter"):  # as stack/run.py runs them
            services.append(Service(name, [sys.executable, "-m", name], child_env,
                                    logs_dir / f"{name}.log"))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            async def up() -> bool:
                for service in services:
                    assert service.process.poll() is None, f"{service.name} exited; see {logs_dir}"
                try:
                    healthy = (await http.get("/healthz")).status_code == 200
                except httpx.HTTPError:
                    return False
                return healthy and "worker ready" in (logs_dir / "worker.log").read_text()

            await wait_until(up, "worker and starter", 60)
            found.timings["services up"] = loop.time() - began

            # 1. Create.
            body, headers = signed_body("pull_request.opened", number)
            answer = await http.post("/webhooks/github", content=body, headers=headers)
            assert answer.status_code == 202 and answer.json()["outcome"] == "deployed", answer.text
            await wait_for_status(handle, lambda s: s.state == "ready")
            found.timings["ready"] = loop.time() - began

            # The generated database password, from the preview's own Secret.
            secrets = [i for i in kube_objects(kube_cluster.kubectl, env) if i["kind"] == "Secret"]
            values = {k: base64.b64decode(v).decode() for s in secrets
                      for k, v in (s.get("data") or {}).items()}
            assert values.get("STRIPE_KEY") == SECRET_VALUE, sorted(values)
            password = unquote(urlsplit(values["DATABASE_URL"]).password or "")
            assert len(password) >= 16, "no generated password in DATABASE_URL"
            found.needles = {"project secret": SECRET_VALUE, "database password": password}

            def snapshot(stage: str) -> None:
                for item in kube_objects(kube_cluster.kubectl, env):
                    meta = item["metadata"]
                    label = f"{stage} {item['kind']} {meta.get('name')}"
                    if item["kind"] == "Secret":
                        found.secret_objects.append(item)
                    found.kube[label] = json.dumps(without_secret_data(item))
                found.kube[f"{stage} namespace"] = kube_cluster.kubectl(
                    "get", "namespace", env, "-o", "json")

            snapshot("created")

            # 2. Redeploy with a new commit.
            body, headers = signed_body(
                "pull_request.synchronize", number, updated_at="2030-01-01T00:00:00Z",
                head={**json.loads((FIXTURES / "pull_request.synchronize.json").read_text())[
                    "pull_request"]["head"], "sha": NEW_SHA})
            answer = await http.post("/webhooks/github", content=body, headers=headers)
            assert answer.status_code == 202, answer.text
            status = await wait_for_status(
                handle, lambda s: s.head_sha == NEW_SHA and s.state == "ready")
            found.timings["redeployed"] = loop.time() - began
            snapshot("redeployed")
            found.elsewhere["status query"] = status.model_dump_json()
            await api_answers(http, project_token, found, "while up")

            # 3. Destroy.
            body, headers = signed_body("pull_request.closed", number,
                                        updated_at="2030-01-02T00:00:00Z")
            answer = await http.post("/webhooks/github", content=body, headers=headers)
            assert answer.status_code == 202 and answer.json()["outcome"] == "destroyed"
            result = await asyncio.wait_for(handle.result(), 240)
            assert result.state == "destroyed"
            destroyed = True
            found.timings["destroyed"] = loop.time() - began
            await api_answers(http, project_token, found, "after teardown")
        found.kube["cluster events after teardown"] = kube_cluster.kubectl(
            "get", "events", "-A", "-o", "json")
    finally:
        if not destroyed:  # leave nothing running behind a failed test
            with contextlib.suppress(Exception):
                await handle.terminate(reason="leak test failed")
        for service in reversed(services):
            service.stop()
        if not destroyed:
            await store.close()
    found.logs = {f"{name}.log": (logs_dir / f"{name}.log").read_text(errors="replace")
                  for name in ("worker", "starter")}

    # The history, as the server holds it and as an operator with the codec sees it.
    raw_client = await Client.connect(temporal_server.address)
    codec = temporal_client.data_converter.payload_codec
    assert codec is not None
    async for run in raw_client.list_workflows(f"WorkflowId = '{wid}'"):
        history = await raw_client.get_workflow_handle(wid, run_id=run.run_id).fetch_history()
        found.history_raw[run.run_id] = history.to_json()
        decoded = []
        for event in history.events:
            for payload in payloads_in(event):
                for plain in await codec.decode([payload]):
                    decoded.append(plain.data.decode(errors="replace"))
                    decoded.append(json.dumps({k: v.decode(errors="replace")
                                               for k, v in plain.metadata.items()}))
        found.history_decoded[run.run_id] = "\n".join(decoded)
    assert found.history_raw, f"no history for {wid}"

    # The store: its audit log, then every table of its database.
    async with store.pool.acquire() as conn:
        found.store["audit_log"] = json.dumps(
            [dict(r) for r in await conn.fetch("SELECT * FROM audit_log")], default=str)
        tables = await conn.fetch(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN "
            "('pg_catalog', 'information_schema')")
        for table in tables:
            rows = await conn.fetch(
                f'SELECT row_to_json(t)::text AS row FROM "{table["schemaname"]}".'
                f'"{table["tablename"]}" t')
            found.store[f"table {table['tablename']}"] = "\n".join(r["row"] for r in rows)
    await store.close()

    found.servers = {name: log.read() for name, log in server_logs.items()}
    found.elsewhere["git host calls"] = json.dumps(
        [call.__dict__ for call in git_host_module.calls], default=str)
    found.elsewhere["route53 records"] = json.dumps(moto_server.client("route53")
                                                    .list_resource_record_sets(
                                                        HostedZoneId=zone), default=str)
    found.timings["evidence gathered"] = loop.time() - began
    print("timings (s):", {k: round(v, 1) for k, v in found.timings.items()})
    print("searched:", {name: (len(texts), sum(len(t) for t in texts.values())) for name, texts in (
        ("kube", found.kube), ("api", found.api), ("history_raw", found.history_raw),
        ("history_decoded", found.history_decoded), ("logs", found.logs),
        ("store", found.store), ("servers", found.servers), ("elsewhere", found.elsewhere))})
    yield found


# ---------------------------------------------------------------------------- the places


def test_the_secret_objects_hold_both_values_the_search_is_not_blind(
    evidence: Evidence
) -> None:
    """Positive control: the Kubernetes Secrets' data holds each value, base64-encoded,
    and the search finds it there."""
    text = json.dumps([s.get("data") for s in evidence.secret_objects])
    found = {leak.secret for leak in leaks("secret data", text, evidence.needles)}
    assert found == set(evidence.needles)


def test_raw_temporal_history_holds_no_secret(evidence: Evidence) -> None:
    assert_nowhere({f"raw history of run {run}": text
                    for run, text in evidence.history_raw.items()}, evidence.needles)


def test_decoded_temporal_history_holds_no_secret(evidence: Evidence) -> None:
    """Even with the codec, payloads carry secrets sealed (SealedValue), never in clear."""
    # Positive control: the secrets did travel through the history, as SealedValues.
    assert all('"wrapped_key"' in text for text in evidence.history_decoded.values())
    assert_nowhere({f"decoded history of run {run}": text
                    for run, text in evidence.history_decoded.items()}, evidence.needles)


def test_worker_and_starter_logs_hold_no_secret(evidence: Evidence) -> None:
    worker, starter = evidence.logs["worker.log"], evidence.logs["starter.log"]
    # Positive control: DEBUG logs, of this preview.
    assert " DEBUG " in worker and "worker ready" in worker
    assert "delivery" in starter and "deployed" in starter and "destroyed" in starter
    assert_nowhere(evidence.logs, evidence.needles)


def test_kubernetes_objects_annotations_and_events_hold_no_secret(evidence: Evidence) -> None:
    kinds = {label.split()[1] for label in evidence.kube if label.startswith("created")}
    assert {"Secret", "ConfigMap", "Deployment", "Event", "Pod"} <= kinds, kinds
    assert_nowhere(evidence.kube, evidence.needles)


def test_api_answers_hold_no_secret(evidence: Evidence) -> None:
    assert len(evidence.api) >= 30, sorted(evidence.api)
    bad = {label: status for label, status in evidence.api_statuses.items() if status != 200}
    assert not bad, bad
    assert_nowhere(evidence.api, evidence.needles)


def test_store_audit_log_and_tables_hold_no_secret(evidence: Evidence) -> None:
    audit = evidence.store["audit_log"]
    assert "secret.create" in audit and "STRIPE_KEY" in audit
    assert "table secrets" in evidence.store
    assert_nowhere(evidence.store, evidence.needles)


def test_server_logs_git_host_dns_and_status_hold_no_secret(evidence: Evidence) -> None:
    assert evidence.elsewhere["git host calls"] != "[]"
    assert_nowhere({**evidence.servers, **evidence.elsewhere}, evidence.needles)
