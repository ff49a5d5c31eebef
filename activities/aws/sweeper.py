"""The AWS half of the orphan sweeper: find everything carrying our mark, by environment,
and remove one environment's leftovers with the same removal code the activities use.

The workflow decides which environments are orphans (no live preview workflow); these
activities only list and remove, and never touch anything without our mark.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from temporalio import activity

from activities.aws.clients import AwsClients, Waits, heartbeat
from activities.aws.dns import list_marked_records, release_cnames
from activities.aws.network import list_vpcs, remove_vpcs
from activities.aws.rds import (
    CLUSTER,
    INSTANCE,
    SNAPSHOT,
    creation_times,
    list_databases,
    remove_cluster,
    remove_instance,
    remove_snapshot,
)
from activities.aws.tls import certificate_times, delete_certificates, list_certificates
from domain.contract import LIST_AWS_ENVIRONMENTS, REMOVE_AWS_ENVIRONMENT
from domain.naming import Ownership
from domain.resources import AwsEnvironmentInput, AwsSweepInput, AwsTarget


class AwsSweepActivities:
    def __init__(self, aws: AwsClients, waits: Waits | None = None, *,
                 sweep_grace: float = 0.0) -> None:
        """sweep_grace: seconds; an environment with a database, snapshot or certificate
        made more recently is kept (VPCs and DNS records carry no creation time: the
        sweeper's check by workflow id covers them)."""
        self.aws = aws
        self.waits = waits or Waits(timeout=3 * 3600, interval=20)
        self.sweep_grace = sweep_grace

    @activity.defn(name=LIST_AWS_ENVIRONMENTS.name)
    def list_aws_environments(self, request: AwsSweepInput) -> dict[str, list[str]]:
        return self.list_tagged_environments(request.target)

    @activity.defn(name=REMOVE_AWS_ENVIRONMENT.name)
    def remove_aws_environment(self, request: AwsEnvironmentInput) -> list[str]:
        if self._too_young(request.target, request.environment):
            return []  # being made now, perhaps by a preview the sweep does not know yet
        return self.remove_environment_resources(request.target, request.environment)

    def _too_young(self, target: AwsTarget, env_id: str) -> bool:
        if not self.sweep_grace:
            return False
        since = datetime.now(UTC) - timedelta(seconds=self.sweep_grace)
        made = creation_times(self.aws.rds(target)).get(env_id, [])
        made += certificate_times(self.aws.acm(target)).get(env_id, [])
        return any(created > since for created in made)

    def list_tagged_environments(self, target: AwsTarget) -> dict[str, list[str]]:
        """env id → descriptions of every resource in the target carrying its mark."""
        found: dict[str, list[str]] = {}
        for env, names in list_marked_records(self.aws.route53(target)).items():
            found.setdefault(env, []).extend(f"dns {name} in {zone}" for zone, name in names)
        for env, certificates in list_certificates(self.aws.acm(target)).items():
            found.setdefault(env, []).extend(
                f"certificate {arn} ({domain})" for arn, domain in certificates
            )
        for env, databases in list_databases(self.aws.rds(target)).items():
            found.setdefault(env, []).extend(f"{kind} {name}" for kind, name in databases)
        for env, vpcs in list_vpcs(self.aws.ec2(target)).items():
            found.setdefault(env, []).extend(vpcs)
        return {env: sorted(items) for env, items in sorted(found.items())}

    def remove_environment_resources(self, target: AwsTarget, env_id: str) -> list[str]:
        """Remove what the environment left behind, dependents first; → what was removed."""
        owner = Ownership(environment=env_id)
        route53, acm = self.aws.route53(target), self.aws.acm(target)
        rds, ec2 = self.aws.rds(target), self.aws.ec2(target)
        removed: list[str] = []

        # DNS first: it points at things about to go (validation records included).
        by_zone: dict[str, list[str]] = {}
        for zone, name in list_marked_records(route53).get(env_id, []):
            by_zone.setdefault(zone, []).append(name)
        for zone, names in by_zone.items():
            removed += [f"dns {n} in {zone}" for n in release_cnames(route53, zone, names, owner)]
        heartbeat("dns done")

        removed += delete_certificates(acm, owner, hosts=None)
        heartbeat("certificates done")

        # Databases before the network: their subnet group and security group hold the VPC.
        databases = list_databases(rds).get(env_id, [])
        for kind, name in databases:
            if kind == CLUSTER:
                removed += remove_cluster(rds, owner, name, self.waits)
        for kind, name in databases:
            if kind == INSTANCE:
                removed += remove_instance(rds, owner, name, self.waits)
        for kind, name in databases:
            if kind == SNAPSHOT:
                removed += remove_snapshot(rds, owner, name)
        heartbeat("databases done")

        removed += remove_vpcs(ec2, rds, owner)
        return removed
