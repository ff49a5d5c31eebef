"""The whole lifecycle on the real stack: webhook in, preview out, and nothing left behind.

Temporal dev server, the Kubernetes control plane, PostgreSQL (store and preview
databases), moto (Route53) and a local Git host, all on loopback. Every check of the
result is made from outside the code under test: kubectl, psql, boto3, the Git host.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr
from temporalio.client import Client, WorkflowHandle

from domain.blueprint import Blueprint
from domain.naming import environment_id, workflow_id
from domain.pull_request import PullRequest
from engine.sealing import Sealer
from engine.settings import Settings
from starter import lifecycle
from starter.app import create_app
from store import Store
from worker import Resources, Target, build_worker
from workflows.preview import PreviewEnvironmentWorkflow, PreviewStatus
from workflows.saga import ActivityTimeouts

pytestmark = [pytest.mark.kube, pytest.mark.slow]

FIXTURES = Path(__file__).parents[1] / "fixtures" / "github-webhooks"
REPOSITORY = "Codertocat/Hello-World"
SECRET_VALUE = f"sk_live_{uuid.uuid4().hex}"
WEBHOOK_SECRET = "e2e-webhook-secret"


def blueprint(zone_id: str) -> Blueprint:
    return Blueprint.model_validate(
        {
            "project": {"name": "hello", "repository": REPOSITORY},
            "applications": [
                {"name": "web", "image": "registry.local/hello/web", "depends_on": ["api"]},
                {"name": "api", "image": "registry.local/hello/api", "depends_on": ["main"]},
                {"name": "worker", "image": "registry.local/hello/worker", "public": False},
            ],
            "databases": [
                {
                    "name": "main",
                    "mode": "shared",
                    "data_policy": "seed",
                    "seed_sql": "CREATE TABLE greeting (text text);"
                    "INSERT INTO greeting VALUES ('hello');",
                }
            ],
            "network": {"base_domain": "preview.example.com", "hosted_zone_id": zone_id},
            "variables": [
                {"key": "NODE_ENV", "value": "production"},
                {
                    "key": "NODE_ENV",
                    "value": "development",
                    "applies_to": "previews",
                    "kind": "override",
                },
            ],
        }
    )


@pytest.fixture(scope="module")
async def stack(
    postgres_server: Any,
    moto_server: Any,
    kube_cluster: Any,
    git_host_module: Any,
    temporal_client: Client,
    test_settings: Settings,
) -> AsyncIterator[dict[str, Any]]:
    store_url = await postgres_server.new_database("e2e")
    zone = moto_server.client("route53").create_hosted_zone(
        Name="preview.example.com", CallerReference=str(uuid.uuid4())
    )["HostedZone"]["Id"]
    settings = test_settings.model_copy(
        update={
            "task_queue": f"e2e-{uuid.uuid4().hex[:6]}",
            "database_url": store_url,
            "preview_database_url": postgres_server.admin_url,
            "aws_endpoint_url": moto_server.endpoint_url,
            "kubeconfig": str(kube_cluster.kubeconfig),
            "github_api_url": git_host_module.url,
            "github_token": SecretStr(git_host_module.token),
            "github_webhook_secret": SecretStr(WEBHOOK_SECRET),
            "blueprint_source": "store",
            "resource_check_minutes": 0.05,  # every 3 s: what is gone is seen at once
        }
    )
    # boto3's credential chain reads the environment, as in production; moto accepts any.
    env = pytest.MonkeyPatch()
    env.setenv("AWS_ACCESS_KEY_ID", "e2e")
    env.setenv("AWS_SECRET_ACCESS_KEY", "e2e")
    store = await Store.connect(settings.database_url, Sealer.from_settings(settings))
    await store.migrate()
    await store.import_blueprint(blueprint(zone.split("/")[-1]), actor="e2e")
    await store.put_secret("hello", "STRIPE_KEY", SECRET_VALUE, actor="e2e")

    resources = Resources()
    timeouts = ActivityTimeouts(heartbeat_seconds=30, max_attempts=5, max_interval_seconds=2)
    worker = await build_worker(temporal_client, settings, Target(), resources)
    app = create_app(settings, temporal_client, store, timeouts=timeouts)
    async with (
        worker,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://starter"
        ) as http,
    ):
        yield {"settings": settings, "http": http, "zone": zone, "store": store,
               "timeouts": timeouts}
    await resources.close()
    await store.close()
    env.undo()


async def send(http: httpx.AsyncClient, name: str, number: int, **pr: Any) -> dict[str, Any]:
    payload = json.loads((FIXTURES / f"{name}.json").read_text())
    payload["number"] = payload["pull_request"]["number"] = number
    payload["pull_request"].update(pr)
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    answer = await http.post(
        "/webhooks/github",
        content=body,
        headers={
            "X-GitHub-Event": "pull_request",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": signature,
        },
    )
    assert answer.status_code == 202, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def wait_for(
    handle: WorkflowHandle[Any, Any], predicate: Any, timeout: float = 240
) -> PreviewStatus:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = await handle.query(PreviewEnvironmentWorkflow.status)
        if predicate(status):
            return status
        assert status.state != "failed", status.last_error
        assert loop.time() < deadline, f"not reached in {timeout}s: {status}"
        await asyncio.sleep(0.2)


async def eventually(read: Any, predicate: Any, timeout: float = 30) -> Any:
    """Poll `read()` until `predicate` holds, within a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate(value := read()):
        assert loop.time() < deadline, f"not reached in {timeout}s: {value}"
        await asyncio.sleep(0.1)
    return value


