"""The orphan sweeper reaches a tenant's dedicated cluster or account only through that
tenant's worker, finds those targets in the projects' blueprints, and reports a tenant
whose worker is down instead of waiting for it forever.

Three workers on the real Temporal dev server, as in production: the lifecycle worker
(queue Q) runs the workflow; `Q-cluster-hipaa` and `Q-account-111111111111` are tenant
workers. Every worker registers the same recording list/remove activities, so only the
workflow's routing decides where each call lands. Nobody polls `Q-cluster-gone`.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import CancelledError
from temporalio.worker import Worker

from activities.control_plane.blueprint_files import BlueprintFileActivities
from domain.contract import (
    LIST_AWS_ENVIRONMENTS,
    LIST_KUBE_ENVIRONMENTS,
    LIST_PREVIEW_DATABASES,
    LIST_SWEEP_TARGETS,
    LIVE_ENVIRONMENTS,
    REMOVE_AWS_ENVIRONMENT,
    REMOVE_KUBE_ENVIRONMENT,
)
from domain.resources import (
    AwsEnvironmentInput,
    AwsSweepInput,
    AwsTarget,
    KubeEnvironmentInput,
    KubeSweepInput,
    PreviewDatabase,
    SweepTargets,
)
from workflows.sweeper import OrphanSweepWorkflow, SweepRequest

ACCOUNT = "111111111111"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/previews"


def blueprint(name: str, environment: dict[str, Any]) -> dict[str, Any]:
    return {"project": {"name": name, "repository": f"acme/{name}"},
            "environment": environment,
            "applications": [{"name": "web", "image": "registry.local/web"}]}


BLUEPRINTS = {
    "shop": blueprint("shop", {}),  # shared cluster "default", shared account, eu-west-1
    "clinic": blueprint("clinic", {"isolation": "cluster", "cluster": {"name": "hipaa"}}),
    "bank": blueprint("bank", {"isolation": "account", "region": "us-east-1",
                               "cloud_account": {"account_id": ACCOUNT, "role_arn": ROLE,
                                                 "external_id": "bank-previews"}}),
    "lab": blueprint("lab", {"isolation": "cluster", "cluster": {"name": "gone"}}),
}


@dataclass
class Systems:
    """What one worker's sweep activities were asked to do: (worker, activity, where)."""

    label: str
    calls: list[tuple[str, str, str]] = field(default_factory=list)

    def _found(self) -> dict[str, list[str]]:
        return {"env-live": ["kept"], f"env-orphan-{self.label}": ["leftover"]}

    @activity.defn(name=LIST_KUBE_ENVIRONMENTS.name)
    async def list_kube(self, arg: KubeSweepInput) -> dict[str, list[str]]:
        self.calls.append((self.label, "list_kube_environments", arg.cluster))
        return self._found()

    @activity.defn(name=REMOVE_KUBE_ENVIRONMENT.name)
    async def remove_kube(self, arg: KubeEnvironmentInput) -> list[str]:
        self.calls.append((self.label, f"remove {arg.environment}", arg.cluster))
        return ["leftover"]

    @activity.defn(name=LIST_AWS_ENVIRONMENTS.name)
    async def list_aws(self, arg: AwsSweepInput) -> dict[str, list[str]]:
        self.calls.append((self.label, "list_aws_environments",
                           f"{arg.target.account_id}:{arg.target.region}"))
        return self._found()

    @activity.defn(name=REMOVE_AWS_ENVIRONMENT.name)
    async def remove_aws(self, arg: AwsEnvironmentInput) -> list[str]:
        self.calls.append((self.label, f"remove {arg.environment}",
                           f"{arg.target.account_id}:{arg.target.region}"))
        return ["leftover"]

    def activities(self) -> list[Any]:
        return [self.list_kube, self.remove_kube, self.list_aws, self.remove_aws]


@activity.defn(name=LIVE_ENVIRONMENTS.name)
async def live_environments() -> list[str]:
    return ["env-live"]


@activity.defn(name=LIST_PREVIEW_DATABASES.name)
async def list_preview_databases() -> list[PreviewDatabase]:
    return []


