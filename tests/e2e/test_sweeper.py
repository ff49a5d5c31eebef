"""The orphan sweeper on real systems: planted orphans go; live previews and untagged
resources stay. Kubernetes, moto (EC2) and PostgreSQL are real; so is the workflow.
tests/e2e/test_sweeper_safety.py: previews made while sweeps remove, a visibility list
that answers nothing, the grace period and the bounds."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.aws import AwsClients
from activities.aws.network import NetworkActivities
from activities.aws.sweeper import AwsSweepActivities
from activities.control_plane.blueprint_files import BlueprintFileActivities
from activities.control_plane.visibility import VisibilityActivities
from activities.kubernetes import ClusterClients, KubernetesActivities
from activities.postgres import PostgresAccess, PreviewDatabaseActivities
from domain.naming import Ownership, environment_id, pg_identifier
from domain.pull_request import PullRequest
from domain.resources import (
    AwsTarget,
    NamespaceSpec,
    PostgresCloneSpec,
    StepInput,
    VpcSpec,
)
from engine.sealing import Sealer
from engine.settings import Settings
from starter import lifecycle
from worker import activities_of
from workflows.sweeper import OrphanSweepWorkflow, SweepRequest

pytestmark = [pytest.mark.kube, pytest.mark.slow]
TARGET = AwsTarget(region="eu-west-1")


async def test_sweeper_removes_orphans_only(
    temporal_client: Client, test_settings: Settings, kube_cluster: Any, moto_server: Any,
    postgres_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "sweep")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sweep")
    queue = f"sweep-{uuid.uuid4().hex[:6]}"
    settings = test_settings.model_copy(update={"aws_endpoint_url": moto_server.endpoint_url})
    sealer = Sealer.from_settings(settings)
    aws = AwsClients(settings)
    kube = KubernetesActivities(ClusterClients({"default": str(kube_cluster.kubeconfig)}),
                                sealer)
    postgres = PreviewDatabaseActivities(
        PostgresAccess(postgres_server.admin_url, sealer, b"sweep-key"))
    run = ActivityEnvironment().run

    # A live preview: its workflow runs (started, never picked up: no worker on its queue).
    repo = f"acme/sweep-{uuid.uuid4().hex[:6]}"
    live_pr = PullRequest(repository=repo, number=1, head_sha="a" * 40)
    live_handle = await lifecycle.deploy(temporal_client, live_pr, task_queue=f"{queue}-idle")
    live, orphan = environment_id(repo, 1), environment_id(repo, 2)

    for env in (live, orphan):
        run(kube.ensure_namespace, StepInput(spec=NamespaceSpec(
            owner=Ownership(environment=env), name=env)))
        run(NetworkActivities(aws).ensure_vpc, StepInput(spec=VpcSpec(
            owner=Ownership(environment=env), target=TARGET, name=env,
            cidr="10.64.0.0/22" if env == live else "10.64.4.0/22")))
        await run(postgres.ensure_database_clone, StepInput(spec=PostgresCloneSpec(
            owner=Ownership(environment=env), database=pg_identifier(env, "main"),
            role=pg_identifier(env, "main", "app"))))
    # Untagged neighbours that look alike: never ours to remove.
    kube_cluster.kubectl("create", "namespace", f"{orphan[:50]}-untagged")
    ec2 = moto_server.client("ec2")
    untagged_vpc = ec2.create_vpc(CidrBlock="10.99.0.0/16")["Vpc"]["VpcId"]
    admin = await asyncpg.connect(postgres_server.admin_url)
    await admin.execute(f'CREATE DATABASE "{pg_identifier(orphan, "theirs")}"')

    # The AWS target is not in the request: the sweeper finds it in the project's blueprint.
    (tmp_path / "preview.yaml").write_text(yaml.safe_dump({
        "project": {"name": "sweep", "repository": repo},
        "environment": {"region": TARGET.region},
        "applications": [{"name": "web", "image": "registry.local/web"}]}))
    worker = Worker(
        temporal_client, task_queue=queue, workflows=[OrphanSweepWorkflow],
        activities=activities_of(VisibilityActivities(temporal_client), kube,
                                 AwsSweepActivities(aws), postgres,
                                 BlueprintFileActivities(tmp_path)),
        activity_executor=ThreadPoolExecutor(8),
    )
    async with worker:
        dry = await temporal_client.execute_workflow(
            OrphanSweepWorkflow.run, SweepRequest(dry_run=True),
            id=f"sweep-dry-{uuid.uuid4()}", task_queue=queue)
        assert live in dry.live
        assert orphan in dry.found["kubernetes:default"]
        assert orphan in dry.found["aws:default:eu-west-1"]
        assert orphan in dry.found["postgres"]
        assert all(live not in found for found in dry.found.values())
        assert dry.removed == {} and dry.failed == {}
        assert orphan in kube_cluster.kubectl("get", "ns", "-o", "name")  # dry run: untouched

        # Other test modules' leftovers on the shared servers are orphans too (force:
        # past the bounds); what matters is that ours went and the live one stayed.
        report = await temporal_client.execute_workflow(
            OrphanSweepWorkflow.run, SweepRequest(dry_run=False, force=True),
            id=f"sweep-{uuid.uuid4()}", task_queue=queue)
    for system in ("kubernetes:default", "postgres", "aws:default:eu-west-1"):
        assert orphan in report.removed[system] and live not in report.removed[system]

    namespaces = kube_cluster.kubectl("get", "ns", "-o", "name")
    assert f"namespace/{live}" in namespaces and f"namespace/{orphan}\n" not in namespaces + "\n"
    assert f"namespace/{orphan[:50]}-untagged" in namespaces
    vpcs = {v["VpcId"]: {t["Key"]: t["Value"] for t in v.get("Tags", [])}
            for v in ec2.describe_vpcs()["Vpcs"]}
    assert untagged_vpc in vpcs
    owners = {tags.get("preview-environment") for tags in vpcs.values()}
    assert live in owners and orphan not in owners
    names = {r["datname"] for r in await admin.fetch("SELECT datname FROM pg_database")}
    assert pg_identifier(live, "main") in names
    assert pg_identifier(orphan, "main") not in names
    assert pg_identifier(orphan, "theirs") in names
    await admin.close()
    await live_handle.terminate("test over")
