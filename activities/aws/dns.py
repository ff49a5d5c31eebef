"""Route53 CNAMEs for a preview's hosts, each marked ours by a TXT record.

Route53 records carry no tags, so ownership lives next to the record: a TXT record
`_owner.<name>` = "managed-by=preview-engine,preview-environment=<env>". A record is
ours only if that mark names our environment; anything else is never changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from temporalio import activity

from activities.aws.clients import AwsClients, owning_environment
from activities.errors import foreign_resource
from domain.naming import MANAGED_BY, Ownership
from domain.resources import DnsRecordsSpec, StepInput, StepOutput

if TYPE_CHECKING:
    from mypy_boto3_route53 import Route53Client
    from mypy_boto3_route53.type_defs import ChangeTypeDef, ResourceRecordSetOutputTypeDef

OWNER_PREFIX = "_owner."
TTL = 60


def fqdn(name: str) -> str:
    return name.lower().rstrip(".") + "."


def ownership_mark(owner: Ownership) -> str:
    return f"managed-by={MANAGED_BY},preview-environment={owner.environment}"


def _mark_environment(record: ResourceRecordSetOutputTypeDef | None) -> str | None:
    """The environment named by an `_owner.` TXT record, None if it is not our mark."""
    if record is None:
        return None
    for value in (r["Value"] for r in record.get("ResourceRecords", [])):
        fields = dict(
            part.partition("=")[::2] for part in value.strip('"').split(",") if "=" in part
        )
        if env := owning_environment(fields):
            return env
    return None


def find_record(
    route53: Route53Client, zone_id: str, name: str, record_type: str
) -> ResourceRecordSetOutputTypeDef | None:
    """The record set of that exact name and type, or None (one small, ordered read)."""
    page = route53.list_resource_record_sets(
        HostedZoneId=zone_id,
        StartRecordName=fqdn(name),
        StartRecordType=record_type,  # type: ignore[arg-type]
        MaxItems="1",
    )
    for record in page["ResourceRecordSets"]:
        if fqdn(record["Name"]) == fqdn(name) and record["Type"] == record_type:
            return record
    return None


@dataclass(frozen=True)
class _Current:
    name: str
    cname: ResourceRecordSetOutputTypeDef | None
    mark: ResourceRecordSetOutputTypeDef | None

    @property
    def owner_environment(self) -> str | None:
        return _mark_environment(self.mark)


def _read(route53: Route53Client, zone_id: str, name: str) -> _Current:
    return _Current(
        name=fqdn(name),
        cname=find_record(route53, zone_id, name, "CNAME"),
        mark=find_record(route53, zone_id, OWNER_PREFIX + fqdn(name), "TXT"),
    )


def _record(name: str, record_type: str, value: str) -> ResourceRecordSetOutputTypeDef:
    return {"Name": name, "Type": record_type, "TTL": TTL,  # type: ignore[typeddict-item]
            "ResourceRecords": [{"Value": value}]}


def claim_cnames(
    route53: Route53Client, zone_id: str, targets: Mapping[str, str], owner: Ownership
) -> int:
    """Make each `name → CNAME value` present and marked ours, in one atomic change.

    Every name is checked before anything is written, so a refusal changes nothing.
    → the number of records written (0 when everything already matched).
    """
    changes: list[ChangeTypeDef] = []
    for name, value in targets.items():
        current = _read(route53, zone_id, name)
        env = current.owner_environment
        if env != owner.environment and (current.cname or current.mark or env):
            raise foreign_resource(f"DNS record {current.name} in zone {zone_id}",
                                   owner.environment)
        wanted_cname = _record(current.name, "CNAME", fqdn(value))
        wanted_mark = _record(OWNER_PREFIX + current.name, "TXT", f'"{ownership_mark(owner)}"')
        for existing, wanted in ((current.mark, wanted_mark), (current.cname, wanted_cname)):
            if not _same(existing, wanted):
                changes.append({"Action": "UPSERT", "ResourceRecordSet": wanted})  # type: ignore[typeddict-item]
    if changes:
        route53.change_resource_record_sets(
            HostedZoneId=zone_id,
            ChangeBatch={"Comment": f"preview {owner.environment}", "Changes": changes},
        )
    return len(changes)


def release_cnames(
    route53: Route53Client, zone_id: str, names: Iterable[str], owner: Ownership
) -> list[str]:
    """Delete the CNAMEs (and marks) among `names` marked ours; → the names deleted."""
    changes: list[ChangeTypeDef] = []
    released = []
    for name in names:
        current = _read(route53, zone_id, name)
        if current.owner_environment != owner.environment or current.mark is None:
            continue  # not ours (or already gone): never touched
        # Route53 deletes need the record exactly as it is now.
        if current.cname is not None:
            changes.append({"Action": "DELETE", "ResourceRecordSet": current.cname})  # type: ignore[typeddict-item]
        changes.append({"Action": "DELETE", "ResourceRecordSet": current.mark})  # type: ignore[typeddict-item]
        released.append(current.name)
    if changes:
        route53.change_resource_record_sets(
            HostedZoneId=zone_id,
            ChangeBatch={"Comment": f"remove preview {owner.environment}", "Changes": changes},
        )
    return released


def _same(
    existing: ResourceRecordSetOutputTypeDef | None, wanted: ResourceRecordSetOutputTypeDef
) -> bool:
    if existing is None:
        return False
    values = sorted(r["Value"].lower() for r in existing.get("ResourceRecords", []))
    return existing.get("TTL") == wanted.get("TTL") and values == [
        r["Value"].lower() for r in wanted.get("ResourceRecords", [])
    ]


def list_marked_records(route53: Route53Client) -> dict[str, list[tuple[str, str]]]:
    """Every record marked ours in every hosted zone: env id → [(zone id, record name)]."""
    found: dict[str, list[tuple[str, str]]] = {}
    for zones in route53.get_paginator("list_hosted_zones").paginate():
        for zone in zones["HostedZones"]:
            pages = route53.get_paginator("list_resource_record_sets").paginate(
                HostedZoneId=zone["Id"]
            )
            for page in pages:
                for record in page["ResourceRecordSets"]:
                    name = fqdn(record["Name"])
                    if record["Type"] != "TXT" or not name.startswith(OWNER_PREFIX):
                        continue
                    if env := _mark_environment(record):
                        found.setdefault(env, []).append(
                            (zone["Id"], name.removeprefix(OWNER_PREFIX))
                        )
    return found


class DnsActivities:
    def __init__(self, aws: AwsClients) -> None:
        self.aws = aws

    @activity.defn(name=DnsRecordsSpec.present)
    def ensure_dns_records(self, step: StepInput) -> StepOutput:
        spec = step.spec_as(DnsRecordsSpec)
        route53 = self.aws.route53(spec.target)
        claim_cnames(route53, spec.zone_id, dict.fromkeys(spec.hosts, spec.points_to), spec.owner)
        return StepOutput(values={"hosts": ",".join(spec.hosts)})

    @activity.defn(name=DnsRecordsSpec.absent)
    def remove_dns_records(self, step: StepInput) -> None:
        spec = step.spec_as(DnsRecordsSpec)
        release_cnames(self.aws.route53(spec.target), spec.zone_id, spec.hosts, spec.owner)
