"""Temporal visibility as a system the orphan sweeper asks: which previews are alive."""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client

from domain.contract import LIVE_ENVIRONMENTS
from domain.naming import environment_id


class VisibilityActivities:
    def __init__(self, client: Client | None = None) -> None:
        self._client = client  # None: the client of the worker running the activity

    @activity.defn(name=LIVE_ENVIRONMENTS.name)
    async def live_environments(self) -> list[str]:
        """Environment ids of every preview workflow that is still running."""
        client = self._client or activity.client()
        live: set[str] = set()
        query = "WorkflowType = 'PreviewEnvironmentWorkflow' AND ExecutionStatus = 'Running'"
        async for execution in client.list_workflows(query):
            attributes = execution.search_attributes
            repository = attributes.get("PreviewRepository")
            number = attributes.get("PreviewPullRequest")
            if repository and number:
                live.add(environment_id(str(repository[0]), int(str(number[0]))))
            activity.heartbeat()
        return sorted(live)
