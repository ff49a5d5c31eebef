"""RDS and Aurora clone activities against a real moto server."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.aws import AwsClients, Waits
from activities.aws.network import NetworkActivities
from activities.aws.rds import RdsActivities, seed_snapshot_name, writer_name
from activities.errors import FOREIGN_RESOURCE, INVALID_INPUT
from domain.naming import Ownership
from domain.resources import (
    AuroraCloneSpec,
    AwsTarget,
    RdsCloneSpec,
    StepInput,
    StepOutput,
    VpcSpec,
)
from engine.keyring import Keyring
from engine.sealing import Sealer
from tests.plugins.moto import REGION, MotoServer

ENV = "shop-pr-7-abc123"
OWNER = Ownership(environment=ENV)
TARGET = AwsTarget(region=REGION)
CLONE = "pv-shop-pr-7-abc123-db"
SEALER = Sealer(Keyring.parse("test-1:" + base64.b64encode(b"k" * 32).decode()))
WAITS = Waits(timeout=10, interval=0.05)


@pytest.fixture
def rds_activities(aws_clients: AwsClients) -> RdsActivities:
    return RdsActivities(aws_clients, SEALER, WAITS)


@pytest.fixture
def source(moto_reset: MotoServer) -> str:
    moto_reset.client("rds").create_db_instance(
        DBInstanceIdentifier="shop-prod", Engine="postgres", DBInstanceClass="db.t4g.micro",
        MasterUsername="app", MasterUserPassword="source-password", DBName="shop",
        AllocatedStorage=20,
    )
    return "shop-prod"


def rds_spec(**changes: Any) -> RdsCloneSpec:
    fields: dict[str, Any] = {"owner": OWNER, "target": TARGET, "identifier": CLONE,
                              "source_instance": "shop-prod"}
    return RdsCloneSpec(**{**fields, **changes})


def run(fn: Any, spec: Any, **upstream: StepOutput) -> Any:
    return ActivityEnvironment().run(fn, StepInput(spec=spec, upstream=upstream))


def snapshots(moto: MotoServer, kind: str) -> list[str]:
    found = moto.client("rds").describe_db_snapshots(SnapshotType=kind)["DBSnapshots"]
    return sorted(s["DBSnapshotIdentifier"] for s in found)


def tagged_ours(moto: MotoServer) -> list[str]:
    """Every RDS instance, cluster and snapshot carrying the environment's tag."""
    rds = moto.client("rds")
    mark = {"Key": "preview-environment", "Value": ENV}
    return sorted(
        [i["DBInstanceIdentifier"] for i in rds.describe_db_instances()["DBInstances"]
         if mark in i.get("TagList", [])]
        + [c["DBClusterIdentifier"] for c in rds.describe_db_clusters()["DBClusters"]
           if mark in c.get("TagList", [])]
        + [s["DBSnapshotIdentifier"] for s in rds.describe_db_snapshots()["DBSnapshots"]
           if mark in s.get("TagList", [])]
    )


def check_connection(output: StepOutput, database: str = "shop") -> str:
    """The output's sealed URL matches its values; → the (unsealed) password."""
    password = SEALER.unseal(output.secrets["password"])
    assert len(password) >= 24
    values = output.values
    assert values["user"] == "app" and values["database"] == database
    assert SEALER.unseal(output.secrets["url"]) == (
        f"postgresql://app:{password}@{values['host']}:{values['port']}/{database}"
    )
    assert password not in output.model_dump_json()  # only ever sealed
    return password


def test_clone_reuses_a_young_snapshot_and_twice_changes_nothing(
    rds_activities: RdsActivities, source: str, moto_reset: MotoServer
) -> None:
    automated_before = snapshots(moto_reset, "automated")
    first: StepOutput = run(rds_activities.ensure_rds_clone, rds_spec())
    password = check_connection(first)
    assert snapshots(moto_reset, "manual") == []  # the source's automated one was used

    rds = moto_reset.client("rds")
    clone = rds.describe_db_instances(DBInstanceIdentifier=CLONE)["DBInstances"][0]
    assert clone["DBInstanceStatus"] == "available"
    assert {"Key": "managed-by", "Value": "preview-engine"} in clone["TagList"]
    assert first.values["host"] == clone["Endpoint"]["Address"]

    second: StepOutput = run(rds_activities.ensure_rds_clone, rds_spec())
    assert second.values == first.values
    # A fresh password each time: it is never stored where we could read it back.
    assert check_connection(second) != password
    assert tagged_ours(moto_reset) == sorted([CLONE])
    assert snapshots(moto_reset, "manual") == []
    assert len(snapshots(moto_reset, "automated")) == len(automated_before) + 1  # the clone's


