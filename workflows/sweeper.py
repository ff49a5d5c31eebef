"""The orphan sweeper: whatever carries our mark but belongs to no live preview goes.

Runs on a Temporal Schedule. It lists what every system holds under our ownership
marks (Kubernetes namespaces per cluster, AWS resources per target, preview databases),
compares with the environments whose workflow is still running, and removes the rest;
in dry-run mode it only reports.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TypeVar

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.postgres import PreviewDatabase
    from activities.sweeper_aws import AwsEnvironmentInput, AwsSweepInput
    from domain.resources import AwsTarget, KubeEnvironmentInput, KubeSweepInput


class SweepRequest(BaseModel):
    dry_run: bool = True
    clusters: list[str] = Field(default_factory=lambda: ["default"])
    aws_targets: list[AwsTarget] = Field(default_factory=list)
    databases: bool = True


class SweepReport(BaseModel):
    dry_run: bool
    live: list[str]
    # system ("kubernetes:default", "aws:eu-west-1", "postgres") → env id → resources
    found: dict[str, dict[str, list[str]]] = Field(default_factory=dict)
    removed: dict[str, dict[str, list[str]]] = Field(default_factory=dict)


T = TypeVar("T")


@workflow.defn
class OrphanSweepWorkflow:
    @workflow.run
    async def run(self, request: SweepRequest) -> SweepReport:
        live = await _call("live_environments", None, list[str], "list live previews")
        report = SweepReport(dry_run=request.dry_run, live=live)

        for cluster in request.clusters:
            system = f"kubernetes:{cluster}"
            found = await _call("list_kube_environments", KubeSweepInput(cluster=cluster),
                                dict[str, list[str]], f"list {system}")
            for env in self._orphans(report, system, found):
                report.removed.setdefault(system, {})[env] = await _call(
                    "remove_kube_environment",
                    KubeEnvironmentInput(cluster=cluster, environment=env),
                    list[str], f"remove orphan {env} from {system}")

        for target in request.aws_targets:
            system = f"aws:{target.account_id or 'default'}:{target.region}"
            found = await _call("list_aws_environments", AwsSweepInput(target=target),
                                dict[str, list[str]], f"list {system}")
            for env in self._orphans(report, system, found):
                report.removed.setdefault(system, {})[env] = await _call(
                    "remove_aws_environment", AwsEnvironmentInput(target=target, environment=env),
                    list[str], f"remove orphan {env} from {system}")

        if request.databases:
            databases = await _call("list_preview_databases", None, list[PreviewDatabase],
                                    "list preview databases")
            found = {}
            for db in databases:
                found.setdefault(db.environment, []).append(f"database {db.database}")
            for env in self._orphans(report, "postgres", found):
                report.removed.setdefault("postgres", {})[env] = await _call(
                    "remove_preview_database", env, list[str], f"remove orphan database {env}")
        return report

    @staticmethod
    def _orphans(report: SweepReport, system: str, found: dict[str, list[str]]) -> list[str]:
        """Record what has no live preview; return what to remove (nothing in dry run)."""
        orphans = {env: items for env, items in sorted(found.items()) if env not in report.live}
        report.found[system] = orphans
        return [] if report.dry_run else list(orphans)


async def _call(activity: str, arg: object, result_type: type[T], summary: str) -> T:
    args = [] if arg is None else [arg]
    return await workflow.execute_activity(
        activity, args=args, result_type=result_type, summary=summary,
        start_to_close_timeout=timedelta(hours=1), heartbeat_timeout=timedelta(minutes=2),
        retry_policy=RetryPolicy(maximum_attempts=5),
    )
