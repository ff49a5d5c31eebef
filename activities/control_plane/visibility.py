"""Temporal as a system the orphan sweeper asks: which previews are alive (the visibility
list), and whether a given preview workflow runs (by id)."""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from domain.contract import LIVE_ENVIRONMENTS, RUNNING_PREVIEWS
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

    @activity.defn(name=RUNNING_PREVIEWS.name)
    async def running_previews(self, workflow_ids: list[str]) -> list[str]:
        """Those of these workflows whose latest run is running, each asked for by id: the
        answer cannot lag behind a start, as a visibility list can. Any error but "not
        found" fails the activity, so the sweeper removes nothing it could not check."""
        client = self._client or activity.client()
        running = []
        for workflow_id in workflow_ids:
            try:
                described = await client.get_workflow_handle(workflow_id).describe()
            except RPCError as error:
                if error.status == RPCStatusCode.NOT_FOUND:
                    continue
                raise
            if described.status == WorkflowExecutionStatus.RUNNING:
                running.append(workflow_id)
            activity.heartbeat()
        return running
