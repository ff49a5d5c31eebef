"""The starter service: Git host webhooks in, Temporal workflow starts and signals out.

Also serves the remote codec the Temporal Web UI calls to show decoded payloads to an
operator who opts in, and the control-plane HTTP API.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import Iterable
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from google.protobuf import json_format
from pydantic import BaseModel
from temporalio.api.common.v1 import Payloads
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from engine.codec import CodecError
from engine.codec_auth import CodecAccessDenied, CodecGate, IssuerUnavailable, same_secret
from engine.settings import Settings
from starter import lifecycle
from starter.api import router as api_router
from starter.bodies import InvalidBody, parse_json
from starter.events import (
    INSTALLATION_EVENTS,
    WAKE_EVENTS,
    Deploy,
    Destroy,
    Ignore,
    Operation,
    PayloadError,
    WakeWaiting,
    github_installation_change,
    github_operation,
    github_wake,
    gitlab_operation,
)
from starter.metrics import CONTENT_TYPE, RequestTimer, StarterMetrics, counted_webhook
from starter.metrics import of as metrics_of
from starter.wake import router as wake_router
from workflows.preview import PreviewEnvironmentWorkflow
from workflows.saga import ActivityTimeouts

log = logging.getLogger("preview.starter")


class DeliveryLog(Protocol):
    """Where webhook deliveries are remembered, so a redelivery is not acted on twice."""

    async def record_delivery(self, delivery_id: str, event: str) -> bool: ...

    async def set_delivery_outcome(self, delivery_id: str, outcome: str) -> None: ...

    async def forget_delivery(self, delivery_id: str) -> None: ...


class InstallationCache(Protocol):
    """What a GitHub App caches per installation and repository (activities/github_app.py)."""

    def forget(self, *, installation_id: int | None = None,
               repositories: Iterable[str] = ()) -> None: ...


class WebhookAnswer(BaseModel):
    outcome: str  # deployed | destroyed | ignored | duplicate | pong | installation | woken
    detail: str = ""
    workflow_id: str | None = None
    woken: int | None = None  # previews asked to look for their images again


class ServiceUnavailable(Exception):
    """A dependency (Temporal, the store) is down: answer 503 so the Git host retries."""


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body of {declared} bytes exceeds the limit of {limit}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"body exceeds the limit of {limit} bytes")
    return body


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        payload = parse_json(body)
    except InvalidBody as error:
        raise HTTPException(400, str(error)) from None
    if not isinstance(payload, dict):
        raise HTTPException(400, "body must be a JSON object")
    return payload


async def _act(
    request: Request, operation: Operation, delivery_id: str, event: str
) -> WebhookAnswer:
    app = request.app
    settings: Settings = app.state.settings
    deliveries: DeliveryLog = app.state.deliveries
    try:
        if not await deliveries.record_delivery(delivery_id, event):
            return WebhookAnswer(outcome="duplicate", detail=f"delivery {delivery_id} seen before")
    except Exception as error:  # the store is down: let the Git host redeliver later
        log.warning("delivery log unavailable: %s", type(error).__name__)
        raise ServiceUnavailable("delivery log unavailable") from error

    client: Client = app.state.temporal
    try:
        answer = await _operate(client, settings, app.state.timeouts, operation)
    except RPCError as error:
        # Nothing happened: forget the delivery so a redelivery is acted on.
        with contextlib.suppress(Exception):
            await deliveries.forget_delivery(delivery_id)
        if error.status in (RPCStatusCode.INVALID_ARGUMENT, RPCStatusCode.FAILED_PRECONDITION):
            # Temporal refused what the payload made (an id or a size past its limits):
            # redelivering cannot help, so say so instead of asking for a retry.
            raise HTTPException(400, f"Temporal refused this event: {error.message}") from None
        log.warning("temporal unavailable: %s", error.status)
        raise ServiceUnavailable("temporal unavailable") from error
    with contextlib.suppress(Exception):  # bookkeeping only
        await deliveries.set_delivery_outcome(delivery_id, answer.outcome)
    log.info("delivery %s (%s): %s %s", delivery_id, event, answer.outcome, answer.detail)
    return answer


async def _operate(
    client: Client, settings: Settings, timeouts: ActivityTimeouts, operation: Operation
) -> WebhookAnswer:
    if isinstance(operation, Deploy):
        pr = operation.pull_request
        handle = await lifecycle.deploy(
            client,
            pr,
            task_queue=settings.task_queue,
            timeouts=timeouts,
            resource_check_seconds=settings.resource_check_minutes * 60,
        )
        return WebhookAnswer(
            outcome="deployed", workflow_id=handle.id, detail=f"deploy {pr.head_sha[:7]}"
        )
    if isinstance(operation, Destroy):
        pr = operation.pull_request
        if await lifecycle.destroy(client, pr.repository, pr.number, operation.reason):
            return WebhookAnswer(outcome="destroyed", detail=operation.reason)
        return WebhookAnswer(outcome="ignored", detail="no preview is running for this PR")
    return WebhookAnswer(outcome="ignored", detail=operation.reason)


webhooks = APIRouter(prefix="/webhooks", tags=["webhooks"])


class ErrorBody(BaseModel):
    detail: str | list[Any]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    meaning = {
        400: "malformed body, or a payload the lifecycle cannot accept (says which field)",
        401: "signature, token or codec token missing or wrong: nothing was started",
        413: "body larger than PREVIEW_WEBHOOK_MAX_BYTES",
        503: "Temporal or the store is unavailable: retry (Retry-After)",
    }
    return {code: {"model": ErrorBody, "description": meaning[code]} for code in codes}


WEBHOOK_ERRORS = _errors(400, 401, 413, 503)


@webhooks.post("/github", response_model=WebhookAnswer, status_code=202,
               responses=WEBHOOK_ERRORS)
@counted_webhook("github", "x_github_event", unavailable=ServiceUnavailable)
async def github_webhook(
    request: Request,
    x_github_event: Annotated[str, Header()],
    x_github_delivery: Annotated[str, Header(max_length=128)],
    x_hub_signature_256: Annotated[str | None, Header()] = None,
) -> WebhookAnswer:
    settings: Settings = request.app.state.settings
    body = await _read_body(request, settings.webhook_max_bytes)
    secret = settings.github_webhook_secret.get_secret_value().encode()
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    if not x_hub_signature_256 or not same_secret(expected, x_hub_signature_256):
        log.warning("delivery %s: signature missing or wrong", x_github_delivery)
        metrics_of(request).signature_failed("github")
        raise HTTPException(401, "X-Hub-Signature-256 is missing or does not match the body")
    payload = _parse_json(body)
    if x_github_event == "ping":
        return WebhookAnswer(outcome="pong", detail=str(payload.get("zen", "")))
    if x_github_event in INSTALLATION_EVENTS:
        return _installation_changed(request, x_github_event, payload)
    if x_github_event in WAKE_EVENTS:
        return await _wake_waiting(request, x_github_event, payload)
    try:
        operation = github_operation(x_github_event, payload)
    except PayloadError as error:
        raise HTTPException(400, f"{x_github_event} payload: {error}") from None
    return await _act(request, operation, x_github_delivery, x_github_event)


def _installation_changed(request: Request, event: str, payload: dict[str, Any]) -> WebhookAnswer:
    """Drop what is cached for the installation and repositories the event names; nothing
    is started, so a redelivery does no harm and deliveries are not recorded."""
    try:
        change = github_installation_change(event, payload)
    except PayloadError as error:
        raise HTTPException(400, f"{event} payload: {error}") from None
    cache: InstallationCache | None = request.app.state.installations
    if cache is not None:
        cache.forget(installation_id=change.installation_id, repositories=change.repositories)
    dropped = "cached ids and tokens dropped" if cache is not None else "no GitHub App cache here"
    detail = (f"installation {change.installation_id} {change.action}, repositories named: "
              f"{len(change.repositories)}; {dropped}")
    log.info("%s event: %s", event, detail)
    return WebhookAnswer(outcome="installation", detail=detail)


async def _wake_waiting(request: Request, event: str, payload: dict[str, Any]) -> WebhookAnswer:
    """Signal `recheck` to the running previews the event may concern. A redelivery only
    makes them ask their registry once more, so deliveries are not recorded."""
    try:
        wake = github_wake(event, payload)
    except PayloadError as error:
        raise HTTPException(400, f"{event} payload: {error}") from None
    if isinstance(wake, Ignore):
        return WebhookAnswer(outcome="ignored", detail=wake.reason)
    try:
        woken = await wake_previews(request.app.state.temporal, wake)
    except RPCError as error:
        log.warning("temporal unavailable: %s", error.status)
        raise ServiceUnavailable("temporal unavailable") from error
    detail = f"{wake.reason}: {woken} running preview(s) of {wake.repository} asked to recheck"
    log.info("%s event: %s", event, detail)
    return WebhookAnswer(outcome="woken", detail=detail, woken=woken)


def wake_query(wake: WakeWaiting) -> str:
    """The visibility query for the running previews a wake concerns (the event's fields
    were checked against strict patterns, so they are safe to quote)."""
    query = ("WorkflowType = 'PreviewEnvironmentWorkflow' AND ExecutionStatus = 'Running' "
             f"AND PreviewRepository = '{wake.repository.lower()}'")
    # HEAD_SHA is the deployed commit: a redeploy waiting for a new commit's image is
    # found by its pull request number instead (absent for forks: the timer finds it).
    narrow = [f"PreviewHeadSha = '{wake.head_sha}'"] if wake.head_sha else []
    narrow += [f"PreviewPullRequest = {number}" for number in wake.pull_requests]
    return f"{query} AND ({' OR '.join(narrow)})" if narrow else query


async def wake_previews(client: Client, wake: WakeWaiting) -> int:
    """Signal `recheck` to each running preview `wake` concerns; how many got it."""
    woken = 0
    async for execution in client.list_workflows(wake_query(wake)):
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        try:
            await handle.signal(PreviewEnvironmentWorkflow.recheck)
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                continue  # it ended since it was listed
            raise
        woken += 1
    return woken


@webhooks.post("/gitlab", response_model=WebhookAnswer, status_code=202,
               responses=WEBHOOK_ERRORS)
@counted_webhook("gitlab", "x_gitlab_event", unavailable=ServiceUnavailable)
async def gitlab_webhook(
    request: Request,
    x_gitlab_event: Annotated[str, Header()],
    x_gitlab_token: Annotated[str | None, Header()] = None,
    x_gitlab_event_uuid: Annotated[str | None, Header(max_length=128)] = None,
) -> WebhookAnswer:
    settings: Settings = request.app.state.settings
    body = await _read_body(request, settings.webhook_max_bytes)
    token = settings.gitlab_webhook_token.get_secret_value()
    if not x_gitlab_token or not same_secret(token, x_gitlab_token):
        metrics_of(request).signature_failed("gitlab")
        raise HTTPException(401, "X-Gitlab-Token is missing or wrong")
    payload = _parse_json(body)
    try:
        operation = gitlab_operation(x_gitlab_event, payload)
    except PayloadError as error:
        raise HTTPException(400, f"{x_gitlab_event} payload: {error}") from None
    # Older GitLab versions send no event UUID: fall back to the body's digest.
    delivery = x_gitlab_event_uuid or "gitlab-" + hashlib.sha256(body).hexdigest()
    return await _act(request, operation, delivery, x_gitlab_event)


codec = APIRouter(prefix="/codec", tags=["codec"])


async def _codec_caller(request: Request) -> None:
    gate: CodecGate = request.app.state.codec_gate
    try:
        caller = await gate.admit(request.headers, request.url.hostname or "")
    except CodecAccessDenied as refusal:
        log.info("codec request refused (%s mode): %s", gate.mode, refusal)
        raise HTTPException(401, str(refusal), headers={"WWW-Authenticate": "Bearer"}) from None
    except IssuerUnavailable as error:
        log.warning("codec request not checked: %s", error)
        raise ServiceUnavailable(str(error)) from error
    log.debug("codec request from %s", caller)


async def _transcode(request: Request, direction: str) -> Response:
    payloads = Payloads()
    try:
        json_format.Parse(await request.body(), payloads)
    except (json_format.ParseError, UnicodeDecodeError) as error:
        raise HTTPException(400, f"body is not a Payloads JSON object: {error}") from None
    codec_impl = request.app.state.codec
    try:
        result = await (codec_impl.encode if direction == "encode" else codec_impl.decode)(
            list(payloads.payloads)
        )
    except CodecError as error:
        raise HTTPException(400, str(error)) from None
    return Response(
        json_format.MessageToJson(Payloads(payloads=result)), media_type="application/json"
    )


@codec.post("/encode", dependencies=[Depends(_codec_caller)], responses=_errors(400, 401))
async def codec_encode(request: Request) -> Response:
    return await _transcode(request, "encode")


@codec.post("/decode", dependencies=[Depends(_codec_caller)], responses=_errors(400, 401))
async def codec_decode(request: Request) -> Response:
    return await _transcode(request, "decode")


def create_app(
    settings: Settings,
    temporal: Client,
    deliveries: DeliveryLog,
    *,
    store: Any = None,
    sealer: Any = None,
    timeouts: ActivityTimeouts | None = None,
    installations: InstallationCache | None = None,
    metrics: StarterMetrics | None = None,
) -> FastAPI:
    app = FastAPI(title="preview-engine", version="0.1.0")
    app.state.settings = settings
    app.state.temporal = temporal
    app.state.deliveries = deliveries
    app.state.store = store
    app.state.sealer = sealer
    app.state.timeouts = timeouts or ActivityTimeouts()
    app.state.installations = installations
    app.state.codec = temporal.data_converter.payload_codec
    app.state.codec_gate = CodecGate(settings)
    app.state.metrics = metrics or StarterMetrics(temporal)
    # What the Web UI's codec fetch sends: JSON with X-Namespace, plus Authorization (and
    # the ID token in Authorization-Extras) when it passes the access token; credentials
    # (a proxy's cookie) when TEMPORAL_CODEC_INCLUDE_CREDENTIALS is on. One origin, exact.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=[settings.codec_cors_origin],
        allow_methods=["POST"],
        allow_headers=["Authorization", "Authorization-Extras", "Content-Type", "X-Namespace"],
        allow_credentials=True,
        max_age=600,
    )

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(_: Request, error: ServiceUnavailable) -> Response:
        return Response(
            json.dumps({"detail": f"{error}; retry later"}),
            status_code=503,
            media_type="application/json",
            headers={"Retry-After": "5"},
        )

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # Like /healthz, no credentials: counts only, no label holds a secret or a name.
    # Prometheus' text format, not part of the OpenAPI.
    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        return Response(await app.state.metrics.exposition(), media_type=CONTENT_TYPE)

    # Outermost of the app's middleware: times every answer, CORS preflights included.
    app.add_middleware(RequestTimer, metrics=app.state.metrics)

    app.include_router(webhooks)
    app.include_router(wake_router)
    app.include_router(codec)
    app.include_router(api_router, prefix="/api")
    return app
