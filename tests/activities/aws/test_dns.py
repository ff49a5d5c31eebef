"""ensure_dns_records / remove_dns_records against a real moto server."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.aws import AwsClients
from activities.aws.dns import DnsActivities
from activities.errors import FOREIGN_RESOURCE
from domain.naming import Ownership
from domain.resources import AwsTarget, DnsRecordsSpec, StepInput
from tests.plugins.moto import REGION, MotoServer

ENV = "shop-pr-7-abc123"
HOSTS = ["web-pr-7.preview.test", "api-pr-7.preview.test"]
MARK = f'"managed-by=preview-engine,preview-environment={ENV}"'


@pytest.fixture
def zone(moto_reset: MotoServer) -> str:
    route53 = moto_reset.client("route53")
    return str(route53.create_hosted_zone(Name="preview.test", CallerReference="t")
               ["HostedZone"]["Id"])


@pytest.fixture
def dns(aws_clients: AwsClients) -> DnsActivities:
    return DnsActivities(aws_clients)


def spec(zone: str, env: str = ENV, **changes: Any) -> DnsRecordsSpec:
    fields: dict[str, Any] = {
        "owner": Ownership(environment=env), "target": AwsTarget(region=REGION),
        "zone_id": zone, "hosts": HOSTS, "points_to": "lb-1.elb.test",
    }
    return DnsRecordsSpec(**{**fields, **changes})


def records(moto: MotoServer, zone: str) -> dict[tuple[str, str], list[str]]:
    """(name, type) → values, without the zone's own SOA/NS records."""
    found = moto.client("route53").list_resource_record_sets(HostedZoneId=zone)
    return {
        (r["Name"], r["Type"]): [v["Value"] for v in r.get("ResourceRecords", [])]
        for r in found["ResourceRecordSets"] if r["Type"] not in ("SOA", "NS")
    }


def upsert(moto: MotoServer, zone: str, name: str, kind: str, value: str) -> None:
    moto.client("route53").change_resource_record_sets(HostedZoneId=zone, ChangeBatch={
        "Changes": [{"Action": "UPSERT", "ResourceRecordSet": {
            "Name": name, "Type": kind, "TTL": 300, "ResourceRecords": [{"Value": value}]}}]})


def run(fn: Any, spec: DnsRecordsSpec) -> Any:
    return ActivityEnvironment().run(fn, StepInput(spec=spec))


EXPECTED = {
    **{(f"{h}.", "CNAME"): ["lb-1.elb.test."] for h in HOSTS},
    **{(f"_owner.{h}.", "TXT"): [MARK] for h in HOSTS},
}


def test_ensure_twice_writes_the_same_records(
    dns: DnsActivities, zone: str, moto_reset: MotoServer
) -> None:
    run(dns.ensure_dns_records, spec(zone))
    assert records(moto_reset, zone) == EXPECTED
    run(dns.ensure_dns_records, spec(zone))
    assert records(moto_reset, zone) == EXPECTED


def test_a_new_target_is_upserted(dns: DnsActivities, zone: str, moto_reset: MotoServer) -> None:
    run(dns.ensure_dns_records, spec(zone))
    run(dns.ensure_dns_records, spec(zone, points_to="lb-2.elb.test"))
    assert records(moto_reset, zone)[(f"{HOSTS[0]}.", "CNAME")] == ["lb-2.elb.test."]


def test_half_done_records_converge(dns: DnsActivities, zone: str, moto_reset: MotoServer) -> None:
    # A mark without its CNAME (a run that stopped between two batches).
    upsert(moto_reset, zone, f"_owner.{HOSTS[0]}", "TXT", MARK)
    run(dns.ensure_dns_records, spec(zone))
    assert records(moto_reset, zone) == EXPECTED


@pytest.mark.parametrize("foreign", ["unmarked", "other-environment"])
def test_refuses_a_host_that_is_not_ours(
    dns: DnsActivities, zone: str, moto_reset: MotoServer, foreign: str
) -> None:
    upsert(moto_reset, zone, HOSTS[1], "CNAME", "someone-else.test")
    if foreign == "other-environment":
        upsert(moto_reset, zone, f"_owner.{HOSTS[1]}", "TXT",
               '"managed-by=preview-engine,preview-environment=other-env"')
    before = records(moto_reset, zone)
    with pytest.raises(ApplicationError) as caught:
        run(dns.ensure_dns_records, spec(zone))
    assert caught.value.type == FOREIGN_RESOURCE
    assert caught.value.non_retryable
    assert records(moto_reset, zone) == before  # not even the free host was written


def test_remove_deletes_only_records_marked_ours(
    dns: DnsActivities, zone: str, moto_reset: MotoServer
) -> None:
    run(dns.remove_dns_records, spec(zone))  # absent: success
    run(dns.ensure_dns_records, spec(zone))
    upsert(moto_reset, zone, "docs.preview.test", "CNAME", "theirs.test")
    run(dns.ensure_dns_records, spec(zone, env="other-env", hosts=["other.preview.test"]))

    run(dns.remove_dns_records, spec(zone, hosts=[*HOSTS, "docs.preview.test",
                                                  "other.preview.test"]))
    left = records(moto_reset, zone)
    assert set(left) == {
        ("docs.preview.test.", "CNAME"),
        ("other.preview.test.", "CNAME"),
        ("_owner.other.preview.test.", "TXT"),
    }
    assert not any(ENV in v for values in left.values() for v in values)
    run(dns.remove_dns_records, spec(zone))  # again: success
