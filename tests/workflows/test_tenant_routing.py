"""Tenant routing end to end: an isolated preview's Kubernetes work runs on its own worker.

Two workers on the real Temporal dev server, as in production: the lifecycle worker on
queue Q holds the workflow and every activity (like `python -m worker`), and a tenant
worker on `Q-cluster-hipaa` holds only the Kubernetes activities (like `python -m worker
--target cluster:hipaa`). Both run the recording Inventory, and an interceptor on each
worker records which worker ran which activity. Because the lifecycle worker *could* run
the Kubernetes activities too, only the plan's routing keeps them off it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
)

from activities.control_plane.blueprint_files import BlueprintFileActivities
from activities.control_plane.planning import PlanningActivities
from domain.blueprint import Blueprint
from domain.plan import PlanOptions, plan_preview
from domain.pull_request import PullRequest
from domain.resources import KubeSpec
from starter import lifecycle
from tests.workflows.harness import FAST
from tests.workflows.inventory import SPEC_CLASSES, Inventory
from workflows.preview import PreviewEnvironmentWorkflow, PreviewState, PreviewStatus

KUBE_ACTIVITIES = {
    name
    for cls in SPEC_CLASSES if issubclass(cls, KubeSpec)
    for name in (cls.present, cls.absent, cls.sleep, cls.wake) if name
}

BLUEPRINT: dict[str, Any] = {
    "project": {"name": "clinic", "repository": "acme/clinic-routing"},
    "environment": {"isolation": "cluster", "cluster": {"name": "hipaa"}},
    "applications": [
        {"name": "web", "image": "registry.local/clinic/web", "depends_on": ["api"]},
        {"name": "api", "image": "registry.local/clinic/api",
         "depends_on": ["main", "records"]},
    ],
    "databases": [
        {"name": "main", "mode": "shared"},  # the shared server: lifecycle worker
        {"name": "records", "mode": "container"},  # in the dedicated cluster: tenant worker
    ],
}


@dataclass
class Ran:
    worker: str
    activity: str
    task_queue: str


@dataclass
class Recorder(Interceptor):
    """Records every activity this worker executes, under the worker's label."""

    label: str
    log: list[Ran] = field(default_factory=list)

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        recorder = self

        class Inbound(ActivityInboundInterceptor):
            async def execute_activity(self, input: ExecuteActivityInput) -> Any:
                info = activity.info()
                recorder.log.append(Ran(recorder.label, info.activity_type, info.task_queue))
                return await super().execute_activity(input)

        return Inbound(next)


async def wait_state(
    handle: Any, predicate: Callable[[PreviewStatus], bool], timeout: float = 60
) -> PreviewStatus:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = await handle.query(PreviewEnvironmentWorkflow.status)
        if predicate(status):
            return status
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached; last status {status}")
        await asyncio.sleep(0.05)  # polling a condition with a deadline


async def test_isolated_preview_runs_kubernetes_activities_on_the_tenant_worker(
    temporal_client: Client, tmp_path: Path
) -> None:
    (tmp_path / "clinic.yaml").write_text(yaml.safe_dump(BLUEPRINT))
    queue = f"routing-{uuid.uuid4().hex[:8]}"
    tenant_queue = f"{queue}-cluster-hipaa"
    inventory = Inventory()  # one inventory: both workers act on the same "world"
    files = BlueprintFileActivities(tmp_path)
    everything = inventory.activities()
    kube_only = [
        fn for fn in everything
        if getattr(fn, "__temporal_activity_definition").name in KUBE_ACTIVITIES
    ]
    assert {getattr(fn, "__temporal_activity_definition").name for fn in kube_only} == (
        KUBE_ACTIVITIES)
    on_lifecycle, on_tenant = Recorder("lifecycle"), Recorder("tenant")
    lifecycle_worker = Worker(
        temporal_client, task_queue=queue, workflows=[PreviewEnvironmentWorkflow],
        activities=[*everything, files.load_source_environment,
                    PlanningActivities(PlanOptions(task_queue=queue)).plan_preview],
        interceptors=[on_lifecycle],
    )
    tenant_worker = Worker(
        temporal_client, task_queue=tenant_queue, activities=kube_only,
        interceptors=[on_tenant],
    )
    pr = PullRequest(repository="acme/clinic-routing", number=1000 + uuid.uuid4().int % 9000,
                     head_sha="d" * 40)
    plan = plan_preview(Blueprint.model_validate(BLUEPRINT), pr,
                        options=PlanOptions(task_queue=queue))
    kube_steps = [s for s in plan.steps if isinstance(s.spec, KubeSpec)]
    assert {s.task_queue for s in kube_steps} == {tenant_queue}

    async with lifecycle_worker, tenant_worker:
        handle = await lifecycle.deploy(temporal_client, pr, task_queue=queue, timeouts=FAST)
        status = await wait_state(handle, lambda s: s.state == PreviewState.ready)
        assert status.steps_done == status.steps_total == len(plan.steps)
        await lifecycle.destroy(temporal_client, pr.repository, pr.number, "test")
        result = await handle.result()
    assert isinstance(result, PreviewStatus) and result.state == PreviewState.destroyed
    assert inventory.present == {}

    tenant_ran = [r.activity for r in on_tenant.log]
    lifecycle_ran = [r.activity for r in on_lifecycle.log]
    # Every Kubernetes step was made present and then absent, on the tenant worker only.
    expected = {s.present for s in kube_steps} | {s.absent for s in kube_steps if s.absent}
    assert set(tenant_ran) == expected
    assert len(tenant_ran) == 2 * len(kube_steps)
    assert {r.task_queue for r in on_tenant.log} == {tenant_queue}
    assert not set(lifecycle_ran) & KUBE_ACTIVITIES, lifecycle_ran
    # The rest stayed with the lifecycle worker, on the workflow's own queue.
    assert {"load_source_environment", "publish_feedback", "ensure_database_clone",
            "remove_database_clone"} <= set(lifecycle_ran)
    assert {r.task_queue for r in on_lifecycle.log} == {queue}
