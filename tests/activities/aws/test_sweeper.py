"""The AWS orphan sweeper against a real moto server: list by environment, remove one."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from activities.aws import AwsClients, Waits
from activities.aws.dns import DnsActivities
from activities.aws.network import NetworkActivities
from activities.aws.rds import RdsActivities
from activities.aws.sweeper import AwsEnvironmentInput, AwsSweepActivities, AwsSweepInput
from activities.aws.tls import TlsActivities
from domain.naming import Ownership
from domain.resources import (
    AuroraCloneSpec,
    AwsTarget,
    CertificateSpec,
    DnsRecordsSpec,
    RdsCloneSpec,
    StepInput,
    StepOutput,
    VpcSpec,
)
from engine.keyring import Keyring
from engine.sealing import Sealer
from tests.plugins.moto import REGION, MotoServer

TARGET = AwsTarget(region=REGION)
WAITS = Waits(timeout=30, interval=0.05)
GONE, KEPT = "shop-pr-1-aaaaaa", "shop-pr-2-bbbbbb"


def run(fn: Any, arg: Any) -> Any:
    return ActivityEnvironment().run(fn, arg)


def build_environment(aws: AwsClients, env: str, zone: str, cluster_vpc: str,
                      target: AwsTarget = TARGET, cidr: str = "10.100.0.0/16") -> None:
    """Every kind of AWS resource a preview can have, through the real activities."""
    owner = Ownership(environment=env)
    network = NetworkActivities(aws, WAITS)
    vpc: StepOutput = run(network.ensure_vpc, StepInput(spec=VpcSpec(
        owner=owner, target=target, name=f"{env}-net", cidr=cidr,
        peer_vpc_id=cluster_vpc)))
    hosts = [f"web-{env}.preview.test"]
    run(DnsActivities(aws).ensure_dns_records, StepInput(spec=DnsRecordsSpec(
        owner=owner, target=target, zone_id=zone, hosts=hosts, points_to="lb.elb.test")))
    run(TlsActivities(aws, WAITS).ensure_certificate, StepInput(spec=CertificateSpec(
        owner=owner, target=target, hosts=hosts, zone_id=zone)))
    sealer = Sealer(Keyring.parse("t:" + base64.b64encode(b"k" * 32).decode()))
    databases = RdsActivities(aws, sealer, WAITS)
    run(databases.ensure_rds_clone, StepInput(
        spec=RdsCloneSpec(owner=owner, target=target, identifier=f"pv-{env}-db",
                          source_instance="shop-prod", snapshot_max_age_hours=0,
                          vpc_step="net"),
        upstream={"net": vpc}))
    run(databases.ensure_aurora_clone, StepInput(
        spec=AuroraCloneSpec(owner=owner, target=target, identifier=f"pv-{env}-aurora",
                             source_cluster="shop-aurora")))


def seed_account(moto: MotoServer, account: str | None = None) -> tuple[str, str]:
    """Sources, a hosted zone and the cluster's VPC; → (zone id, cluster VPC id)."""
    rds = moto.client("rds", account_id=account)
    rds.create_db_instance(
        DBInstanceIdentifier="shop-prod", Engine="postgres", DBInstanceClass="db.t4g.micro",
        MasterUsername="app", MasterUserPassword="source-password", AllocatedStorage=20)
    rds.create_db_cluster(
        DBClusterIdentifier="shop-aurora", Engine="aurora-postgresql", MasterUsername="app",
        MasterUserPassword="source-password")
    zone = moto.client("route53", account_id=account).create_hosted_zone(
        Name="preview.test", CallerReference="t")["HostedZone"]["Id"]
    cluster_vpc = moto.client("ec2", account_id=account).create_vpc(
        CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    return zone, cluster_vpc


def anything_tagged(moto: MotoServer, env: str, zone: str) -> list[str]:
    """boto3's own look for any resource carrying the environment's tag or DNS mark."""
    ec2, rds = moto.client("ec2"), moto.client("rds")
    acm, route53 = moto.client("acm"), moto.client("route53")
    by_tag = [{"Name": "tag:preview-environment", "Values": [env]}]
    mark = {"Key": "preview-environment", "Value": env}
    found = [
        *(v["VpcId"] for v in ec2.describe_vpcs(Filters=by_tag)["Vpcs"]),
        *(s["SubnetId"] for s in ec2.describe_subnets(Filters=by_tag)["Subnets"]),
        *(g["GroupId"] for g in ec2.describe_security_groups(Filters=by_tag)["SecurityGroups"]),
        *(t["RouteTableId"] for t in ec2.describe_route_tables(Filters=by_tag)["RouteTables"]),
        *(p["VpcPeeringConnectionId"] for p in ec2.describe_vpc_peering_connections(
            Filters=by_tag)["VpcPeeringConnections"] if p["Status"]["Code"] != "deleted"),
        *(g["DBSubnetGroupName"] for g in rds.describe_db_subnet_groups()["DBSubnetGroups"]
          if mark in rds.list_tags_for_resource(ResourceName=g["DBSubnetGroupArn"])["TagList"]),
        *(i["DBInstanceIdentifier"] for i in rds.describe_db_instances()["DBInstances"]
          if mark in i["TagList"]),
        *(c["DBClusterIdentifier"] for c in rds.describe_db_clusters()["DBClusters"]
          if mark in c["TagList"]),
        *(s["DBSnapshotIdentifier"] for s in rds.describe_db_snapshots()["DBSnapshots"]
          if mark in s["TagList"]),
        *(c["CertificateArn"] for c in acm.list_certificates()["CertificateSummaryList"]
          if mark in acm.list_tags_for_certificate(CertificateArn=c["CertificateArn"])["Tags"]),
        *(r["Name"] for r in route53.list_resource_record_sets(HostedZoneId=zone)[
            "ResourceRecordSets"] if any(env in v["Value"] for v in r.get("ResourceRecords", []))),
    ]
    return found


@pytest.fixture
def sweeper(aws_clients: AwsClients) -> AwsSweepActivities:
    return AwsSweepActivities(aws_clients, WAITS)


def test_an_environment_made_within_the_grace_period_is_kept(
    aws_clients: AwsClients, moto_reset: MotoServer
) -> None:
    """Its RDS instance, Aurora cluster and certificate were made just now (by their own
    creation times): a remover with an hour's grace keeps all of it; without, it goes."""
    zone, cluster_vpc = seed_account(moto_reset)
    build_environment(aws_clients, GONE, zone, cluster_vpc)
    patient = AwsSweepActivities(aws_clients, WAITS, sweep_grace=3600)
    request = AwsEnvironmentInput(target=TARGET, environment=GONE)
    assert run(patient.remove_aws_environment, request) == []
    assert f"pv-{GONE}-db" in anything_tagged(moto_reset, GONE, zone)
    assert run(AwsSweepActivities(aws_clients, WAITS).remove_aws_environment, request)
    assert anything_tagged(moto_reset, GONE, zone) == []


def test_lists_by_environment_and_removes_one_completely(
    aws_clients: AwsClients, sweeper: AwsSweepActivities, moto_reset: MotoServer
) -> None:
    zone, cluster_vpc = seed_account(moto_reset)
    build_environment(aws_clients, GONE, zone, cluster_vpc)
    # Peered to the same cluster VPC, so their ranges must differ.
    build_environment(aws_clients, KEPT, zone, cluster_vpc, cidr="10.101.0.0/16")
    assert anything_tagged(moto_reset, GONE, zone)

    listed: dict[str, list[str]] = run(sweeper.list_aws_environments, AwsSweepInput(target=TARGET))
    assert set(listed) == {GONE, KEPT}
    kinds = {item.split(" ")[0] for item in listed[GONE]}
    assert kinds == {"dns", "certificate", "rds", "aurora", "db", "vpc"}
    assert f"rds instance pv-{GONE}-db" in listed[GONE]
    assert f"aurora cluster pv-{GONE}-aurora" in listed[GONE]

    removed: list[str] = run(sweeper.remove_aws_environment,
                             AwsEnvironmentInput(target=TARGET, environment=GONE))
    assert f"rds instance pv-{GONE}-db" in removed
    assert any(item.startswith("vpc peering") for item in removed)
    assert anything_tagged(moto_reset, GONE, zone) == []

    after: dict[str, list[str]] = run(sweeper.list_aws_environments, AwsSweepInput(target=TARGET))
    assert after == {KEPT: listed[KEPT]}  # the other environment is untouched
    # The sources, zone and cluster VPC (not ours) are untouched too.
    rds = moto_reset.client("rds")
    assert rds.describe_db_instances(DBInstanceIdentifier="shop-prod")["DBInstances"]
    assert rds.describe_db_clusters(DBClusterIdentifier="shop-aurora")["DBClusters"]
    assert moto_reset.client("ec2").describe_vpcs(VpcIds=[cluster_vpc])["Vpcs"]

    again: list[str] = run(sweeper.remove_aws_environment,
                           AwsEnvironmentInput(target=TARGET, environment=GONE))
    assert again == []


def test_sweeps_an_assumed_role_account_separately(
    aws_clients: AwsClients, sweeper: AwsSweepActivities, moto_reset: MotoServer
) -> None:
    account = "111111111111"
    role_target = AwsTarget(region=REGION, role_arn=f"arn:aws:iam::{account}:role/preview")
    zone, cluster_vpc = seed_account(moto_reset, account)
    build_environment(aws_clients, GONE, zone, cluster_vpc, target=role_target)

    assert run(sweeper.list_aws_environments, AwsSweepInput(target=TARGET)) == {}
    listed = run(sweeper.list_aws_environments, AwsSweepInput(target=role_target))
    assert set(listed) == {GONE}
    run(sweeper.remove_aws_environment, AwsEnvironmentInput(target=role_target, environment=GONE))
    assert run(sweeper.list_aws_environments, AwsSweepInput(target=role_target)) == {}