async def test_sweeper_routes_tenants_to_their_workers(
    temporal_client: Client, tmp_path: Path
) -> None:
    for name, document in BLUEPRINTS.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(document))
    queue = f"sweep-routing-{uuid.uuid4().hex[:8]}"
    lifecycle, cluster, account = Systems("lifecycle"), Systems("hipaa"), Systems("bank")
    workers = [
        Worker(temporal_client, task_queue=queue, workflows=[OrphanSweepWorkflow],
               activities=[*lifecycle.activities(), live_environments, list_preview_databases,
                           BlueprintFileActivities(tmp_path).list_sweep_targets]),
        Worker(temporal_client, task_queue=f"{queue}-cluster-hipaa",
               activities=cluster.activities()),
        Worker(temporal_client, task_queue=f"{queue}-account-{ACCOUNT}",
               activities=account.activities()),
    ]
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(
        {"project": {"name": "broken", "repository": "acme/broken"},
         "environment": {"isolation": "nowhere"}}))
    # Long enough for a live tenant's worker on a loaded machine; "gone" has none.
    # force: these planted names belong to no registered project's previews, so a sweep
    # that cannot ask for their workflows keeps them otherwise (test_sweeper_safety.py).
    request = SweepRequest(dry_run=False, tenant_timeout=timedelta(seconds=8), force=True)
    async with workers[0], workers[1], workers[2]:
        report = await temporal_client.execute_workflow(
            OrphanSweepWorkflow.run, request, id=f"sweep-{uuid.uuid4()}", task_queue=queue)

    # Shared cluster and account: the lifecycle worker. Tenants: their own worker only.
    assert sorted(lifecycle.calls) == sorted([
        ("lifecycle", "list_kube_environments", "default"),
        ("lifecycle", "remove env-orphan-lifecycle", "default"),
        ("lifecycle", "list_aws_environments", "None:eu-west-1"),
        ("lifecycle", "remove env-orphan-lifecycle", "None:eu-west-1"),
    ])
    assert cluster.calls == [("hipaa", "list_kube_environments", "hipaa"),
                             ("hipaa", "remove env-orphan-hipaa", "hipaa")]
    assert account.calls == [("bank", "list_aws_environments", f"{ACCOUNT}:us-east-1"),
                             ("bank", "remove env-orphan-bank", f"{ACCOUNT}:us-east-1")]
    assert report.removed == {
        "kubernetes:default": {"env-orphan-lifecycle": ["leftover"]},
        "kubernetes:hipaa": {"env-orphan-hipaa": ["leftover"]},
        "aws:default:eu-west-1": {"env-orphan-lifecycle": ["leftover"]},
        f"aws:{ACCOUNT}:us-east-1": {"env-orphan-bank": ["leftover"]},
    }
    # The tenant without a worker is reported, not waited for, and nothing else suffered.
    assert set(report.failed) == {"kubernetes:gone", "discovery"}
    assert "timeout" in report.failed["kubernetes:gone"].lower()
    assert report.failed["discovery"] == "broken.yaml: not a valid blueprint"
    assert "kubernetes:gone" not in report.found


async def test_a_cancelled_sweep_removes_nothing_more(
    temporal_client: Client, tmp_path: Path
) -> None:
    queue = f"sweep-cancel-{uuid.uuid4().hex[:8]}"
    started, release = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    @activity.defn(name=LIST_KUBE_ENVIRONMENTS.name)
    async def list_kube(arg: KubeSweepInput) -> dict[str, list[str]]:
        calls.append(f"list {arg.cluster}")
        return {"env-orphan": ["leftover"]}

    @activity.defn(name=REMOVE_KUBE_ENVIRONMENT.name)
    async def remove_kube(arg: KubeEnvironmentInput) -> list[str]:
        calls.append(f"remove {arg.environment}")
        if not started.is_set():
            started.set()
            await release.wait()  # the operator cancels the sweep meanwhile
        return ["leftover"]

    @activity.defn(name=LIST_AWS_ENVIRONMENTS.name)
    async def list_aws(arg: AwsSweepInput) -> dict[str, list[str]]:
        calls.append("list aws")
        return {}

    @activity.defn(name=LIST_SWEEP_TARGETS.name)
    async def list_sweep_targets() -> SweepTargets:
        return SweepTargets()  # no project: nobody to ask for by id

    worker = Worker(temporal_client, task_queue=queue, workflows=[OrphanSweepWorkflow],
                    activities=[list_kube, remove_kube, list_aws, live_environments,
                                list_preview_databases, list_sweep_targets])
    request = SweepRequest(dry_run=False, discover=False, force=True,
                           clusters=["default", "second"],
                           aws_targets=[AwsTarget(region="eu-west-1")])
    async with worker:
        handle = await temporal_client.start_workflow(
            OrphanSweepWorkflow.run, request, id=f"sweep-{uuid.uuid4()}", task_queue=queue)
        try:
            await asyncio.wait_for(started.wait(), 30)
            await handle.cancel()
            with pytest.raises(WorkflowFailureError) as failed:
                await handle.result()
        finally:
            release.set()
    assert isinstance(failed.value.cause, CancelledError)
    assert calls == ["list default", "remove env-orphan"]  # not the second cluster, not AWS