def test_an_old_snapshot_means_a_fresh_one(
    rds_activities: RdsActivities, source: str, moto_reset: MotoServer
) -> None:
    # Every existing snapshot is older than zero hours.
    spec = rds_spec(snapshot_max_age_hours=0)
    run(rds_activities.ensure_rds_clone, spec)
    run(rds_activities.ensure_rds_clone, spec)
    seed = seed_snapshot_name(CLONE)
    assert snapshots(moto_reset, "manual") == [seed]
    detail = moto_reset.client("rds").describe_db_snapshots(DBSnapshotIdentifier=seed)[
        "DBSnapshots"][0]
    assert detail["DBInstanceIdentifier"] == source
    assert tagged_ours(moto_reset) == sorted([CLONE, seed])


def test_a_half_done_clone_reuses_its_own_snapshot(
    rds_activities: RdsActivities, source: str, moto_reset: MotoServer
) -> None:
    seed = seed_snapshot_name(CLONE)
    moto_reset.client("rds").create_db_snapshot(
        DBSnapshotIdentifier=seed, DBInstanceIdentifier=source,
        Tags=[{"Key": k, "Value": v} for k, v in OWNER.tags().items()],
    )
    run(rds_activities.ensure_rds_clone, rds_spec(snapshot_max_age_hours=0))
    assert snapshots(moto_reset, "manual") == [seed]
    assert tagged_ours(moto_reset) == sorted([CLONE, seed])


def test_remove_leaves_nothing_tagged_and_absent_is_success(
    rds_activities: RdsActivities, source: str, moto_reset: MotoServer
) -> None:
    run(rds_activities.remove_rds_clone, rds_spec())  # nothing yet
    spec = rds_spec(snapshot_max_age_hours=0)
    run(rds_activities.ensure_rds_clone, spec)
    run(rds_activities.remove_rds_clone, spec)
    assert tagged_ours(moto_reset) == []
    assert not any(s.startswith(f"rds:{CLONE}") for s in snapshots(moto_reset, "automated"))
    assert [i["DBInstanceIdentifier"] for i in
            moto_reset.client("rds").describe_db_instances()["DBInstances"]] == [source]
    run(rds_activities.remove_rds_clone, spec)


def test_refuses_and_keeps_a_same_named_instance_that_is_not_ours(
    rds_activities: RdsActivities, source: str, moto_reset: MotoServer
) -> None:
    moto_reset.client("rds").create_db_instance(
        DBInstanceIdentifier=CLONE, Engine="postgres", DBInstanceClass="db.t4g.micro",
        MasterUsername="x", MasterUserPassword="theirs-password", AllocatedStorage=20,
    )
    with pytest.raises(ApplicationError) as caught:
        run(rds_activities.ensure_rds_clone, rds_spec())
    assert caught.value.type == FOREIGN_RESOURCE
    assert caught.value.non_retryable
    run(rds_activities.remove_rds_clone, rds_spec())
    assert moto_reset.client("rds").describe_db_instances(DBInstanceIdentifier=CLONE)[
        "DBInstances"]