async def databases(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        return {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
    finally:
        await conn.close()


async def test_opened_synchronize_closed(
    stack: dict[str, Any],
    kube_cluster: Any,
    moto_server: Any,
    git_host_module: Any,
    postgres_server: Any,
    temporal_client: Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    number = uuid.uuid4().int % 10**5 + 1
    env = environment_id(REPOSITORY, number)
    http = stack["http"]

    assert (await send(http, "pull_request.opened", number))["outcome"] == "deployed"
    handle = temporal_client.get_workflow_handle_for(
        PreviewEnvironmentWorkflow.run, workflow_id(REPOSITORY, number)
    )
    status = await wait_for(handle, lambda s: s.state == "ready")
    assert status.steps_done == status.steps_total
    assert status.urls["web"] == f"http://web-pr-{number}.preview.example.com"

    # Kubernetes, seen with kubectl: namespace, three ready deployments, ingresses.
    ready = kube_cluster.kubectl(
        "get",
        "deploy",
        "-n",
        env,
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.readyReplicas} {end}",
    )
    assert set(ready.split()) == {"web=1", "api=1", "worker=1"}
    assert kube_cluster.kubectl("get", "ingress", "-n", env, "-o", "name").split() == [
        "ingress.networking.k8s.io/api",
        "ingress.networking.k8s.io/web",
    ]
    config = json.loads(
        kube_cluster.kubectl("get", "configmap", "web-config", "-n", env, "-o", "json")
    )["data"]
    assert config["NODE_ENV"] == "development" and config["PR_NUMBER"] == str(number)
    import base64

    def secret_values(name: str) -> dict[str, str]:
        secret = json.loads(kube_cluster.kubectl("get", "secret", name, "-n", env, "-o", "json"))
        return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}

    # web names only the api: the front end holds no database credentials; the api does.
    web_values = secret_values("web-secrets")
    assert web_values["STRIPE_KEY"] == SECRET_VALUE and "DATABASE_URL" not in web_values
    values = secret_values("api-secrets")
    assert values["DATABASE_URL"].startswith("postgresql://")

    # The preview database, seen with psql: it exists, seeded, reachable with its URL.
    conn = await asyncpg.connect(values["DATABASE_URL"])
    assert await conn.fetchval("SELECT text FROM greeting") == "hello"
    await conn.close()

    # DNS in moto, and the PR comment on the Git host.
    records = moto_server.client("route53").list_resource_record_sets(HostedZoneId=stack["zone"])[
        "ResourceRecordSets"
    ]
    assert {f"web-pr-{number}.preview.example.com.", f"api-pr-{number}.preview.example.com."} <= {
        r["Name"] for r in records if r["Type"] == "CNAME"
    }
    # The PR comment follows the state (published right after it changes).
    comments = await eventually(lambda: git_host_module.comments(REPOSITORY, number),
                                lambda c: len(c) == 1 and status.urls["web"] in c[0]["body"])
    assert "ready" in comments[0]["body"].lower()

    # A new commit rolls out.
    new_sha = "f" * 40
    await send(
        http,
        "pull_request.synchronize",
        number,
        head={
            **json.loads((FIXTURES / "pull_request.synchronize.json").read_text())["pull_request"][
                "head"
            ],
            "sha": new_sha,
        },
        updated_at="2030-01-01T00:00:00Z",
    )
    await wait_for(handle, lambda s: s.head_sha == new_sha and s.state == "ready")
    image = kube_cluster.kubectl(
        "get",
        "deploy",
        "web",
        "-n",
        env,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    )
    assert image == f"registry.local/hello/web:{new_sha}"
    assert len(git_host_module.comments(REPOSITORY, number)) == 1  # edited in place

    # Closing removes every trace, checked from outside.
    assert (await send(http, "pull_request.closed", number, updated_at="2030-01-02T00:00:00Z"))[
        "outcome"
    ] == "destroyed"
    result = await handle.result()
    assert result.state == "destroyed"
    assert env not in kube_cluster.kubectl("get", "ns", "-o", "name")
    assert not [d for d in await databases(postgres_server.admin_url) if env.replace("-", "_") in d]
    records = moto_server.client("route53").list_resource_record_sets(HostedZoneId=stack["zone"])[
        "ResourceRecordSets"
    ]
    assert not [r for r in records if f"pr-{number}." in r["Name"]]

    # The secret never reached the server's history, nor any log line.
    raw = await Client.connect(temporal_client.service_client.config.target_host)
    history = (await raw.get_workflow_handle(handle.id).fetch_history()).to_json()
    assert SECRET_VALUE not in history
    assert SECRET_VALUE not in caplog.text


async def test_what_is_removed_behind_its_back_is_reported_and_put_back(
    stack: dict[str, Any], kube_cluster: Any, git_host_module: Any, postgres_server: Any,
    temporal_client: Client,
) -> None:
    """Someone drops the preview's database and deletes its namespace: the preview says
    so in its status and on the pull request instead of staying ready, and the next push
    makes both again (seeded), with everything that lived in the namespace."""
    number = uuid.uuid4().int % 10**5 + 1
    env = environment_id(REPOSITORY, number)
    http = stack["http"]
    await send(http, "pull_request.opened", number)
    handle = temporal_client.get_workflow_handle_for(
        PreviewEnvironmentWorkflow.run, workflow_id(REPOSITORY, number))
    await wait_for(handle, lambda s: s.state == "ready")
    database = next(d for d in await databases(postgres_server.admin_url)
                    if env.replace("-", "_") in d)

    admin = await asyncpg.connect(postgres_server.admin_url)
    try:
        await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
    finally:
        await admin.close()
    kube_cluster.kubectl("delete", "namespace", env, "--wait=true")

    status = await wait_for(handle, lambda s: s.state == "degraded" and s.last_error
                            and "namespace" in s.last_error and "database" in s.last_error)
    assert f"namespace {env} is gone" in (status.last_error or "")
    assert f"database {database} is gone" in (status.last_error or "")
    comments = await eventually(lambda: git_host_module.comments(REPOSITORY, number),
                                lambda c: "damaged" in c[0]["body"])
    assert f"namespace {env} is gone" in comments[0]["body"]

    new_sha = "e" * 40
    await send(http, "pull_request.synchronize", number, head={
        **json.loads((FIXTURES / "pull_request.synchronize.json").read_text())["pull_request"][
            "head"], "sha": new_sha}, updated_at="2030-01-01T00:00:00Z")
    await wait_for(handle, lambda s: s.head_sha == new_sha and s.state == "ready")
    ready = kube_cluster.kubectl("get", "deploy", "-n", env, "-o", "jsonpath={range .items[*]}"
                                 "{.metadata.name}={.status.readyReplicas} {end}")
    assert set(ready.split()) == {"web=1", "api=1", "worker=1"}
    import base64

    secret = json.loads(kube_cluster.kubectl("get", "secret", "api-secrets", "-n", env, "-o",
                                             "json"))
    conn = await asyncpg.connect(base64.b64decode(secret["data"]["DATABASE_URL"]).decode())
    try:
        assert await conn.fetchval("SELECT text FROM greeting") == "hello"  # seeded again
    finally:
        await conn.close()
    await send(http, "pull_request.closed", number, updated_at="2030-01-02T00:00:00Z")
    assert (await handle.result()).state == "destroyed"
    assert env not in kube_cluster.kubectl("get", "ns", "-o", "name")


def tagged(items: list[dict[str, Any]], env: str, key: str = "Tags") -> list[dict[str, Any]]:
    return [i for i in items
            if {"Key": "preview-environment", "Value": env} in (i.get(key) or [])]


async def test_isolated_vpc_with_rds_clone_end_to_end(
    stack: dict[str, Any], kube_cluster: Any, moto_server: Any, temporal_client: Client,
) -> None:
    """isolation: vpc + an RDS clone, created and destroyed through the workflow; boto3
    then finds nothing carrying the preview's tag."""
    suffix = uuid.uuid4().hex[:6]
    repo, number = f"acme/vpc-{suffix}", 7
    rds = moto_server.client("rds")
    ec2 = moto_server.client("ec2")
    rds.create_db_instance(
        DBInstanceIdentifier=f"prod-{suffix}", Engine="postgres", DBInstanceClass="db.t4g.micro",
        MasterUsername="app", MasterUserPassword="source-password", DBName="shop",
        AllocatedStorage=20)
    cluster_vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    await stack["store"].import_blueprint(Blueprint.model_validate({
        "project": {"name": f"vpc-{suffix}", "repository": repo},
        "environment": {"isolation": "vpc", "region": "eu-west-1"},
        "applications": [{"name": "web", "image": "registry.local/vpc/web",
                          "depends_on": ["main"]}],
        "databases": [{"name": "main", "mode": "rds", "source": f"prod-{suffix}",
                       "data_policy": "clone"}],
        "network": {"base_domain": "preview.example.com", "cluster_vpc_id": cluster_vpc},
    }), actor="e2e")
    env = environment_id(repo, number)
    pr = PullRequest(repository=repo, number=number, head_sha="b" * 40)
    settings = stack["settings"]
    handle = await lifecycle.deploy(temporal_client, pr, task_queue=settings.task_queue,
                                    timeouts=stack["timeouts"])
    await wait_for(handle, lambda s: s.state == "ready")

    vpcs = tagged(ec2.describe_vpcs()["Vpcs"], env)
    assert len(vpcs) == 1
    instances = [i for i in rds.describe_db_instances()["DBInstances"]
                 if tagged([i], env, "TagList")]
    assert len(instances) == 1
    secret = json.loads(kube_cluster.kubectl("get", "secret", "web-secrets", "-n", env,
                                             "-o", "json"))
    import base64
    url = base64.b64decode(secret["data"]["DATABASE_URL"]).decode()
    assert instances[0]["Endpoint"]["Address"] in url
    peerings = [p for p in ec2.describe_vpc_peering_connections()["VpcPeeringConnections"]
                if p["Status"]["Code"] == "active" and tagged([p], env)]
    assert len(peerings) == 1

    await lifecycle.destroy(temporal_client, repo, number, "e2e done")
    assert (await handle.result()).state == "destroyed"
    assert tagged(ec2.describe_vpcs()["Vpcs"], env) == []
    assert tagged(ec2.describe_subnets()["Subnets"], env) == []
    assert tagged(ec2.describe_security_groups()["SecurityGroups"], env) == []
    assert tagged(ec2.describe_route_tables()["RouteTables"], env) == []
    assert [p for p in ec2.describe_vpc_peering_connections()["VpcPeeringConnections"]
            if tagged([p], env) and p["Status"]["Code"] not in ("deleted", "rejected")] == []
    assert [i for i in rds.describe_db_instances()["DBInstances"]
            if tagged([i], env, "TagList")] == []
    assert [s for s in rds.describe_db_snapshots()["DBSnapshots"]
            if tagged([s], env, "TagList")] == []
    assert env not in kube_cluster.kubectl("get", "ns", "-o", "name")
