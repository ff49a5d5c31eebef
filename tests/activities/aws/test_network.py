"""ensure_vpc / remove_vpc against a real moto server."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.aws import AwsClients, Waits
from activities.aws.network import NetworkActivities
from activities.errors import FOREIGN_RESOURCE
from domain.naming import Ownership
from domain.resources import AwsTarget, StepInput, StepOutput, VpcSpec
from tests.plugins.moto import REGION, MotoServer

ENV = "shop-pr-7-abc123"
TARGET = AwsTarget(region=REGION)
ROLE_ACCOUNT = "111111111111"


def vpc_spec(env: str = ENV, **changes: Any) -> VpcSpec:
    fields: dict[str, Any] = {
        "owner": Ownership(environment=env), "target": TARGET, "name": f"{env}-net",
        "cidr": "10.100.0.0/16",
    }
    return VpcSpec(**{**fields, **changes})


@pytest.fixture
def network(aws_clients: AwsClients) -> NetworkActivities:
    return NetworkActivities(aws_clients, Waits(timeout=10, interval=0.05))


def ensure(network: NetworkActivities, spec: VpcSpec) -> StepOutput:
    result: StepOutput = ActivityEnvironment().run(network.ensure_vpc, StepInput(spec=spec))
    return result


def remove(network: NetworkActivities, spec: VpcSpec) -> None:
    ActivityEnvironment().run(network.remove_vpc, StepInput(spec=spec))


def env_filter(env: str) -> list[dict[str, Any]]:
    return [{"Name": "tag:preview-environment", "Values": [env]}]


def owned_counts(moto: MotoServer, env: str = ENV, account: str | None = None) -> dict[str, int]:
    """How many resources of each kind carry the environment's tag (boto3's own view)."""
    ec2 = moto.client("ec2", account_id=account)
    rds = moto.client("rds", account_id=account)
    groups = [
        g for g in rds.describe_db_subnet_groups()["DBSubnetGroups"]
        if {"Key": "preview-environment", "Value": env}
        in rds.list_tags_for_resource(ResourceName=g["DBSubnetGroupArn"])["TagList"]
    ]
    live_peerings = [
        p for p in ec2.describe_vpc_peering_connections(Filters=env_filter(env))[
            "VpcPeeringConnections"
        ]
        if p["Status"]["Code"] not in ("deleted", "rejected", "failed")
    ]
    return {
        "vpcs": len(ec2.describe_vpcs(Filters=env_filter(env))["Vpcs"]),
        "subnets": len(ec2.describe_subnets(Filters=env_filter(env))["Subnets"]),
        "route_tables": len(ec2.describe_route_tables(Filters=env_filter(env))["RouteTables"]),
        "security_groups": len(
            ec2.describe_security_groups(Filters=env_filter(env))["SecurityGroups"]
        ),
        "subnet_groups": len(groups),
        "peerings": len(live_peerings),
    }


FULL = {"vpcs": 1, "subnets": 2, "route_tables": 1, "security_groups": 1, "subnet_groups": 1,
        "peerings": 0}
NOTHING = dict.fromkeys(FULL, 0)


def test_ensure_builds_the_network_and_twice_changes_nothing(
    network: NetworkActivities, moto_reset: MotoServer
) -> None:
    spec = vpc_spec()
    first = ensure(network, spec)
    assert owned_counts(moto_reset) == FULL
    second = ensure(network, spec)
    assert second.values == first.values
    assert owned_counts(moto_reset) == FULL

    ec2 = moto_reset.client("ec2")
    vpc = ec2.describe_vpcs(VpcIds=[first.values["vpc_id"]])["Vpcs"][0]
    assert vpc["CidrBlock"] == "10.100.0.0/16"
    assert {"Key": "Name", "Value": spec.name} in vpc["Tags"]
    assert {"Key": "managed-by", "Value": "preview-engine"} in vpc["Tags"]
    subnet_ids = first.values["subnet_ids"].split(",")
    subnets = ec2.describe_subnets(SubnetIds=subnet_ids)["Subnets"]
    assert len({s["AvailabilityZone"] for s in subnets}) == 2
    table = ec2.describe_route_tables(Filters=env_filter(ENV))["RouteTables"][0]
    assert {a["SubnetId"] for a in table["Associations"] if "SubnetId" in a} == set(subnet_ids)
    group = ec2.describe_security_groups(GroupIds=[first.values["security_group_id"]])[
        "SecurityGroups"
    ][0]
    assert [(p["FromPort"], p["ToPort"], [r["CidrIp"] for r in p["IpRanges"]])
            for p in group["IpPermissions"]] == [(5432, 5432, ["10.100.0.0/16"])]
    rds = moto_reset.client("rds")
    subnet_group = rds.describe_db_subnet_groups(
        DBSubnetGroupName=first.values["db_subnet_group"]
    )["DBSubnetGroups"][0]
    assert {s["SubnetIdentifier"] for s in subnet_group["Subnets"]} == set(subnet_ids)


def test_peering_routes_both_ways_and_opens_postgres_to_the_peer_only(
    network: NetworkActivities, moto_reset: MotoServer
) -> None:
    ec2 = moto_reset.client("ec2")
    cluster_vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    cluster_table = ec2.describe_route_tables(
        Filters=[{"Name": "vpc-id", "Values": [cluster_vpc]}]
    )["RouteTables"][0]["RouteTableId"]
    spec = vpc_spec(peer_vpc_id=cluster_vpc)

    first = ensure(network, spec)
    second = ensure(network, spec)
    assert second.values == first.values
    assert owned_counts(moto_reset) == {**FULL, "peerings": 1}

    peering = ec2.describe_vpc_peering_connections(Filters=env_filter(ENV))[
        "VpcPeeringConnections"
    ][0]
    assert peering["Status"]["Code"] == "active"
    peering_id = peering["VpcPeeringConnectionId"]

    def peering_routes(table_id: str) -> list[str]:
        table = ec2.describe_route_tables(RouteTableIds=[table_id])["RouteTables"][0]
        return [r["DestinationCidrBlock"] for r in table["Routes"]
                if r.get("VpcPeeringConnectionId") == peering_id]

    own_table = ec2.describe_route_tables(Filters=env_filter(ENV))["RouteTables"][0]
    assert peering_routes(own_table["RouteTableId"]) == ["10.0.0.0/16"]
    assert peering_routes(cluster_table) == ["10.100.0.0/16"]
    group = ec2.describe_security_groups(GroupIds=[first.values["security_group_id"]])[
        "SecurityGroups"
    ][0]
    assert [r["CidrIp"] for p in group["IpPermissions"] for r in p["IpRanges"]] == ["10.0.0.0/16"]

    remove(network, spec)
    assert owned_counts(moto_reset) == NOTHING
    assert peering_routes(cluster_table) == []
    # The cluster's VPC is not ours: it stays.
    assert ec2.describe_vpcs(VpcIds=[cluster_vpc])["Vpcs"]


def test_ensure_adopts_a_half_done_network(
    network: NetworkActivities, moto_reset: MotoServer
) -> None:
    spec = vpc_spec()
    ec2 = moto_reset.client("ec2")
    tags = [{"Key": k, "Value": v} for k, v in {**spec.owner.tags(), "Name": spec.name}.items()]
    by_hand = ec2.create_vpc(
        CidrBlock=spec.cidr, TagSpecifications=[{"ResourceType": "vpc", "Tags": tags}]
    )["Vpc"]["VpcId"]
    ec2.create_subnet(
        VpcId=by_hand, CidrBlock="10.100.0.0/17", AvailabilityZone=f"{REGION}a",
        TagSpecifications=[{"ResourceType": "subnet",
                            "Tags": [*tags[:2], {"Key": "Name", "Value": f"{spec.name}-0"}]}],
    )

    output = ensure(network, spec)
    assert output.values["vpc_id"] == by_hand
    assert owned_counts(moto_reset) == FULL


def test_refuses_a_same_named_vpc_without_our_mark(
    network: NetworkActivities, moto_reset: MotoServer
) -> None:
    spec = vpc_spec()
    ec2 = moto_reset.client("ec2")
    ec2.create_vpc(
        CidrBlock=spec.cidr,
        TagSpecifications=[{"ResourceType": "vpc",
                            "Tags": [{"Key": "Name", "Value": spec.name}]}],
    )
    with pytest.raises(ApplicationError) as caught:
        ensure(network, spec)
    assert caught.value.type == FOREIGN_RESOURCE
    assert caught.value.non_retryable
    assert owned_counts(moto_reset) == NOTHING

    # Another environment's VPC of that name is foreign too, and removal leaves it alone.
    other = vpc_spec("other-env")
    ensure(network, other)
    with pytest.raises(ApplicationError) as caught:
        ensure(network, vpc_spec(name=other.name))
    assert caught.value.type == FOREIGN_RESOURCE
    remove(network, vpc_spec(name=other.name))
    assert owned_counts(moto_reset, "other-env") == FULL


def test_refuses_a_same_named_subnet_group_without_our_mark(
    network: NetworkActivities, moto_reset: MotoServer
) -> None:
    spec = vpc_spec()
    ec2, rds = moto_reset.client("ec2"), moto_reset.client("rds")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{i}.0/24",
                          AvailabilityZone=f"{REGION}{zone}")["Subnet"]["SubnetId"]
        for i, zone in enumerate("ab")
    ]
    rds.create_db_subnet_group(DBSubnetGroupName=spec.name, DBSubnetGroupDescription="theirs",
                               SubnetIds=subnets)
    with pytest.raises(ApplicationError) as caught:
        ensure(network, spec)
    assert caught.value.type == FOREIGN_RESOURCE

    # Removal deletes our half-built network but never their subnet group.
    remove(network, spec)
    assert owned_counts(moto_reset) == NOTHING
    assert rds.describe_db_subnet_groups(DBSubnetGroupName=spec.name)["DBSubnetGroups"]


def test_remove_is_complete_and_absent_is_success(
    network: NetworkActivities, moto_reset: MotoServer
) -> None:
    remove(network, vpc_spec())  # nothing there yet
    spec = vpc_spec()
    ensure(network, spec)
    remove(network, spec)
    assert owned_counts(moto_reset) == NOTHING
    remove(network, spec)  # and again
    assert owned_counts(moto_reset) == NOTHING


def test_assumed_role_target_acts_in_the_role_account(
    aws_clients: AwsClients, moto_reset: MotoServer
) -> None:
    target = AwsTarget(
        region=REGION, role_arn=f"arn:aws:iam::{ROLE_ACCOUNT}:role/preview-engine",
        external_id="tenant-42",
    )
    identity = aws_clients.sts(target).get_caller_identity()
    assert identity["Account"] == ROLE_ACCOUNT
    assert ":assumed-role/preview-engine/" in identity["Arn"]
    # One client per service and target, kept (botocore renews its credentials).
    assert aws_clients.ec2(target) is aws_clients.ec2(target)

    network = NetworkActivities(aws_clients, Waits(timeout=10, interval=0.05))
    spec = vpc_spec(target=target)
    ensure(network, spec)
    assert owned_counts(moto_reset, account=ROLE_ACCOUNT) == FULL
    assert owned_counts(moto_reset) == NOTHING  # the engine's own account sees none

    remove(network, spec)
    assert owned_counts(moto_reset, account=ROLE_ACCOUNT) == NOTHING


def test_role_credentials_are_renewed_near_expiry(moto_reset: MotoServer) -> None:
    from datetime import timedelta

    target = AwsTarget(region=REGION, role_arn=f"arn:aws:iam::{ROLE_ACCOUNT}:role/r")

    def signing_keys(margin: timedelta) -> tuple[str | None, str | None]:
        aws = AwsClients(endpoint_url=moto_reset.endpoint_url, region=REGION,
                         session=moto_reset.session, refresh_margin=margin)
        assert aws.sts(target).get_caller_identity()["Account"] == ROLE_ACCOUNT
        first, second = aws.credentials(target), aws.credentials(target)
        assert first is not None and second is not None
        return first.access_key, second.access_key

    # moto's credentials last an hour: fresh with the default margin...
    first, second = signing_keys(timedelta(minutes=15))
    assert first == second
    # ...and always "near expiry" with a two-hour margin, so each use renews them.
    first, second = signing_keys(timedelta(hours=2))
    assert first != second
