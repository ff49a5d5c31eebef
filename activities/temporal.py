"""Temporal visibility as a system the orphan sweeper asks: which previews are alive."""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client

from domain.naming import environment_id


class VisibilityActivities:
    def __init__(self, client: Client) -> None:
        self.client = client

    @activity.defn(name="live_environments")
    async def live_environments(self) -> list[str]:
        """Environment ids of every preview workflow that is still running."""
        live: set[str] = set()
        query = "WorkflowType = 'PreviewEnvironmentWorkflow' AND ExecutionStatus = 'Running'"
        async for execution in self.client.list_workflows(query):
            attributes = execution.search_attributes
            repository = attributes.get("PreviewRepository")
            number = attributes.get("PreviewPullRequest")
            if repository and number:
                live.add(environment_id(str(repository[0]), int(str(number[0]))))
            activity.heartbeat()
        return sorted(live)
