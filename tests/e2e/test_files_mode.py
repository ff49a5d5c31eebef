"""Previews in the documented files mode: blueprints from a folder, no project store.

The control-plane database still exists (preview slots, webhook de-duplication); the
source environment comes from a YAML file. Checked from outside with kubectl, psql,
boto3 (moto) and the local Git host. The second test runs with production-like
settings: TLS from ACM, a Route53 zone, and the load balancer's host name from settings.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml
from pydantic import SecretStr
from temporalio.client import Client

from domain.naming import environment_id
from domain.pull_request import PullRequest
from engine.settings import Settings
from starter import lifecycle
from store import Store
from tests.e2e.test_lifecycle import databases, eventually, wait_for
from worker import Resources, Target, build_worker
from workflows.saga import ActivityTimeouts

pytestmark = [pytest.mark.kube, pytest.mark.slow]

REPOSITORY = "acme/files-mode"
BLUEPRINT: dict[str, Any] = {
    "project": {"name": "files-mode", "repository": REPOSITORY},
    "applications": [{"name": "web", "image": "registry.local/files/web",
                      "depends_on": ["main", "sessions"]},
                     {"name": "jobs", "image": "registry.local/files/jobs", "public": False,
                      "depends_on": ["main"]}],
    "caches": [{"name": "sessions", "memory": "64Mi"}],
    "databases": [{"name": "main", "mode": "shared", "data_policy": "seed",
                   "seed_sql": "CREATE TABLE hello (x int); INSERT INTO hello VALUES (1);"}],
    "policy": {"max_live_previews": 2},
}
TLS_REPOSITORY = "acme/files-tls"
LOAD_BALANCER = "k8s-ingress-0123456789.eu-west-1.elb.amazonaws.com"
TIMEOUTS = ActivityTimeouts(heartbeat_seconds=30, max_attempts=3, max_interval_seconds=2)


def tls_blueprint(zone_id: str) -> dict[str, Any]:
    return {
        "project": {"name": "files-tls", "repository": TLS_REPOSITORY},
        "applications": [{"name": "web", "image": "registry.local/files/web"}],
        "network": {"base_domain": "preview.example.com", "hosted_zone_id": zone_id,
                    "tls": "per_host"},
    }


@pytest.fixture(scope="module")
def zone_id(moto_server: Any) -> str:
    zone = moto_server.client("route53").create_hosted_zone(
        Name="preview.example.com", CallerReference=str(uuid.uuid4()))["HostedZone"]["Id"]
    return str(zone).split("/")[-1]


@pytest.fixture(scope="module")
async def files_worker(postgres_server: Any, kube_cluster: Any, temporal_client: Client,
                       test_settings: Settings, tmp_path_factory: pytest.TempPathFactory,
                       moto_server: Any, git_host_module: Any, zone_id: str,
                       ) -> AsyncIterator[Settings]:
    folder = tmp_path_factory.mktemp("blueprints")
    (folder / "files-mode.yaml").write_text(yaml.safe_dump(BLUEPRINT))
    (folder / "files-tls.yaml").write_text(yaml.safe_dump(tls_blueprint(zone_id)))
    env = pytest.MonkeyPatch()  # boto3's credential chain; moto accepts any
    env.setenv("AWS_ACCESS_KEY_ID", "files")
    env.setenv("AWS_SECRET_ACCESS_KEY", "files")
    settings = test_settings.model_copy(update={
        "task_queue": f"files-{uuid.uuid4().hex[:6]}",
        "blueprint_source": "files",
        "blueprint_dir": str(folder),
        "database_url": await postgres_server.new_database("files_mode"),
        "preview_database_url": postgres_server.admin_url,
        "kubeconfig": str(kube_cluster.kubeconfig),
        "aws_endpoint_url": moto_server.endpoint_url,
        "ingress_hostname": LOAD_BALANCER,
        "github_api_url": git_host_module.url,
        "github_token": SecretStr(git_host_module.token),
    })
    store = await Store.connect(settings.database_url)
    await store.migrate()  # what `python -m starter` does at start
    await store.close()
    resources = Resources()
    worker = await build_worker(temporal_client, settings, Target(), resources)
    async with worker:
        yield settings
    await resources.close()
    env.undo()


async def test_a_preview_from_a_blueprint_file_is_created_and_removed(
    files_worker: Settings, kube_cluster: Any, postgres_server: Any, temporal_client: Client,
    git_host_module: Any,
) -> None:
    """With a database and a Redis cache: each application gets the connection URLs of
    what it names only (jobs: the database, not the cache); the cache shows in the
    status and on the pull request."""
    number = uuid.uuid4().int % 10**5 + 1
    env = environment_id(REPOSITORY, number)
    pr = PullRequest(repository=REPOSITORY, number=number, head_sha="c" * 40)
    handle = await lifecycle.deploy(temporal_client, pr, task_queue=files_worker.task_queue,
                                    timeouts=TIMEOUTS)
    status = await wait_for(handle, lambda s: s.state == "ready")
    assert status.steps_done == status.steps_total
    assert "preview slot of acme/files-mode" in status.resources

    ready = kube_cluster.kubectl("get", "deploy", "web", "-n", env, "-o",
                                 "jsonpath={.status.readyReplicas}")
    assert ready == "1"
    secret = json.loads(kube_cluster.kubectl("get", "secret", "web-secrets", "-n", env,
                                             "-o", "json"))
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert env.replace("-", "_") in values["DATABASE_URL"]
    assert values["REDIS_URL"] == values["REDIS_URL_SESSIONS"]
    assert values["REDIS_URL"].startswith("redis://:") and f".{env}.svc:6379/0" in values[
        "REDIS_URL"]
    jobs = json.loads(kube_cluster.kubectl("get", "secret", "jobs-secrets", "-n", env,
                                           "-o", "json"))
    assert "REDIS_URL" not in (jobs.get("data") or {}) and "DATABASE_URL" in jobs["data"]
    assert kube_cluster.kubectl("get", "deploy", "cache-sessions", "-n", env, "-o",
                                "jsonpath={.status.readyReplicas}") == "1"
    cache_line = next(line for line in status.resources if line.startswith("Redis cache"))
    assert cache_line == "Redis cache sessions (redis:7.4-alpine, 64Mi)"
    comments = await eventually(lambda: git_host_module.comments(REPOSITORY, number),
                                lambda c: c and "ready" in c[-1]["body"].lower())
    assert cache_line in comments[-1]["body"]
    assert values["REDIS_URL"] not in comments[-1]["body"]

    # Behind the engine's back, a namespace with this preview's marks: the receipt must
    # find it from outside, where the teardown (which knows only its ledger) cannot.
    stray = f"{env[:50]}-stray"
    kube_cluster.kubectl("create", "namespace", stray)
    kube_cluster.kubectl("label", "namespace", stray, "app.kubernetes.io/managed-by=preview-engine",
                         f"preview.dev/environment={env}")
    await lifecycle.destroy(temporal_client, REPOSITORY, number, "files mode done")
    result = await handle.result()
    assert result.state == "destroyed" and result.receipt is not None
    assert result.receipt.leftovers == [f"kubernetes:default: namespace {stray}"]
    assert set(result.receipt.checked) == {"kubernetes:default", "postgres"}
    comments = await eventually(lambda: git_host_module.comments(REPOSITORY, number),
                                lambda c: c and "Left behind" in c[-1]["body"])
    assert f"namespace {stray}" in comments[-1]["body"] and len(comments) == 1
    kube_cluster.kubectl("delete", "namespace", stray, "--wait=false")
    assert env not in kube_cluster.kubectl("get", "ns", "-o", "name").replace(stray, "")
    assert not [d for d in await databases(postgres_server.admin_url)
                if env.replace("-", "_") in d]


async def test_tls_previews_get_https_urls_and_dns_at_the_configured_load_balancer(
    files_worker: Settings, moto_server: Any, git_host_module: Any, zone_id: str,
    temporal_client: Client,
) -> None:
    number = uuid.uuid4().int % 10**5 + 1
    pr = PullRequest(repository=TLS_REPOSITORY, number=number, head_sha="d" * 40)
    handle = await lifecycle.deploy(temporal_client, pr, task_queue=files_worker.task_queue,
                                    timeouts=TIMEOUTS)
    status = await wait_for(handle, lambda s: s.state == "ready")
    host = f"web-pr-{number}.preview.example.com"
    assert status.urls == {"web": f"https://{host}"}

    records = moto_server.client("route53").list_resource_record_sets(
        HostedZoneId=zone_id)["ResourceRecordSets"]
    cname = [r for r in records if r["Name"] == f"{host}." and r["Type"] == "CNAME"]
    assert [v["Value"].rstrip(".") for v in cname[0]["ResourceRecords"]] == [LOAD_BALANCER]
    certificates = moto_server.client("acm").list_certificates()["CertificateSummaryList"]
    assert host in {c["DomainName"] for c in certificates}

    # Feedback is published right after the state changes.
    comments = await eventually(lambda: git_host_module.comments(TLS_REPOSITORY, number),
                                lambda c: c and "ready" in c[-1]["body"].lower())
    comment = comments[-1]["body"]
    assert f"https://{host}" in comment and "http://" not in comment
    # The commit status follows the comment (one publication, two calls): wait for it.
    statuses = await eventually(lambda: git_host_module.statuses(TLS_REPOSITORY, pr.head_sha),
                                lambda s: s and s[-1].get("target_url"))
    assert statuses[-1]["target_url"] == f"https://{host}"

    await lifecycle.destroy(temporal_client, TLS_REPOSITORY, number, "tls done")
    result = await handle.result()
    assert result.state == "destroyed" and result.receipt is not None
    # Nothing of it left in the cluster, in AWS (Route53, ACM) or on the database server.
    assert result.receipt.clean, result.receipt
    assert "aws:default:eu-west-1" in result.receipt.checked
    records = moto_server.client("route53").list_resource_record_sets(
        HostedZoneId=zone_id)["ResourceRecordSets"]
    assert not [r for r in records if host in r["Name"]]
