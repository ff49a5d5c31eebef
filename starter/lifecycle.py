"""Temporal operations on preview workflows, shared by the webhook service and the CLI."""

from __future__ import annotations

from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from domain.naming import workflow_id
from domain.pull_request import PullRequest
from workflows.preview import (
    PR_NUMBER,
    REPOSITORY,
    DestroyRequest,
    PreviewEnvironmentWorkflow,
    PreviewInput,
    PreviewStatus,
)
from workflows.saga import ActivityTimeouts


async def deploy(
    client: Client,
    pr: PullRequest,
    *,
    task_queue: str,
    timeouts: ActivityTimeouts | None = None,
    history_limit: int | None = None,
    resource_check_seconds: float | None = None,
) -> WorkflowHandle[PreviewEnvironmentWorkflow, PreviewStatus]:
    """Signal-with-start: the PR's one workflow gets `deploy`, started if it is not running."""
    given = {"history_limit": history_limit, "resource_check_seconds": resource_check_seconds}
    return await client.start_workflow(
        PreviewEnvironmentWorkflow.run,
        PreviewInput(pull_request=pr, timeouts=timeouts or ActivityTimeouts(),
                     **{name: value for name, value in given.items() if value is not None}),
        id=workflow_id(pr.repository, pr.number),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        start_signal="deploy",
        start_signal_args=[pr],
        search_attributes=TypedSearchAttributes([
            SearchAttributePair(REPOSITORY, pr.repository.lower()),
            SearchAttributePair(PR_NUMBER, pr.number),
        ]),
        static_summary=f"Preview of {pr.repository}#{pr.number}",
    )


async def destroy(client: Client, repository: str, number: int, reason: str) -> bool:
    """Ask the PR's workflow to tear down; False when no preview is running."""
    handle = client.get_workflow_handle(workflow_id(repository, number))
    try:
        await handle.signal(PreviewEnvironmentWorkflow.destroy, DestroyRequest(reason=reason))
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True
