"""One preview environment, from the first commit of a pull request to its teardown.

    deploy(pr) ─► load the source environment ─► plan ─► apply the plan as a saga
                                                     │ failure: undo, report
    wait for: deploy · destroy · extend_ttl · sleep · wake · TTL and inactivity timers
    destroy    ─► undo every step, newest first ─► report ─► done
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    # Loaded with the workflow, not later by pydantic inside the sandbox (which warns).
    import domain.secrets
    import domain.variables  # noqa: F401
    from domain.blueprint import PreviewPolicy
    from domain.contract import (
        LIST_CHANGED_FILES,
        LOAD_SOURCE_ENVIRONMENT,
        PLAN_PREVIEW,
        PUBLISH_FEEDBACK,
        READ_REPOSITORY_FILE,
        READ_REPOSITORY_FOLDER,
        ActivityContract,
    )
    from domain.errors import NON_RETRYABLE
    from domain.feedback import (
        ChangedFilesRequest,
        Feedback,
        RepositoryFileRequest,
        RepositoryFolder,
        RepositoryFolderRequest,
        TeardownReceipt,
    )
    from domain.migration import MigrationReport
    from domain.naming import environment_id
    from domain.plan import PlanRequest, Step
    from domain.policy import filters_paths, skip_reason
    from domain.pull_request import PullRequest
    from domain.resources import StepInput
    from domain.source import LoadSourceRequest
    from workflows.metrics import OperationClock
    from workflows.receipt import teardown_receipt
    from workflows.saga import ActivityTimeouts, Ledger, SagaRunner, StepFailed, failure_message

REPOSITORY = SearchAttributeKey.for_keyword("PreviewRepository")
PR_NUMBER = SearchAttributeKey.for_int("PreviewPullRequest")
STATE = SearchAttributeKey.for_keyword("PreviewState")
HEAD_SHA = SearchAttributeKey.for_keyword("PreviewHeadSha")
SEARCH_ATTRIBUTES = (REPOSITORY, PR_NUMBER, STATE, HEAD_SHA)


class PreviewState(StrEnum):
    creating = "creating"
    ready = "ready"
    updating = "updating"
    sleeping = "sleeping"
    failed = "failed"
    destroying = "destroying"
    destroyed = "destroyed"
    skipped = "skipped"  # the policy says this PR gets no preview; nothing was made
    degraded = "degraded"  # something it made is gone (removed behind its back): a deploy
    # puts it back


class DestroyRequest(BaseModel):
    reason: str = "requested"


class CarriedState(BaseModel):
    """Everything the workflow knows, carried across continue-as-new."""

    state: PreviewState = PreviewState.creating
    pull_request: PullRequest
    deployed_sha: str | None = None
    ledger: Ledger = Field(default_factory=Ledger)
    policy: PreviewPolicy | None = None
    expires_at: datetime | None = None
    last_activity: datetime | None = None
    urls: dict[str, str] = Field(default_factory=dict)
    last_error: str | None = None
    pending: PullRequest | None = None
    destroy_reason: str | None = None
    checked_at: datetime | None = None  # when its resources were last found there


class PreviewInput(BaseModel):
    """What starts a preview's workflow. Deployment facts (cluster, ingress, registry)
    are not here: the planning activity reads them from its worker's settings."""

    pull_request: PullRequest
    timeouts: ActivityTimeouts = ActivityTimeouts()
    history_limit: int = Field(
        10_000, description="Continue as new past this many events, or when the server says"
    )
    resource_check_seconds: float = Field(
        600, ge=0, description="How often a ready preview checks that what it made is still "
                               "there (0: never)")
    carried: CarriedState | None = None


class PreviewStatus(BaseModel):
    environment_id: str
    state: PreviewState
    head_sha: str | None
    steps_done: int
    steps_total: int
    urls: dict[str, str]
    last_error: str | None
    expires_at: datetime | None
    asleep: bool
    resources: list[str] = Field(default_factory=list, description="What exists, one line each")
    waiting: list[str] = Field(default_factory=list, description="Steps waiting, and for what")
    receipt: TeardownReceipt | None = None
    migrations: list[MigrationReport] = Field(
        default_factory=list, description="The migration report of each deploy job's last run")


