"""The orphan sweeper: whatever carries our mark but belongs to no live preview goes.

Runs on a Temporal Schedule. It lists what every system holds under our ownership
marks (Kubernetes namespaces per cluster, AWS resources per target, preview databases),
compares with the environments whose workflow is still running, and removes the rest;
in dry-run mode it only reports. Which clusters and AWS targets to look at comes from
the request and, unless told otherwise, from every registered project's source
environment, so a tenant's dedicated cluster or account is swept without being listed.
A system that cannot be reached is reported and the others are still swept.

It must never be what destroys live work, so (since patch "sweep-safety") right before
removing an environment it asks Temporal, by workflow id, whether that environment's
preview runs; the removers themselves keep whatever is younger than the worker's grace
period (PREVIEW_SWEEP_GRACE_MINUTES), by the resource's own creation time; and a system
where it would remove more than `max_removals` environments, or more than
`max_removal_share` of what it found there, is held back whole unless `force` says so.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from domain.contract import (
        LIST_AWS_ENVIRONMENTS,
        LIST_KUBE_ENVIRONMENTS,
        LIST_PREVIEW_DATABASES,
        LIST_SWEEP_TARGETS,
        LIVE_ENVIRONMENTS,
        REMOVE_AWS_ENVIRONMENT,
        REMOVE_KUBE_ENVIRONMENT,
        REMOVE_PREVIEW_DATABASE,
        RUNNING_PREVIEWS,
        ActivityContract,
    )
    from domain.naming import preview_workflows
    from domain.resources import (
        AwsEnvironmentInput,
        AwsSweepInput,
        AwsTarget,
        KubeEnvironmentInput,
        KubeSweepInput,
        SweepTargets,
    )
    from domain.systems import tenant_queue
    from workflows.metrics import sweep_found, sweep_removed


# The share bound counts only past this many orphans: one leftover of two is no alarm.
SHARE_FLOOR = 3


class SweepRequest(BaseModel):
    dry_run: bool = True
    clusters: list[str] = Field(
        default_factory=lambda: ["default"],
        description="Clusters the lifecycle worker reaches (PREVIEW_KUBE_CONTEXTS)")
    dedicated_clusters: list[str] = Field(
        default_factory=list,
        description="Clusters of `isolation: cluster` tenants, swept by their own worker")
    aws_targets: list[AwsTarget] = Field(
        default_factory=list,
        description="AWS targets; one naming an account is swept by that account's worker")
    databases: bool = True
    discover: bool = Field(
        True, description="Also sweep every cluster and AWS target a project's source "
                          "environment names")
    tenant_timeout: timedelta = Field(
        timedelta(minutes=10),
        description="How long a tenant's step waits for that tenant's worker to pick it up "
                    "before the tenant is reported unreachable")
    max_removals: int = Field(
        25, ge=0, description="A system with more orphans than this is held back whole")
    max_removal_share: float = Field(
        0.5, gt=0, le=1, description="So is one where the orphans are more than this share "
        f"of the environments found there (when there are more than {SHARE_FLOOR})")
    force: bool = Field(False, description="Remove past both bounds (the operator said so)")


class SweepReport(BaseModel):
    dry_run: bool
    live: list[str]
    # system ("kubernetes:default", "aws:default:eu-west-1", "postgres") → env id → resources
    found: dict[str, dict[str, list[str]]] = Field(default_factory=dict)
    removed: dict[str, dict[str, list[str]]] = Field(default_factory=dict)
    # system → why it was not (completely) swept
    failed: dict[str, str] = Field(default_factory=dict)
    # system → env id → why an orphan found there was not removed (its preview runs, it is
    # younger than the grace period, or the bound held the system back)
    kept: dict[str, dict[str, str]] = Field(default_factory=dict)


T = TypeVar("T")


@workflow.defn
class OrphanSweepWorkflow:
    def __init__(self) -> None:
        self._tenant_timeout: timedelta | None = None
        self._request = SweepRequest()
        self._safe = False  # patch "sweep-safety": the checks before each removal
        self._repositories: list[str] | None = None  # None: could not be listed

    @workflow.run
    async def run(self, request: SweepRequest) -> SweepReport:
        self._tenant_timeout = request.tenant_timeout
        self._request = request
        live = await self._call(LIVE_ENVIRONMENTS, None, "list live previews")
        report = SweepReport(dry_run=request.dry_run, live=live)
        self._safe = workflow.patched("sweep-safety")
        given = SweepTargets(clusters=request.clusters,
                             dedicated_clusters=request.dedicated_clusters,
                             aws_targets=request.aws_targets)
        found = SweepTargets()
        # Sweeps that began before tenants were discovered and routed replay as they ran.
        routed = workflow.patched("sweep-tenants")
        if request.discover and routed:
            try:
                found = await self._call(LIST_SWEEP_TARGETS, None,
                                         "list clusters and AWS targets of every project")
                self._repositories = found.repositories
            except ActivityError as error:
                _reraise_cancellation(error)
                report.failed["discovery"] = _reason(error)  # sweep what was given
            if found.skipped:
                report.failed["discovery"] = "; ".join(found.skipped)
        if self._safe and not request.dry_run and self._repositories is None:
            # Each orphan's workflow is asked for by id: the repositories say which.
            try:
                self._repositories = (await self._call(
                    LIST_SWEEP_TARGETS, None, "list the projects' repositories")).repositories
            except ActivityError as error:
                _reraise_cancellation(error)
                report.failed["discovery"] = _reason(error)
        targets = _merge(given, found)

        # A tenant's cluster or account is reached only by that tenant's worker, as the
        # planner routes its steps; everything else runs on this workflow's own queue.
        base = workflow.info().task_queue if routed else None
        clusters = [(c, None) for c in targets.clusters] + [
            (c, tenant_queue(base, "cluster", c) if base else None)
            for c in targets.dedicated_clusters]
        for cluster, queue in clusters:
            await self._sweep(report, f"kubernetes:{cluster}", queue,
                              LIST_KUBE_ENVIRONMENTS, KubeSweepInput(cluster=cluster),
                              REMOVE_KUBE_ENVIRONMENT,
                              KubeEnvironmentInput(cluster=cluster, environment=""))
        for target in targets.aws_targets:
            queue = (tenant_queue(base, "account", target.account_id)
                     if base and target.account_id else None)
            await self._sweep(report, f"aws:{target.account_id or 'default'}:{target.region}",
                              queue, LIST_AWS_ENVIRONMENTS, AwsSweepInput(target=target),
                              REMOVE_AWS_ENVIRONMENT,
                              AwsEnvironmentInput(target=target, environment=""))

        if request.databases:
            try:
                databases = await self._call(LIST_PREVIEW_DATABASES, None,
                                             "list preview databases")
                found_db: dict[str, list[str]] = {}
                for db in databases:
                    found_db.setdefault(db.environment, []).append(f"database {db.database}")
                for env in self._removable(report, "postgres", found_db):
                    if await self._runs(report, "postgres", env):
                        continue
                    removed = await self._call(
                        REMOVE_PREVIEW_DATABASE, env, f"remove orphan database {env}")
                    self._record(report, "postgres", env, removed)
            except ActivityError as error:
                _reraise_cancellation(error)
                report.failed["postgres"] = _reason(error)
        return report

    async def _sweep(self, report: SweepReport, system: str, queue: str | None,
                     lister: ActivityContract, where: BaseModel, remover: ActivityContract,
                     one: BaseModel) -> None:
        """List one cluster or AWS target and remove its orphans (`one` with each orphan's
        environment); a failure is reported and the sweep goes on elsewhere."""
        try:
            found = await self._call(lister, where, f"list {system}", queue)
            for env in self._removable(report, system, found):
                if await self._runs(report, system, env):
                    continue
                removed = await self._call(
                    remover, one.model_copy(update={"environment": env}),
                    f"remove orphan {env} from {system}", queue)
                self._record(report, system, env, removed)
        except ActivityError as error:
            _reraise_cancellation(error)
            report.failed[system] = _reason(error)

    def _removable(self, report: SweepReport, system: str,
                         found: dict[str, list[str]]) -> list[str]:
        """The orphans to remove. Since "sweep-safety", none past the bounds unless forced,
        and none when their workflows cannot be asked for (each still is, by _runs, right
        before its removal)."""
        orphans = self._orphans(report, system, found)
        if not self._safe or not orphans:
            return orphans
        request = self._request
        share = len(orphans) / max(len(found), 1)
        if not request.force and (len(orphans) > request.max_removals or (
                len(orphans) > SHARE_FLOOR and share > request.max_removal_share)):
            report.failed[system] = (
                f"held back: it would remove {len(orphans)} of the {len(found)} environments "
                f"found (bounds: {request.max_removals}, {request.max_removal_share:.0%} past "
                f"{SHARE_FLOOR}); the visibility list may have answered partially. If they "
                "are orphans, sweep with force")
            self._keep(report, system, orphans, "held back by the bound")
            return []
        if self._repositories is None:
            self._keep(report, system, orphans, "its preview's workflow could not be asked "
                                                 "for (the projects could not be listed)")
            return []
        return orphans

    async def _runs(self, report: SweepReport, system: str, env: str) -> bool:
        """Whether the environment's preview workflow runs, asked for by id right before
        its removal (a preview started since the visibility list was read counts)."""
        if not self._safe:
            return False
        owner = preview_workflows([env], self._repositories or []).get(env)
        if owner is None:
            if self._request.force:
                return False
            # No registered project's environment (a project removed or renamed): its
            # workflow cannot be asked for, and the visibility list alone is not enough.
            self._keep(report, system, [env], "no registered project owns it, so its "
                                              "workflow cannot be asked for by id: sweep with "
                                              "force if it is an orphan")
            return True
        if await self._call(RUNNING_PREVIEWS, [owner], f"is the preview of {env} running?"):
            self._keep(report, system, [env], f"its preview workflow {owner} is running")
            return True
        return False

    @staticmethod
    def _keep(report: SweepReport, system: str, envs: list[str], why: str) -> None:
        report.kept.setdefault(system, {}).update(dict.fromkeys(envs, why))

    def _record(self, report: SweepReport, system: str, env: str, removed: list[str]) -> None:
        report.removed.setdefault(system, {})[env] = removed
        if removed:
            sweep_removed(system)  # metrics: by system kind only
        if self._safe and not removed and report.found[system].get(env):
            # The remover kept it all: something of it is younger than the grace period.
            self._keep(report, system, [env], "nothing removed: younger than the grace "
                                              "period, or already gone")

    @staticmethod
    def _orphans(report: SweepReport, system: str, found: dict[str, list[str]]) -> list[str]:
        """Record what has no live preview; return what to remove (nothing in dry run)."""
        orphans = {env: items for env, items in sorted(found.items()) if env not in report.live}
        report.found[system] = orphans
        sweep_found(system, len(orphans))  # metrics: by system kind only
        return [] if report.dry_run else list(orphans)

    async def _call(self, activity: ActivityContract, arg: object, summary: str,
                    task_queue: str | None = None) -> Any:
        args = [] if arg is None else [arg]
        return await workflow.execute_activity(
            activity.name, args=args, result_type=activity.output, summary=summary,
            task_queue=task_queue,
            # Only a tenant's queue may have no worker at all; ours always has this one.
            schedule_to_start_timeout=self._tenant_timeout if task_queue else None,
            start_to_close_timeout=timedelta(hours=1), heartbeat_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(maximum_attempts=5),
        )


def _merge(given: SweepTargets, found: SweepTargets) -> SweepTargets:
    def union(a: list[T], b: list[T]) -> list[T]:
        return list(dict.fromkeys([*a, *b]))

    dedicated = union(given.dedicated_clusters, found.dedicated_clusters)
    # A dedicated cluster is reached through its tenant's worker only, never ours.
    shared = [c for c in union(given.clusters, found.clusters) if c not in dedicated]
    return SweepTargets(clusters=shared, dedicated_clusters=dedicated,
                        aws_targets=union(given.aws_targets, found.aws_targets))


def _reraise_cancellation(error: ActivityError) -> None:
    """A cancelled sweep stops: it must not go on removing in the other systems."""
    if is_cancelled_exception(error):
        raise error


def _reason(error: ActivityError) -> str:
    cause = error.cause
    return f"{type(cause).__name__}: {cause}" if cause else str(error)
