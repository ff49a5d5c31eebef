"""RDS and Aurora clones of a source database, one per preview.

RDS: restored from the source's newest snapshot when it is young enough, else from a
fresh manual snapshot with a deterministic name (kept, tagged ours, until removal, so a
retry finds it instead of taking another). Aurora: a copy-on-write clone of the source
cluster plus one writer instance.

The master password is reset on every ensure: it is never stored anywhere we could read
it back, so the output must carry a password that works now. It leaves the activity only
sealed (StepOutput.secrets), never in values, logs or errors.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from botocore.exceptions import ClientError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.aws.clients import (
    AwsClients,
    Waits,
    failed,
    is_error,
    is_ours,
    owned_tags,
    owning_environment,
    poll,
    tag_dict,
    tag_list,
)
from activities.errors import foreign_resource, invalid_input
from domain.naming import Ownership, dns_label
from domain.resources import AuroraCloneSpec, RdsCloneSpec, StepInput, StepOutput
from engine.sealing import Sealer

if TYPE_CHECKING:
    from mypy_boto3_rds import RDSClient
    from mypy_boto3_rds.type_defs import DBClusterTypeDef, DBInstanceTypeDef

CLUSTER, INSTANCE, SNAPSHOT = "aurora cluster", "rds instance", "db snapshot"
INSTANCE_NOT_FOUND = ("DBInstanceNotFound", "DBInstanceNotFoundFault")
CLUSTER_NOT_FOUND = ("DBClusterNotFoundFault", "DBClusterNotFound")
SNAPSHOT_NOT_FOUND = ("DBSnapshotNotFound", "DBSnapshotNotFoundFault")
# States an instance or cluster does not leave by waiting.
BROKEN = {
    "failed", "incompatible-restore", "incompatible-parameters", "incompatible-network",
    "incompatible-option-group", "restore-error", "storage-full",
    "inaccessible-encryption-credentials", "inaccessible-encryption-credentials-recoverable",
}


def seed_snapshot_name(identifier: str) -> str:
    return dns_label(identifier, "seed")


def writer_name(cluster_identifier: str) -> str:
    return dns_label(cluster_identifier, "writer")


def _new_password() -> str:
    # URL-safe alphabet: none of the characters RDS forbids (/ " @ space).
    return secrets.token_urlsafe(24)


def _get(describe: Callable[[], list[Any]], not_found: tuple[str, ...]) -> Any:
    try:
        found = describe()
    except ClientError as error:
        if is_error(error, *not_found):
            return None
        raise
    return found[0] if found else None


def get_instance(rds: RDSClient, identifier: str) -> DBInstanceTypeDef | None:
    return _get(  # type: ignore[no-any-return]
        lambda: rds.describe_db_instances(DBInstanceIdentifier=identifier)["DBInstances"],
        INSTANCE_NOT_FOUND,
    )


def get_cluster(rds: RDSClient, identifier: str) -> DBClusterTypeDef | None:
    return _get(  # type: ignore[no-any-return]
        lambda: rds.describe_db_clusters(DBClusterIdentifier=identifier)["DBClusters"],
        CLUSTER_NOT_FOUND,
    )


def _check_ours(
    resource: DBInstanceTypeDef | DBClusterTypeDef, what: str, owner: Ownership
) -> None:
    if not is_ours(tag_dict(resource.get("TagList")), owner):
        raise foreign_resource(what, owner.environment)


def _network(step: StepInput, vpc_step: str | None) -> dict[str, Any]:
    """Subnet group and security group from the upstream VPC step, as restore arguments."""
    if vpc_step is None:
        return {}
    output = step.upstream.get(vpc_step)
    if output is None:
        raise invalid_input(f"the database clone needs the output of step {vpc_step!r}")
    try:
        return {
            "DBSubnetGroupName": output.values["db_subnet_group"],
            "VpcSecurityGroupIds": [output.values["security_group_id"]],
        }
    except KeyError as missing:
        raise invalid_input(f"step {vpc_step!r} has no output {missing}") from None


def _ready(status: str, what: str) -> bool:
    if status in BROKEN:
        raise failed(f"{what} is {status}")
    return status == "available"


class RdsActivities:
    def __init__(self, aws: AwsClients, sealer: Sealer, waits: Waits | None = None) -> None:
        self.aws = aws
        self.sealer = sealer
        self.waits = waits or Waits(timeout=3 * 3600, interval=20)

    # --- RDS instance clone -----------------------------------------------------------

    @activity.defn(name=RdsCloneSpec.present)
    def ensure_rds_clone(self, step: StepInput) -> StepOutput:
        spec = step.spec_as(RdsCloneSpec)
        rds = self.aws.rds(spec.target)
        network = _network(step, spec.vpc_step)  # bad input fails before any side effect
        what = f"RDS instance {spec.identifier}"
        instance = self._live(
            lambda: get_instance(rds, spec.identifier), "DBInstanceStatus", what, spec.owner
        )
        if instance is None:
            snapshot = self._source_snapshot(rds, spec)
            try:
                rds.restore_db_instance_from_db_snapshot(
                    DBInstanceIdentifier=spec.identifier,
                    DBSnapshotIdentifier=snapshot,
                    DBInstanceClass=spec.instance_class,
                    MultiAZ=False,
                    PubliclyAccessible=False,
                    DeletionProtection=False,
                    Tags=tag_list(owned_tags(spec.owner, spec.identifier)),
                    **network,
                )
            except ClientError as error:
                # A concurrent attempt won the race: fall through to the tag check.
                if not is_error(error, "DBInstanceAlreadyExists"):
                    raise
            instance = get_instance(rds, spec.identifier)
            assert instance is not None
        _check_ours(instance, what, spec.owner)
        self._wait_instance(rds, spec.identifier)

        password = _new_password()
        rds.modify_db_instance(
            DBInstanceIdentifier=spec.identifier, MasterUserPassword=password, ApplyImmediately=True
        )
        instance = self._wait_instance(rds, spec.identifier, password_applied=True)
        endpoint = instance.get("Endpoint", {})
        return self._connection(
            host=endpoint.get("Address", ""),
            port=endpoint.get("Port", 5432),
            user=instance.get("MasterUsername", ""),
            database=instance.get("DBName") or "postgres",
            password=password,
            extra={"identifier": spec.identifier},
        )

    @activity.defn(name=RdsCloneSpec.absent)
    def remove_rds_clone(self, step: StepInput) -> None:
        spec = step.spec_as(RdsCloneSpec)
        rds = self.aws.rds(spec.target)
        remove_instance(rds, spec.owner, spec.identifier, self.waits)
        remove_snapshot(rds, spec.owner, seed_snapshot_name(spec.identifier))

    def _live(self, lookup: Callable[[], Any], status_key: str, what: str,
              owner: Ownership) -> Any:
        """What `lookup` finds (checked ours), or None; one being deleted is waited out
        (e.g. a removal just before a re-deploy) so that it can be created afresh."""
        found = lookup()
        if found is None:
            return None
        _check_ours(found, what, owner)
        if found.get(status_key) != "deleting":
            return found
        poll(lambda: True if lookup() is None else None,
             what=f"{what} deleted before re-creating it", waits=self.waits)
        return None

    def _source_snapshot(self, rds: RDSClient, spec: RdsCloneSpec) -> str:
        """The snapshot to restore: ours from an earlier attempt, the source's newest
        if younger than `snapshot_max_age_hours`, else a fresh one."""
        name = seed_snapshot_name(spec.identifier)
        ours = _get(
            lambda: rds.describe_db_snapshots(DBSnapshotIdentifier=name)["DBSnapshots"],
            SNAPSHOT_NOT_FOUND,
        )
        if ours is None:
            if get_instance(rds, spec.source_instance) is None:
                raise invalid_input(f"source RDS instance {spec.source_instance} does not exist")
            young = datetime.now(UTC) - timedelta(hours=spec.snapshot_max_age_hours)
            candidates = [
                snapshot
                for page in rds.get_paginator("describe_db_snapshots").paginate(
                    DBInstanceIdentifier=spec.source_instance
                )
                for snapshot in page["DBSnapshots"]
                if snapshot.get("Status") == "available"
                and snapshot.get("SnapshotType") in ("automated", "manual")
                and snapshot.get("SnapshotCreateTime", young) > young
            ]
            if candidates:
                newest = max(candidates, key=lambda s: s["SnapshotCreateTime"])
                return newest["DBSnapshotIdentifier"]
            rds.create_db_snapshot(
                DBSnapshotIdentifier=name,
                DBInstanceIdentifier=spec.source_instance,
                Tags=tag_list(owned_tags(spec.owner, name)),
            )
        elif not is_ours(tag_dict(ours.get("TagList")), spec.owner):
            raise foreign_resource(f"DB snapshot {name}", spec.owner.environment)

        def available() -> str | None:
            status = rds.describe_db_snapshots(DBSnapshotIdentifier=name)["DBSnapshots"][0].get(
                "Status", ""
            )
            return name if _ready(status, f"snapshot {name}") else None

        return poll(available, what=f"snapshot {name} of {spec.source_instance}", waits=self.waits)

    def _wait_instance(
        self, rds: RDSClient, identifier: str, password_applied: bool = False
    ) -> DBInstanceTypeDef:
        def available() -> DBInstanceTypeDef | None:
            instance = get_instance(rds, identifier)
            if instance is None:
                # Deleted under us (a concurrent removal): the next attempt starts over.
                raise ApplicationError(f"RDS instance {identifier} disappeared; retrying")
            # Right after a modify the status may still read "available" with the new
            # password only pending: wait until it is applied.
            pending = password_applied and "MasterUserPassword" in instance.get(
                "PendingModifiedValues", {}
            )
            ready = _ready(instance.get("DBInstanceStatus", ""), f"RDS instance {identifier}")
            return instance if ready and not pending else None

        return poll(available, what=f"RDS instance {identifier} available", waits=self.waits)

    # --- Aurora cluster clone ---------------------------------------------------------

    @activity.defn(name=AuroraCloneSpec.present)
    def ensure_aurora_clone(self, step: StepInput) -> StepOutput:
        spec = step.spec_as(AuroraCloneSpec)
        rds = self.aws.rds(spec.target)
        network = _network(step, spec.vpc_step)  # bad input fails before any side effect
        cluster = self._live(
            lambda: get_cluster(rds, spec.identifier), "Status",
            f"Aurora cluster {spec.identifier}", spec.owner,
        )
        if cluster is None:
            if get_cluster(rds, spec.source_cluster) is None:
                raise invalid_input(f"source Aurora cluster {spec.source_cluster} does not exist")
            try:
                rds.restore_db_cluster_to_point_in_time(
                    DBClusterIdentifier=spec.identifier,
                    SourceDBClusterIdentifier=spec.source_cluster,
                    RestoreType="copy-on-write",
                    UseLatestRestorableTime=True,
                    DeletionProtection=False,
                    Tags=tag_list(owned_tags(spec.owner, spec.identifier)),
                    **network,
                )
            except ClientError as error:
                if not is_error(error, "DBClusterAlreadyExistsFault"):
                    raise
            cluster = get_cluster(rds, spec.identifier)
            assert cluster is not None
        _check_ours(cluster, f"Aurora cluster {spec.identifier}", spec.owner)
        self._wait_cluster(rds, spec.identifier)

        writer = writer_name(spec.identifier)
        instance = get_instance(rds, writer)
        if instance is None:
            try:
                rds.create_db_instance(
                    DBInstanceIdentifier=writer,
                    DBClusterIdentifier=spec.identifier,
                    Engine=cluster.get("Engine", "aurora-postgresql"),
                    DBInstanceClass=spec.instance_class,
                    PubliclyAccessible=False,
                    Tags=tag_list(owned_tags(spec.owner, writer)),
                )
            except ClientError as error:
                if not is_error(error, "DBInstanceAlreadyExists"):
                    raise
            instance = get_instance(rds, writer)
            assert instance is not None
        _check_ours(instance, f"RDS instance {writer}", spec.owner)
        if instance.get("DBClusterIdentifier") != spec.identifier:
            raise foreign_resource(f"RDS instance {writer} (in another cluster)",
                                   spec.owner.environment)
        self._wait_instance(rds, writer)

        password = _new_password()
        rds.modify_db_cluster(
            DBClusterIdentifier=spec.identifier, MasterUserPassword=password, ApplyImmediately=True
        )
        cluster = self._wait_cluster(rds, spec.identifier, password_applied=True)
        return self._connection(
            host=cluster.get("Endpoint", ""),
            port=cluster.get("Port", 5432),
            user=cluster.get("MasterUsername", ""),
            database=cluster.get("DatabaseName") or "postgres",
            password=password,
            extra={"identifier": spec.identifier, "writer": writer},
        )

    @activity.defn(name=AuroraCloneSpec.absent)
    def remove_aurora_clone(self, step: StepInput) -> None:
        spec = step.spec_as(AuroraCloneSpec)
        remove_cluster(self.aws.rds(spec.target), spec.owner, spec.identifier, self.waits)

    def _wait_cluster(
        self, rds: RDSClient, identifier: str, password_applied: bool = False
    ) -> DBClusterTypeDef:
        def available() -> DBClusterTypeDef | None:
            cluster = get_cluster(rds, identifier)
            if cluster is None:
                raise ApplicationError(f"Aurora cluster {identifier} disappeared; retrying")
            pending = password_applied and "MasterUserPassword" in cluster.get(
                "PendingModifiedValues", {}
            )
            ready = _ready(cluster.get("Status", ""), f"Aurora cluster {identifier}")
            return cluster if ready and not pending else None

        return poll(available, what=f"Aurora cluster {identifier} available", waits=self.waits)

    # --- output -----------------------------------------------------------------------

    def _connection(
        self, *, host: str, port: int, user: str, database: str, password: str,
        extra: dict[str, str],
    ) -> StepOutput:
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
        url = f"postgresql://{credentials}@{host}:{port}/{database}"
        return StepOutput(
            values={"host": host, "port": str(port), "user": user, "database": database, **extra},
            secrets={"password": self.sealer.seal(password), "url": self.sealer.seal(url)},
        )


# --- removal (also used by the orphan sweeper) -------------------------------------------


def remove_instance(rds: RDSClient, owner: Ownership, identifier: str, waits: Waits) -> list[str]:
    instance = get_instance(rds, identifier)
    if instance is None:
        return []
    if not is_ours(tag_dict(instance.get("TagList")), owner):
        activity.logger.warning("RDS instance %s is not ours; leaving it", identifier)
        return []
    if instance.get("DBInstanceStatus") != "deleting":
        try:
            rds.delete_db_instance(
                DBInstanceIdentifier=identifier, SkipFinalSnapshot=True, DeleteAutomatedBackups=True
            )
        except ClientError as error:
            # InvalidDBInstanceState (e.g. mid-modification) is retried by the activity policy.
            if not is_error(error, *INSTANCE_NOT_FOUND):
                raise
    poll(lambda: True if get_instance(rds, identifier) is None else None,
         what=f"RDS instance {identifier} deleted", waits=waits)
    return [f"rds instance {identifier}"]


def remove_snapshot(rds: RDSClient, owner: Ownership, name: str) -> list[str]:
    snapshot = _get(
        lambda: rds.describe_db_snapshots(DBSnapshotIdentifier=name)["DBSnapshots"],
        SNAPSHOT_NOT_FOUND,
    )
    if snapshot is None or not is_ours(tag_dict(snapshot.get("TagList")), owner):
        return []
    try:
        rds.delete_db_snapshot(DBSnapshotIdentifier=name)
    except ClientError as error:
        if not is_error(error, *SNAPSHOT_NOT_FOUND):
            raise
    return [f"db snapshot {name}"]


def remove_cluster(rds: RDSClient, owner: Ownership, identifier: str, waits: Waits) -> list[str]:
    """Delete the cluster's instances that are ours, then the cluster itself."""
    cluster = get_cluster(rds, identifier)
    if cluster is None:
        return []
    if not is_ours(tag_dict(cluster.get("TagList")), owner):
        return []
    removed: list[str] = []
    members = {m.get("DBInstanceIdentifier", "") for m in cluster.get("DBClusterMembers", [])}
    for member in sorted(members | {writer_name(identifier)}):
        removed += remove_instance(rds, owner, member, waits)
    if cluster.get("Status") != "deleting":
        try:
            rds.delete_db_cluster(
                DBClusterIdentifier=identifier, SkipFinalSnapshot=True, DeleteAutomatedBackups=True
            )
        except ClientError as error:
            if not is_error(error, *CLUSTER_NOT_FOUND):
                raise
    poll(lambda: True if get_cluster(rds, identifier) is None else None,
         what=f"Aurora cluster {identifier} deleted", waits=waits)
    return [*removed, f"aurora cluster {identifier}"]