_FEEDBACK_RETRY = RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=30))


@workflow.defn
class PreviewEnvironmentWorkflow:
    @workflow.init
    def __init__(self, input: PreviewInput) -> None:
        self._input = input
        self._s = input.carried or CarriedState(pull_request=input.pull_request)
        self._env_id = environment_id(input.pull_request.repository, input.pull_request.number)
        self._saga = SagaRunner(self._s.ledger, input.timeouts, on_waiting=self._on_waiting)
        self._waiting: dict[str, str] = {}  # step key → what it waits for
        self._receipt: TeardownReceipt | None = None
        self._wake_requested = False
        self._sleep_requested = False
        self._winding_down = False  # about to continue as new
        self._clock = OperationClock()  # metrics: create/redeploy/teardown durations
        self._check_due = False
        self._checks = False  # patch "resource-check": runs before it replay without checks

    # -- messages -----------------------------------------------------------------

    @workflow.signal
    def deploy(self, pr: PullRequest) -> None:
        """Deploy this commit; a burst coalesces into its newest commit."""
        newest = self._s.pending or self._s.pull_request
        if pr.updated_at and newest.updated_at and pr.updated_at < newest.updated_at:
            return  # a reordered, older delivery
        if self._s.deployed_sha == pr.head_sha and self._s.state == PreviewState.ready:
            self._s.pull_request = pr
            return
        self._s.pending = pr
        self._s.last_activity = workflow.now()

    @workflow.update
    async def deploy_and_wait(self, pr: PullRequest) -> PreviewStatus:
        """Like the deploy signal, but answers once that commit is live (or failed)."""
        self.deploy(pr)
        await workflow.wait_condition(
            lambda: self._s.pending is None
            and self._s.state not in (PreviewState.creating, PreviewState.updating)
        )
        return self.status()

    @deploy_and_wait.validator
    def _validate_deploy(self, pr: PullRequest) -> None:
        if (pr.repository.lower(), pr.number) != (
            self._input.pull_request.repository.lower(), self._input.pull_request.number
        ):
            raise ValueError(f"this workflow serves {self._input.pull_request.repository}"
                             f"#{self._input.pull_request.number}, not {pr.repository}#{pr.number}")
        if self._s.destroy_reason is not None:
            raise ValueError("the environment is being destroyed")
        if self._winding_down:
            raise ValueError("this run is continuing as new or finishing: retry the update "
                             "in a moment")

    @workflow.signal
    def destroy(self, request: DestroyRequest) -> None:
        self._s.destroy_reason = self._s.destroy_reason or request.reason
        self._s.pending = None

    @workflow.signal
    def extend_ttl(self, hours: int) -> None:
        if self._s.expires_at is not None and hours > 0:
            self._s.expires_at += timedelta(hours=hours)

    @workflow.update
    async def extend(self, hours: int) -> PreviewStatus:
        self.extend_ttl(hours)
        return self.status()

    @extend.validator
    def _validate_extend(self, hours: int) -> None:
        if not 1 <= hours <= 24 * 30:
            raise ValueError(f"hours must be between 1 and 720, got {hours}")

    @workflow.signal
    def recheck(self) -> None:
        """CI finished or a registry has a new image: waiting steps ask again now."""
        self._saga.wake()

    @workflow.signal
    def sleep(self) -> None:
        self._sleep_requested = True

    @workflow.signal
    def wake(self) -> None:
        self._wake_requested = True
        self._s.last_activity = workflow.now()

    @workflow.query
    def status(self) -> PreviewStatus:
        done, total = self._s.ledger.counts()
        return PreviewStatus(
            environment_id=self._env_id, state=self._s.state, head_sha=self._s.deployed_sha,
            steps_done=done, steps_total=total, urls=self._s.urls,
            last_error=self._s.last_error, expires_at=self._s.expires_at,
            asleep=self._s.state == PreviewState.sleeping,
            resources=self._s.ledger.resources(),
            waiting=list(self._waiting.values()), receipt=self._receipt,
            migrations=self._migrations(),
        )

    def _migrations(self) -> list[MigrationReport]:
        """The reports the deploy jobs' steps left in the ledger (jobs.py: values["report"])."""
        return [MigrationReport.model_validate(report)
                for entry in self._s.ledger.entries if entry.complete and entry.output
                and (text := entry.output.values.get("report"))
                for report in json.loads(text)]

    # -- the process --------------------------------------------------------------

    @workflow.run
    async def run(self, input: PreviewInput) -> PreviewStatus:
        self._publish_attributes()
        self._checks = workflow.patched("resource-check")
        if self._checks and self._s.state == PreviewState.ready and self._s.checked_at is None:
            self._s.checked_at = workflow.now()  # carried from a run that did not check
        try:
            while True:
                await self._wait_for_work()
                if self._s.destroy_reason is not None:
                    await self._destroy(self._s.destroy_reason)
                    if self._s.pending is None:
                        break
                    self._s = self._restart_after_destroy()
                elif self._s.pending is not None:
                    await self._deploy(self._s.pending)
                    if self._s.state == PreviewState.skipped and self._s.pending is None:
                        break
                elif self._sleep_requested or self._wake_requested:
                    await self._sleep_or_wake()
                elif self._check_due:
                    await self._check_resources()
                else:
                    self._check_timers()
                info = workflow.info()
                if (info.is_continue_as_new_suggested()
                        or info.get_current_history_length() >= input.history_limit):
                    # Keep history bounded: a long-lived preview starts a fresh run that
                    # carries everything it knows (ledger, deadlines, pending commit).
                    # From now on new updates are refused (callers retry on the next run);
                    # one already waiting for its deploy is served first, since only this
                    # loop can run that deploy.
                    self._winding_down = True
                    await workflow.wait_condition(
                        lambda: workflow.all_handlers_finished() or self._has_work())
                    if workflow.all_handlers_finished():
                        workflow.continue_as_new(input.model_copy(update={
                            "pull_request": self._s.pull_request, "carried": self._s}))
        except asyncio.CancelledError:
            # Cancelled from outside: nothing may be left behind. Shield the teardown
            # so a second cancellation cannot interrupt it.
            await asyncio.shield(asyncio.ensure_future(self._destroy("workflow cancelled")))
            raise
        self._winding_down = True  # no new update may wait for work this run won't do
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.status()

    def _restart_after_destroy(self) -> CarriedState:
        """A reopen that arrived while we were tearing down: build again from scratch."""
        pending = self._s.pending
        assert pending is not None
        return CarriedState(pull_request=pending, pending=pending, ledger=self._s.ledger)

    def _has_work(self) -> bool:
        return (self._s.destroy_reason is not None or self._s.pending is not None
                or self._sleep_requested or self._wake_requested or self._check_due)

    async def _wait_for_work(self) -> None:
        timeout = self._seconds_to_next_timer()
        with contextlib.suppress(TimeoutError):  # a timer is due: _check_timers handles it
            await workflow.wait_condition(
                self._has_work, timeout=timedelta(seconds=timeout) if timeout is not None else None
            )

    def _deadlines(self) -> dict[str, datetime]:
        s, policy = self._s, self._s.policy
        if policy is None or s.state in (PreviewState.creating, PreviewState.destroyed):
            return {}
        deadlines: dict[str, datetime] = {}
        if s.expires_at:
            deadlines["time-to-live expired"] = s.expires_at
        if s.last_activity:
            deadlines[f"no activity for {policy.inactivity_hours} h"] = (
                s.last_activity + timedelta(hours=policy.inactivity_hours))
            if policy.sleep_after_idle_hours and s.state == PreviewState.ready:
                deadlines["idle"] = s.last_activity + timedelta(
                    hours=policy.sleep_after_idle_hours)
        every = self._input.resource_check_seconds
        if self._checks and every and s.state == PreviewState.ready and s.checked_at:
            deadlines["check"] = s.checked_at + timedelta(seconds=every)
        return deadlines

    def _seconds_to_next_timer(self) -> float | None:
        deadlines = self._deadlines()
        if not deadlines:
            return None
        return max(0.0, (min(deadlines.values()) - workflow.now()).total_seconds())

    def _check_timers(self) -> None:
        now = workflow.now()
        for reason, at in sorted(self._deadlines().items(), key=lambda kv: kv[1]):
            if at > now:
                continue
            if reason == "idle":
                self._sleep_requested = True
            elif reason == "check":
                self._check_due = True
            else:
                self._s.destroy_reason = reason
            return

    # -- deploy -------------------------------------------------------------------

    async def _deploy(self, pr: PullRequest) -> None:
        self._s.pending = None
        first = not self._s.ledger.entries
        asleep = self._s.state == PreviewState.sleeping
        self._set_state(PreviewState.creating if first else PreviewState.updating)
        self._s.pull_request = pr
        self._s.last_error = None
        await self._feedback()
        try:
            source = await workflow.execute_activity(
                LOAD_SOURCE_ENVIRONMENT.name,
                LoadSourceRequest(repository=pr.repository),
                result_type=LOAD_SOURCE_ENVIRONMENT.output,
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=RetryPolicy(maximum_attempts=5,
                                         non_retryable_error_types=NON_RETRYABLE),
                summary=f"load the source environment of {pr.repository}",
            )
            policy = source.blueprint.policy
            changed = None
            # Runs that began before path filters replay as they ran (no such call).
            if (filters_paths(policy, source.blueprint.applications)
                    and workflow.patched("path-filters")):
                changed = await self._changed_files(pr)
            if (reason := skip_reason(policy, pr, changed)) is not None:
                if first and workflow.patched("skipped-state"):
                    self._set_state(PreviewState.skipped)
                    await self._feedback(message=f"no preview: {reason}")
                    return
                self._s.destroy_reason = f"no preview: {reason}"
                return
            if self._s.policy is None or self._s.expires_at is None:
                self._s.expires_at = workflow.now() + timedelta(hours=policy.ttl_hours)
            self._s.policy = policy
            compose = None
            # The PR's own Compose file, so a PR that changes it previews the change.
            if source.blueprint.compose is not None and workflow.patched("compose-file"):
                compose = await self._repository_file(pr, source.blueprint.compose.path)
            # Charts of the PR's repository, at its head: a PR that changes one previews it.
            folders: dict[str, RepositoryFolder] = {}
            paths = {c.name: c.path for c in source.blueprint.charts if c.path is not None}
            if paths and workflow.patched("chart-folders"):
                folders = await self._chart_folders(pr, paths)
            plan = await workflow.execute_local_activity(
                PLAN_PREVIEW.name,
                PlanRequest(source=source, pull_request=pr, changed_files=changed,
                            compose=compose, chart_folders=folders),
                result_type=PLAN_PREVIEW.output,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=3,
                                         non_retryable_error_types=NON_RETRYABLE),
                summary="plan the preview",
            )
            await self._saga.apply(plan)
            if asleep:  # a commit wakes a sleeping preview: unchanged steps were skipped
                await self._scale("wake")
        # A local activity's failure (planning: a blueprint that cannot be planned for
        # this commit) arrives as the ApplicationError itself, not wrapped.
        except (StepFailed, ActivityError, ApplicationError) as error:
            message = error.args[0] if isinstance(error, StepFailed) else failure_message(error)
            self._s.last_error = str(message)
            workflow.logger.warning("deploy of %s failed: %s", pr.head_sha, self._s.last_error)
            self._set_state(PreviewState.failed if first else self._after_failed_update())
            await self._feedback(failed=True)
            return
        self._s.deployed_sha = pr.head_sha
        self._s.urls = dict(plan.urls)
        workflow.upsert_memo({"urls": self._s.urls})
        self._set_state(PreviewState.ready)
        await self._feedback()

    def _after_failed_update(self) -> PreviewState:
        """The previous commit still runs: ready, unless something it had is still gone
        (the update was to put it back)."""
        missing = any(not entry.complete for entry in self._s.ledger.entries)
        return PreviewState.degraded if self._checks and missing else PreviewState.ready

    async def _changed_files(self, pr: PullRequest) -> list[str]:
        files: list[str] = await self._ask_git_host(
            LIST_CHANGED_FILES, ChangedFilesRequest(provider=pr.provider,
                                                    repository=pr.repository,
                                                    pr_number=pr.number),
            timedelta(minutes=2), f"list the files {pr.repository}#{pr.number} changes")
        return files

    async def _repository_file(self, pr: PullRequest, path: str) -> str:
        text: str = await self._ask_git_host(
            READ_REPOSITORY_FILE, RepositoryFileRequest(provider=pr.provider,
                                                        repository=pr.repository, path=path,
                                                        ref=pr.head_sha),
            timedelta(minutes=1), f"read {path} at {pr.head_sha[:12]}")
        return text

    async def _chart_folders(self, pr: PullRequest, paths: dict[str, str],
                             ) -> dict[str, RepositoryFolder]:
        """Each chart's folder (chart name → path), read side by side."""
        read = await asyncio.gather(*(self._ask_git_host(
            READ_REPOSITORY_FOLDER, RepositoryFolderRequest(provider=pr.provider,
                                                            repository=pr.repository,
                                                            path=path, ref=pr.head_sha),
            timedelta(minutes=5), f"read the chart {name} from {path} at {pr.head_sha[:12]}",
            heartbeat=timedelta(minutes=1)) for name, path in paths.items()))
        return dict(zip(paths, read, strict=True))

    async def _ask_git_host(self, contract: ActivityContract, request: BaseModel,
                            timeout: timedelta, summary: str, *,
                            heartbeat: timedelta | None = None) -> Any:
        """One read of the PR's repository through the Git host; a person's error (no
        such file, no credentials) is not retried."""
        return await workflow.execute_activity(
            contract.name, request, result_type=contract.output,
            start_to_close_timeout=timeout, heartbeat_timeout=heartbeat,
            retry_policy=RetryPolicy(maximum_attempts=5, non_retryable_error_types=NON_RETRYABLE),
            summary=summary,
        )

    async def _on_waiting(self, step: Step, reason: str | None) -> None:
        """A step waits for something outside (an image CI has not pushed): say so on
        the pull request, once per change of what is awaited."""
        before = dict(self._waiting)
        if reason is None:
            self._waiting.pop(step.key, None)
        else:
            self._waiting[step.key] = reason
        if self._waiting != before and self._waiting:
            await self._feedback(message="; ".join(self._waiting.values()))

    # -- still there? -------------------------------------------------------------

    async def _check_resources(self) -> None:
        """Whether what the preview made is still there: an operator, a script or a
        sweeper may remove a database or a namespace behind its back. Then it says so
        (status and pull request) instead of staying ready, and marks those steps to be
        made again: the next deploy puts them back (and re-applies what depends on them)."""
        self._check_due = False
        self._s.checked_at = workflow.now()
        if self._s.state != PreviewState.ready:
            return
        checked = [entry.step for entry in self._s.ledger.entries if entry.complete
                   and (kind := type(entry.step.spec)).check is not None
                   and (kind.check_patch is None or workflow.patched(kind.check_patch))]
        answers = await asyncio.gather(*(self._still_there(step) for step in checked))
        gone = {step.key: why for step, why in zip(checked, answers, strict=True) if why}
        if not gone or self._has_work():  # a deploy or destroy came meanwhile: it decides
            return
        for key in gone:
            if (found := self._s.ledger.find(key)) is not None:
                self._s.ledger.put(found.model_copy(update={"complete": False}))
        pr = self._s.pull_request
        self._s.last_error = (
            f"{'; '.join(gone.values())}: removed behind the preview's back. A deploy puts it "
            f"back: push a commit, or `preview deploy {pr.repository} {pr.number} "
            f"{self._s.deployed_sha or pr.head_sha}`")
        workflow.logger.warning("preview %s degraded: %s", self._env_id, self._s.last_error)
        self._set_state(PreviewState.degraded)
        await self._feedback()

    async def _still_there(self, step: Step) -> str:
        """"" if the step's resource is there, or not known (a check that cannot run, or
        is not picked up within minutes, proves nothing); else what happened to it."""
        check = type(step.spec).check
        assert check is not None
        try:
            why: str = await workflow.execute_activity(
                check, StepInput(spec=step.spec), result_type=str,
                task_queue=step.task_queue or workflow.info().task_queue,
                schedule_to_close_timeout=timedelta(minutes=5),
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=RetryPolicy(maximum_attempts=3),
                summary=f"is {step.summary or step.key} still there?")
        except ActivityError as error:
            if is_cancelled_exception(error):
                raise  # the workflow is cancelled: its teardown must run
            workflow.logger.warning("could not check %s: %s", step.key, failure_message(error))
            return ""
        return why

    # -- sleep / wake -------------------------------------------------------------

    async def _sleep_or_wake(self) -> None:
        wake, self._wake_requested, self._sleep_requested = (
            self._wake_requested, False, False)
        if wake and self._s.state == PreviewState.sleeping:
            await self._scale("wake")
            self._set_state(PreviewState.ready)
        elif not wake and self._s.state == PreviewState.ready:
            await self._scale("sleep")
            self._set_state(PreviewState.sleeping)
        else:
            return
        await self._feedback()

    async def _scale(self, direction: str) -> None:
        for entry in self._s.ledger.entries:
            kind = type(entry.step.spec)
            activity = getattr(kind, direction, None)
            if activity is None or (kind.scale_patch and not workflow.patched(kind.scale_patch)):
                continue
            await workflow.execute_activity(
                activity, entry.step.spec,
                task_queue=entry.step.task_queue or workflow.info().task_queue,
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=self._input.timeouts.heartbeat_for(entry.step.spec),
                summary=f"{direction} {entry.step.summary}",
            )

    # -- destroy ------------------------------------------------------------------

    async def _destroy(self, reason: str) -> None:
        self._set_state(PreviewState.destroying)
        await self._feedback(message=f"destroying: {reason}")
        used = [entry.step for entry in self._s.ledger.entries]
        removed = self._s.ledger.resources()
        try:
            await self._saga.teardown()
        except StepFailed as error:
            # Keep what could not be removed in the ledger and wait for another destroy.
            self._s.last_error = str(error)
            self._s.destroy_reason = None
            self._set_state(PreviewState.failed)
            await self._feedback(failed=True)
            await workflow.wait_condition(lambda: self._s.destroy_reason is not None)
            return await self._destroy(self._s.destroy_reason or reason)
        self._s.destroy_reason = None
        self._s.urls = {}
        # Runs that began before receipts replay as they ran (no listings after teardown).
        if used and workflow.patched("teardown-receipt"):
            self._receipt = await teardown_receipt(self._env_id, used, removed)
        self._set_state(PreviewState.destroyed)
        await self._feedback(message=f"destroyed: {reason}")

    # -- reporting ----------------------------------------------------------------

    def _set_state(self, state: PreviewState) -> None:
        if self._checks and state == PreviewState.ready:
            self._s.checked_at = workflow.now()  # the next check is one interval away
        self._s.state = state
        self._clock.state_changed(state.value, self._s.last_error)
        self._publish_attributes()

    def _publish_attributes(self) -> None:
        pr = self._s.pull_request
        workflow.upsert_search_attributes([
            REPOSITORY.value_set(pr.repository.lower()),
            PR_NUMBER.value_set(pr.number),
            STATE.value_set(self._s.state.value),
            HEAD_SHA.value_set(self._s.deployed_sha or pr.head_sha),
        ])
        # Shown in the Web UI: the state, and what the preview is made of.
        resources = "".join(f"\n- {line}" for line in self._s.ledger.resources())
        workflow.set_current_details(
            f"**{self._s.state.value}** {pr.repository}#{pr.number} at {pr.head_sha[:7]}"
            + resources
        )

    async def _feedback(self, *, failed: bool = False, message: str = "") -> None:
        """Tell the pull request; feedback that cannot be delivered never fails the preview."""
        pr = self._s.pull_request
        feedback = Feedback(
            provider=pr.provider, repository=pr.repository, pr_number=pr.number,
            head_sha=pr.head_sha, state="failed" if failed else self._s.state.value,
            urls=self._s.urls, resources=self._s.ledger.resources(),
            message=message or (self._s.last_error or ""),
            receipt=self._receipt if self._s.state == PreviewState.destroyed else None,
            environment_id=self._env_id, migrations=self._migrations(),
        )
        try:
            await workflow.execute_activity(
                PUBLISH_FEEDBACK.name, feedback,
                start_to_close_timeout=timedelta(seconds=30), retry_policy=_FEEDBACK_RETRY,
                summary=f"tell {pr.repository}#{pr.number}: {feedback.state}",
            )
        except ActivityError as error:
            workflow.logger.warning("feedback not delivered: %s", failure_message(error))