def test_clone_goes_into_the_upstream_vpc(
    aws_clients: AwsClients, rds_activities: RdsActivities, source: str, moto_reset: MotoServer
) -> None:
    network = NetworkActivities(aws_clients, WAITS)
    vpc = VpcSpec(owner=OWNER, target=TARGET, name=f"{ENV}-net")
    vpc_output: StepOutput = run(network.ensure_vpc, vpc)
    run(rds_activities.ensure_rds_clone, rds_spec(vpc_step="network"), network=vpc_output)
    clone = moto_reset.client("rds").describe_db_instances(DBInstanceIdentifier=CLONE)[
        "DBInstances"][0]
    assert clone["DBSubnetGroup"]["DBSubnetGroupName"] == vpc_output.values["db_subnet_group"]
    assert [g["VpcSecurityGroupId"] for g in clone["VpcSecurityGroups"]] == [
        vpc_output.values["security_group_id"]]

    # Without the upstream output the step cannot run: bad input, not a retry.
    with pytest.raises(ApplicationError) as caught:
        run(rds_activities.ensure_rds_clone, rds_spec(identifier="pv-other", vpc_step="network"))
    assert caught.value.type == INVALID_INPUT


def test_a_missing_source_is_invalid_input(
    rds_activities: RdsActivities, moto_reset: MotoServer
) -> None:
    with pytest.raises(ApplicationError) as caught:
        run(rds_activities.ensure_rds_clone, rds_spec())
    assert caught.value.type == INVALID_INPUT


# --- Aurora -----------------------------------------------------------------------------


@pytest.fixture
def source_cluster(moto_reset: MotoServer) -> str:
    moto_reset.client("rds").create_db_cluster(
        DBClusterIdentifier="shop-aurora", Engine="aurora-postgresql", MasterUsername="app",
        MasterUserPassword="source-password", DatabaseName="shop",
    )
    return "shop-aurora"


def aurora_spec(**changes: Any) -> AuroraCloneSpec:
    fields: dict[str, Any] = {"owner": OWNER, "target": TARGET, "identifier": CLONE,
                              "source_cluster": "shop-aurora"}
    return AuroraCloneSpec(**{**fields, **changes})


def test_aurora_clone_twice_then_remove(
    rds_activities: RdsActivities, source_cluster: str, moto_reset: MotoServer
) -> None:
    first: StepOutput = run(rds_activities.ensure_aurora_clone, aurora_spec())
    check_connection(first)
    rds = moto_reset.client("rds")
    cluster = rds.describe_db_clusters(DBClusterIdentifier=CLONE)["DBClusters"][0]
    assert first.values["host"] == cluster["Endpoint"]
    assert [m["DBInstanceIdentifier"] for m in cluster["DBClusterMembers"]] == [writer_name(CLONE)]

    second: StepOutput = run(rds_activities.ensure_aurora_clone, aurora_spec())
    assert second.values == first.values
    assert tagged_ours(moto_reset) == sorted([CLONE, writer_name(CLONE)])

    run(rds_activities.remove_aurora_clone, aurora_spec())
    assert tagged_ours(moto_reset) == []
    assert [c["DBClusterIdentifier"] for c in rds.describe_db_clusters()["DBClusters"]] == [
        source_cluster]
    run(rds_activities.remove_aurora_clone, aurora_spec())  # absent: success


def test_aurora_half_done_clone_gets_its_writer(
    rds_activities: RdsActivities, source_cluster: str, moto_reset: MotoServer
) -> None:
    # The cluster was restored, then the attempt stopped before the writer instance.
    moto_reset.client("rds").restore_db_cluster_to_point_in_time(
        DBClusterIdentifier=CLONE, SourceDBClusterIdentifier=source_cluster,
        RestoreType="copy-on-write", UseLatestRestorableTime=True,
        Tags=[{"Key": k, "Value": v} for k, v in OWNER.tags().items()],
    )
    output: StepOutput = run(rds_activities.ensure_aurora_clone, aurora_spec())
    check_connection(output)
    assert tagged_ours(moto_reset) == sorted([CLONE, writer_name(CLONE)])


def test_aurora_refuses_a_cluster_that_is_not_ours(
    rds_activities: RdsActivities, source_cluster: str, moto_reset: MotoServer
) -> None:
    with pytest.raises(ApplicationError) as caught:
        run(rds_activities.ensure_aurora_clone, aurora_spec(identifier=source_cluster))
    assert caught.value.type == FOREIGN_RESOURCE
    run(rds_activities.remove_aurora_clone, aurora_spec(identifier=source_cluster))
    assert moto_reset.client("rds").describe_db_clusters(DBClusterIdentifier=source_cluster)[
        "DBClusters"]
