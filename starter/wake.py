"""Waking a sleeping preview by opening its URL.

A sleeping preview has no pods, so its Service has no endpoints and the ingress
controller has no route for its host. Requests for it fall to the controller's default
backend, which is this route (`/preview-wake` + the original path, the Host header
kept): it finds the preview that owns the host, signals `wake`, and answers a page that
says so and reloads itself until the preview answers again. Okteto's users get the same.
"""

from __future__ import annotations

import html
import logging
import re
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from domain.naming import DEFAULT_BACKEND_HEADER
from workflows.preview import PreviewEnvironmentWorkflow, PreviewState

log = logging.getLogger(__name__)
router = APIRouter(tags=["wake"])
PREFIX = "/preview-wake"
# `<app>-pr-<n>.<domain>` (domain.naming.hostname): the PR number narrows the search.
PREVIEW_HOST = re.compile(r"^[a-z0-9-]+-pr-(\d{1,9})\.[a-z0-9.-]+$")
REFRESH_SECONDS = 2


def page(title: str, message: str, *, refresh: bool) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    return (f'<!doctype html><html><head><meta charset="utf-8">{meta}'
            f"<title>{html.escape(title)}</title></head>"
            '<body style="font-family: sans-serif; margin: 3em">'
            f'<h1 id="wake-title">{html.escape(title)}</h1>'
            f'<p id="wake-message">{html.escape(message)}</p></body></html>')


async def wake_for_host(client: Client, host: str) -> PreviewState | None:
    """Wake the running preview whose URLs hold `host` (if it sleeps); its state, or None
    when no running preview serves that host."""
    match = PREVIEW_HOST.match(host)
    if match is None:
        return None
    query = ("WorkflowType = 'PreviewEnvironmentWorkflow' AND ExecutionStatus = 'Running' "
             f"AND PreviewPullRequest = {int(match.group(1))}")
    async for execution in client.list_workflows(query):
        handle = client.get_workflow_handle_for(PreviewEnvironmentWorkflow.run, execution.id,
                                                run_id=execution.run_id)
        try:
            status = await handle.query(PreviewEnvironmentWorkflow.status)
            if host not in {urlsplit(url).hostname for url in status.urls.values()}:
                continue
            if status.state == PreviewState.sleeping:
                await handle.signal(PreviewEnvironmentWorkflow.wake)
                log.info("woke %s: a request for %s", execution.id, host)
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                continue  # it ended since it was listed
            raise
        return status.state
    return None


@router.get(PREFIX + "/{path:path}", response_class=HTMLResponse,
            responses={202: {"description": "The preview is waking up (or starting)"},
                       404: {"description": "No running preview serves this host"}})
async def wake_on_request(request: Request, path: str) -> HTMLResponse:
    """The ingress controller's default backend: a request for a sleeping preview."""
    host = (request.headers.get("x-forwarded-host") or request.headers.get("host") or "")
    hostname = host.rsplit(":", 1)[0].lower() if not host.startswith("[") else ""
    state = await wake_for_host(request.app.state.temporal, hostname)
    # Marked, so that the engine's check of a new preview's URL knows it is not the app.
    headers = {"Cache-Control": "no-store", DEFAULT_BACKEND_HEADER: "wake"}
    if state is None:
        return HTMLResponse(page("No preview here", f"No running preview serves {hostname}.",
                                 refresh=False), status_code=404, headers=headers)
    message = ("It was asleep and is waking up: this page reloads by itself until it is back."
               if state == PreviewState.sleeping else
               f"It is {state.value}: this page reloads by itself until it answers.")
    # 202: accepted, on its way; not an error for the person, nor for a monitor.
    return HTMLResponse(page("This preview is waking up", message, refresh=True),
                        status_code=202, headers={**headers, "Retry-After": str(REFRESH_SECONDS)})