def creation_times(rds: RDSClient) -> dict[str, list[datetime]]:
    """When each RDS instance, Aurora cluster and manual snapshot tagged ours was made:
    env id → creation times (the sweeper keeps an environment made too recently)."""
    found: dict[str, list[datetime]] = {}

    def add(tags: Any, created: datetime | None) -> None:
        # No creation time yet: still being created (a restore takes many minutes): new.
        if env := owning_environment(tag_dict(tags)):
            found.setdefault(env, []).append(created or datetime.now(UTC))

    for clusters in rds.get_paginator("describe_db_clusters").paginate():
        for cluster in clusters["DBClusters"]:
            add(cluster.get("TagList"), cluster.get("ClusterCreateTime"))
    for instances in rds.get_paginator("describe_db_instances").paginate():
        for instance in instances["DBInstances"]:
            add(instance.get("TagList"), instance.get("InstanceCreateTime"))
    for snapshots in rds.get_paginator("describe_db_snapshots").paginate(SnapshotType="manual"):
        for snapshot in snapshots["DBSnapshots"]:
            add(snapshot.get("TagList"), snapshot.get("SnapshotCreateTime"))
    return found


def list_databases(rds: RDSClient) -> dict[str, list[tuple[str, str]]]:
    """RDS instances, Aurora clusters and manual snapshots tagged ours:
    env id → [(kind, identifier)], kind one of CLUSTER, INSTANCE, SNAPSHOT."""
    found: dict[str, list[tuple[str, str]]] = {}

    def add(tags: Any, kind: str, identifier: str) -> None:
        if env := owning_environment(tag_dict(tags)):
            found.setdefault(env, []).append((kind, identifier))

    for clusters in rds.get_paginator("describe_db_clusters").paginate():
        for cluster in clusters["DBClusters"]:
            add(cluster.get("TagList"), CLUSTER, cluster["DBClusterIdentifier"])
    for instances in rds.get_paginator("describe_db_instances").paginate():
        for instance in instances["DBInstances"]:
            if not instance.get("DBClusterIdentifier"):  # members go with their cluster
                add(instance.get("TagList"), INSTANCE, instance["DBInstanceIdentifier"])
    for snapshots in rds.get_paginator("describe_db_snapshots").paginate(SnapshotType="manual"):
        for snapshot in snapshots["DBSnapshots"]:
            add(snapshot.get("TagList"), SNAPSHOT, snapshot["DBSnapshotIdentifier"])
    return found
