"""A worker over the recording Inventory, and the blueprint the saga tests share."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.control_plane.blueprint_files import BlueprintFileActivities
from activities.control_plane.planning import PlanningActivities
from domain.plan import PlanOptions
from domain.pull_request import PullRequest
from starter import lifecycle
from tests.workflows.inventory import Inventory
from workflows.preview import PreviewEnvironmentWorkflow, PreviewStatus
from workflows.saga import ActivityTimeouts

FAST = ActivityTimeouts(heartbeat_seconds=10, max_attempts=2, max_interval_seconds=1)

BLUEPRINT: dict[str, Any] = {
    "project": {"name": "shop", "repository": "acme/shop"},
    "applications": [
        {"name": "web", "image": "registry.local/shop/web", "depends_on": ["api"]},
        {"name": "api", "image": "registry.local/shop/api", "depends_on": ["main"]},
        {"name": "worker", "image": "registry.local/shop/worker", "public": False},
    ],
    "databases": [{"name": "main", "mode": "shared"}],
    "jobs": [
        {"name": "migrate", "application": "api", "command": ["migrate"], "depends_on": ["main"]},
        {"name": "seed", "when": "first_deploy", "image": "registry.local/shop/tools:1",
         "command": ["seed"], "depends_on": ["main"]},
        {"name": "farewell", "when": "destroy", "application": "api", "command": ["bye"]},
    ],
    "variables": [{"key": "NODE_ENV", "value": "production"}],
    "policy": {"ttl_hours": 2, "inactivity_hours": 1},
}


def pull_request(number: int, sha: str = "a" * 40, **extra: Any) -> PullRequest:
    return PullRequest(repository="acme/shop", number=number, head_sha=sha, **extra)


class Harness:
    def __init__(self, client: Client, blueprint_dir: Path,
                 policy: dict[str, Any] | None = None, *, check_images: bool = True,
                 resource_check_seconds: float | None = None, **blueprint: Any) -> None:
        self.client = client
        self.resource_check_seconds = resource_check_seconds  # None: the workflow's default
        if policy is not None or blueprint:  # a blueprint of its own, in a folder of its own
            blueprint_dir = blueprint_dir / uuid.uuid4().hex[:8]
            blueprint_dir.mkdir()
            (blueprint_dir / "shop.yaml").write_text(yaml.safe_dump(
                {**BLUEPRINT, "policy": policy or BLUEPRINT["policy"], **blueprint}))
        self.check_images = check_images
        self.inventory = Inventory()
        self.task_queue = f"saga-{uuid.uuid4().hex[:8]}"
        self.files = BlueprintFileActivities(blueprint_dir)

    def worker(self, *real: Callable[..., Any]) -> Worker:
        """`real`: real activities beside the recorded ones (e.g. reading a repository's
        file from the Git host stand-in)."""
        return Worker(
            self.client,
            task_queue=self.task_queue,
            workflows=[PreviewEnvironmentWorkflow],
            activities=[*self.inventory.activities(), self.files.load_source_environment,
                        PlanningActivities(PlanOptions(
                            task_queue=self.task_queue,
                            check_images=self.check_images)).plan_preview, *real],
        )

    async def deploy(self, pr: PullRequest) -> WorkflowHandle[Any, Any]:
        return await lifecycle.deploy(self.client, pr, task_queue=self.task_queue, timeouts=FAST,
                                      resource_check_seconds=self.resource_check_seconds)

    async def wait_state(
        self, handle: WorkflowHandle[Any, Any], predicate: Callable[[PreviewStatus], bool]
    ) -> PreviewStatus:
        # Poll the query until the condition holds; the deadline bounds the test.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:
            status = await handle.query(PreviewEnvironmentWorkflow.status)
            if predicate(status):
                return status
            if loop.time() > deadline:
                raise AssertionError(f"condition not reached; last status {status}")
            await asyncio.sleep(0.05)
