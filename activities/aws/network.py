"""The preview's own VPC: subnets in two AZs, a route table, the database security group,
an RDS subnet group and, when asked, a peering to the cluster's VPC.

Every piece is found by its Name tag plus our ownership mark before anything is created,
so a retry after a half-done run adopts what exists and creates only what is missing.
Teardown deletes only what carries our mark for the environment, in dependency order.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError
from temporalio import activity

from activities.aws.clients import (
    AwsClients,
    Waits,
    ec2_filters,
    failed,
    is_error,
    is_ours,
    owned_tags,
    ownership_filters,
    owning_environment,
    poll,
    tag_dict,
    tag_list,
)
from activities.errors import foreign_resource, invalid_input
from domain.naming import Ownership, stable_hash
from domain.resources import StepInput, StepOutput, VpcSpec

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.literals import ResourceTypeType
    from mypy_boto3_ec2.type_defs import (
        IpPermissionOutputTypeDef,
        RouteTableTypeDef,
        TagSpecificationTypeDef,
        VpcPeeringConnectionTypeDef,
    )
    from mypy_boto3_rds import RDSClient

POSTGRES_PORT = 5432
# Peering states that still hold (or will hold) a connection; others are history.
LIVE_PEERING = ["initiating-request", "pending-acceptance", "provisioning", "active"]


def _tag_spec(kind: ResourceTypeType, owner: Ownership, name: str) -> list[TagSpecificationTypeDef]:
    # Tags in the create call itself: no window where the resource exists unmarked.
    return [{"ResourceType": kind, "Tags": tag_list(owned_tags(owner, name))}]


class NetworkActivities:
    def __init__(self, aws: AwsClients, waits: Waits | None = None) -> None:
        self.aws = aws
        self.waits = waits or Waits(timeout=600, interval=5)

    @activity.defn(name=VpcSpec.present)
    def ensure_vpc(self, step: StepInput) -> StepOutput:
        spec = step.spec_as(VpcSpec)
        ec2, rds = self.aws.ec2(spec.target), self.aws.rds(spec.target)
        vpc_id = self._ensure_vpc(ec2, spec)
        route_table_id = self._ensure_route_table(ec2, spec, vpc_id)
        subnet_ids = self._ensure_subnets(ec2, spec, vpc_id, route_table_id)
        allowed_cidr = spec.cidr
        if spec.peer_vpc_id:
            allowed_cidr = self._ensure_peering(ec2, spec, vpc_id, route_table_id)
        group_id = self._ensure_security_group(ec2, spec, vpc_id, allowed_cidr)
        subnet_group = self._ensure_subnet_group(rds, spec, subnet_ids)
        return StepOutput(
            values={
                "vpc_id": vpc_id,
                "subnet_ids": ",".join(subnet_ids),
                "security_group_id": group_id,
                "db_subnet_group": subnet_group,
            }
        )

    @activity.defn(name=VpcSpec.absent)
    def remove_vpc(self, step: StepInput) -> None:
        spec = step.spec_as(VpcSpec)
        remove_vpcs(self.aws.ec2(spec.target), self.aws.rds(spec.target), spec.owner, spec.name)

    # --- the VPC ----------------------------------------------------------------------

    def _ensure_vpc(self, ec2: EC2Client, spec: VpcSpec) -> str:
        same_name = ec2.describe_vpcs(Filters=ec2_filters(**{"tag:Name": spec.name}))["Vpcs"]
        ours = sorted(
            (v for v in same_name if is_ours(tag_dict(v.get("Tags")), spec.owner)),
            key=lambda v: v["VpcId"],
        )
        if not ours and same_name:
            raise foreign_resource(f"VPC named {spec.name!r}", spec.owner.environment)
        if ours:
            vpc = ours[0]
            if vpc["CidrBlock"] != spec.cidr:
                raise invalid_input(
                    f"VPC {vpc['VpcId']} ({spec.name}) has CIDR {vpc['CidrBlock']}, the blueprint "
                    f"asks for {spec.cidr}; remove the environment's network first"
                )
        else:
            vpc = ec2.create_vpc(
                CidrBlock=spec.cidr, TagSpecifications=_tag_spec("vpc", spec.owner, spec.name)
            )["Vpc"]
        vpc_id = vpc["VpcId"]

        def available() -> str | None:
            state = ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0]["State"]
            return vpc_id if state == "available" else None

        return poll(available, what=f"VPC {vpc_id} available", waits=self.waits)

    # --- route table and subnets ------------------------------------------------------

    def _ensure_route_table(self, ec2: EC2Client, spec: VpcSpec, vpc_id: str) -> str:
        name = f"{spec.name}-rt"
        found = ec2.describe_route_tables(
            Filters=[*ec2_filters(**{"vpc-id": vpc_id}), *ownership_filters(spec.owner, name)]
        )["RouteTables"]
        if found:
            return found[0]["RouteTableId"]
        return ec2.create_route_table(
            VpcId=vpc_id,
            # Same token on a retry: EC2 returns the first table instead of a second one.
            ClientToken=f"{spec.owner.environment}-{stable_hash(vpc_id + name, 16)}"[:64],
            TagSpecifications=_tag_spec("route-table", spec.owner, name),
        )["RouteTable"]["RouteTableId"]

    def _ensure_subnets(
        self, ec2: EC2Client, spec: VpcSpec, vpc_id: str, route_table_id: str
    ) -> list[str]:
        zones = sorted(
            zone["ZoneName"]
            for zone in ec2.describe_availability_zones()["AvailabilityZones"]
            if zone.get("State") == "available"
            and zone.get("ZoneType", "availability-zone") == "availability-zone"
        )
        if len(zones) < 2:
            raise invalid_input(f"region {spec.target.region} has fewer than two available AZs")
        # RDS subnet groups need two AZs: split the VPC's range in two halves.
        halves = list(ipaddress.ip_network(spec.cidr).subnets(prefixlen_diff=1))
        table = ec2.describe_route_tables(RouteTableIds=[route_table_id])["RouteTables"][0]
        associated = {a.get("SubnetId") for a in table.get("Associations", [])}
        subnet_ids = []
        for index, (zone, cidr) in enumerate(zip(zones[:2], halves, strict=True)):
            name = f"{spec.name}-{index}"
            found = ec2.describe_subnets(
                Filters=[*ec2_filters(**{"vpc-id": vpc_id}), *ownership_filters(spec.owner, name)]
            )["Subnets"]
            if found:
                subnet_id = found[0]["SubnetId"]
            else:
                subnet_id = ec2.create_subnet(
                    VpcId=vpc_id,
                    CidrBlock=str(cidr),
                    AvailabilityZone=zone,
                    TagSpecifications=_tag_spec("subnet", spec.owner, name),
                )["Subnet"]["SubnetId"]
            if subnet_id not in associated:
                ec2.associate_route_table(RouteTableId=route_table_id, SubnetId=subnet_id)
            subnet_ids.append(subnet_id)
        return subnet_ids

    # --- peering with the cluster's VPC -----------------------------------------------

    def _ensure_peering(
        self, ec2: EC2Client, spec: VpcSpec, vpc_id: str, route_table_id: str
    ) -> str:
        """Peer with `peer_vpc_id` (same account and region), route both ways; → peer CIDR."""
        assert spec.peer_vpc_id is not None
        peer_id = spec.peer_vpc_id
        found = ec2.describe_vpc_peering_connections(
            Filters=[
                *ec2_filters(**{
                    "requester-vpc-info.vpc-id": vpc_id,
                    "accepter-vpc-info.vpc-id": peer_id,
                    "status-code": LIVE_PEERING,
                }),
                *ownership_filters(spec.owner),
            ]
        )["VpcPeeringConnections"]
        if found:
            peering = found[0]
        else:
            peering = ec2.create_vpc_peering_connection(
                VpcId=vpc_id,
                PeerVpcId=peer_id,
                TagSpecifications=_tag_spec(
                    "vpc-peering-connection", spec.owner, f"{spec.name}-peer"
                ),
            )["VpcPeeringConnection"]
        peering_id = peering["VpcPeeringConnectionId"]

        def active() -> VpcPeeringConnectionTypeDef | None:
            current = ec2.describe_vpc_peering_connections(
                VpcPeeringConnectionIds=[peering_id]
            )["VpcPeeringConnections"][0]
            code = current.get("Status", {}).get("Code", "")
            if code == "pending-acceptance":
                # We own both sides (the cluster VPC lives in the target account).
                ec2.accept_vpc_peering_connection(VpcPeeringConnectionId=peering_id)
                return None
            if code in ("failed", "rejected", "expired", "deleted"):
                raise failed(f"VPC peering {peering_id} to {peer_id} is {code}")
            return current if code == "active" else None

        peering = poll(active, what=f"VPC peering {peering_id} active", waits=self.waits)
        peer_cidr = peering.get("AccepterVpcInfo", {}).get("CidrBlock") or (
            ec2.describe_vpcs(VpcIds=[peer_id])["Vpcs"][0]["CidrBlock"]
        )
        own_table = ec2.describe_route_tables(RouteTableIds=[route_table_id])["RouteTables"]
        peer_tables = ec2.describe_route_tables(Filters=ec2_filters(**{"vpc-id": peer_id}))
        for table, destination in [
            *((t, peer_cidr) for t in own_table),
            *((t, spec.cidr) for t in peer_tables["RouteTables"]),
        ]:
            _ensure_route(ec2, table, destination, peering_id, spec.owner)
        return peer_cidr

    # --- security group ---------------------------------------------------------------

    def _ensure_security_group(
        self, ec2: EC2Client, spec: VpcSpec, vpc_id: str, allowed_cidr: str
    ) -> str:
        name = f"{spec.name}-db"
        found = ec2.describe_security_groups(
            Filters=ec2_filters(**{"vpc-id": vpc_id, "group-name": name})
        )["SecurityGroups"]
        if found and not is_ours(tag_dict(found[0].get("Tags")), spec.owner):
            raise foreign_resource(f"security group {name!r} in {vpc_id}", spec.owner.environment)
        if found:
            group_id, permissions = found[0]["GroupId"], found[0].get("IpPermissions", [])
        else:
            group_id = ec2.create_security_group(
                GroupName=name,
                Description=f"PostgreSQL of preview {spec.owner.environment}",
                VpcId=vpc_id,
                TagSpecifications=_tag_spec("security-group", spec.owner, name),
            )["GroupId"]
            permissions = []
        # Exactly one rule: PostgreSQL from the allowed range; drift is undone.
        stale = [p for p in permissions if not _is_postgres_from(p, allowed_cidr)]
        if stale:
            ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=stale)  # type: ignore[arg-type]
        if len(stale) == len(permissions):
            ec2.authorize_security_group_ingress(
                GroupId=group_id,
                IpPermissions=[{
                    "IpProtocol": "tcp",
                    "FromPort": POSTGRES_PORT,
                    "ToPort": POSTGRES_PORT,
                    "IpRanges": [{"CidrIp": allowed_cidr, "Description": "preview database"}],
                }],
            )
        return group_id

    # --- RDS subnet group -------------------------------------------------------------

    def _ensure_subnet_group(self, rds: RDSClient, spec: VpcSpec, subnet_ids: list[str]) -> str:
        name = spec.name.lower()  # RDS stores subnet group names in lower case
        try:
            group = rds.describe_db_subnet_groups(DBSubnetGroupName=name)["DBSubnetGroups"][0]
        except ClientError as error:
            if not is_error(error, "DBSubnetGroupNotFoundFault"):
                raise
            rds.create_db_subnet_group(
                DBSubnetGroupName=name,
                DBSubnetGroupDescription=f"Preview {spec.owner.environment}",
                SubnetIds=subnet_ids,
                Tags=tag_list(owned_tags(spec.owner, name)),
            )
            return name
        tags = rds.list_tags_for_resource(ResourceName=group["DBSubnetGroupArn"])["TagList"]
        if not is_ours(tag_dict(tags), spec.owner):
            raise foreign_resource(f"DB subnet group {name!r}", spec.owner.environment)
        if {s["SubnetIdentifier"] for s in group.get("Subnets", [])} != set(subnet_ids):
            rds.modify_db_subnet_group(DBSubnetGroupName=name, SubnetIds=subnet_ids)
        return name


def _is_postgres_from(permission: IpPermissionOutputTypeDef, cidr: str) -> bool:
    return (
        permission.get("IpProtocol") == "tcp"
        and permission.get("FromPort") == POSTGRES_PORT
        and permission.get("ToPort") == POSTGRES_PORT
        and [r.get("CidrIp") for r in permission.get("IpRanges", [])] == [cidr]
        and not permission.get("UserIdGroupPairs")
        and not permission.get("Ipv6Ranges")
        and not permission.get("PrefixListIds")
    )


def _ensure_route(
    ec2: EC2Client, table: RouteTableTypeDef, destination: str, peering_id: str, owner: Ownership
) -> None:
    table_id = table["RouteTableId"]
    for route in table.get("Routes", []):
        if route.get("DestinationCidrBlock") != destination:
            continue
        if route.get("VpcPeeringConnectionId") == peering_id:
            return
        if route.get("State") == "blackhole":
            # Its target is gone (e.g. a peering from an interrupted teardown): reuse it.
            ec2.replace_route(
                RouteTableId=table_id,
                DestinationCidrBlock=destination,
                VpcPeeringConnectionId=peering_id,
            )
            return
        raise foreign_resource(f"route to {destination} in {table_id}", owner.environment)
    ec2.create_route(
        RouteTableId=table_id, DestinationCidrBlock=destination, VpcPeeringConnectionId=peering_id
    )


# --- teardown (also used by the orphan sweeper) ------------------------------------------


def list_vpcs(ec2: EC2Client) -> dict[str, list[str]]:
    """Every VPC carrying our mark, grouped by environment id."""
    found: dict[str, list[str]] = {}
    for page in ec2.get_paginator("describe_vpcs").paginate(Filters=ownership_filters(None)):
        for vpc in page["Vpcs"]:
            tags = tag_dict(vpc.get("Tags"))
            env = owning_environment(tags)
            if env:
                found.setdefault(env, []).append(f"vpc {vpc['VpcId']} ({tags.get('Name', '')})")
    return found


def remove_vpcs(
    ec2: EC2Client, rds: RDSClient, owner: Ownership, name: str | None = None
) -> list[str]:
    """Tear down the environment's VPCs (only the one named `name` when given)."""
    removed: list[str] = []
    for vpc in ec2.describe_vpcs(Filters=ownership_filters(owner, name))["Vpcs"]:
        removed += _remove_vpc(ec2, rds, owner, vpc["VpcId"], tag_dict(vpc.get("Tags")))
    return removed


def _ignore_missing(call: Any, *codes: str, **kwargs: Any) -> bool:
    """Run a delete; "already gone" is success. → whether it deleted anything."""
    try:
        call(**kwargs)
    except ClientError as error:
        if is_error(error, *codes):
            return False
        raise
    return True


def _remove_vpc(
    ec2: EC2Client, rds: RDSClient, owner: Ownership, vpc_id: str, tags: dict[str, str]
) -> list[str]:
    removed: list[str] = []
    in_vpc = ec2_filters(**{"vpc-id": vpc_id})
    mine = ownership_filters(owner)

    # 1-2. Peerings and the routes through them, on both sides.
    peerings = ec2.describe_vpc_peering_connections(
        Filters=[*ec2_filters(**{
            "requester-vpc-info.vpc-id": vpc_id, "status-code": LIVE_PEERING
        }), *mine]
    )["VpcPeeringConnections"]
    for peering in peerings:
        peering_id = peering["VpcPeeringConnectionId"]
        tables = ec2.describe_route_tables(
            Filters=ec2_filters(**{"route.vpc-peering-connection-id": peering_id})
        )["RouteTables"]
        for table in tables:
            for route in table.get("Routes", []):
                if route.get("VpcPeeringConnectionId") == peering_id:
                    _ignore_missing(
                        ec2.delete_route, "InvalidRoute.NotFound",
                        RouteTableId=table["RouteTableId"],
                        DestinationCidrBlock=route.get("DestinationCidrBlock", ""),
                    )
                    removed.append(f"route {route.get('DestinationCidrBlock')} in "
                                   f"{table['RouteTableId']}")
        if _ignore_missing(
            ec2.delete_vpc_peering_connection, "InvalidVpcPeeringConnectionID.NotFound",
            VpcPeeringConnectionId=peering_id,
        ):
            removed.append(f"vpc peering {peering_id}")

    # 3. The RDS subnet group is named like the VPC.
    group_name = tags.get("Name", "").lower()
    if group_name:
        try:
            subnet_group = rds.describe_db_subnet_groups(DBSubnetGroupName=group_name)[
                "DBSubnetGroups"
            ][0]
        except ClientError as error:
            if not is_error(error, "DBSubnetGroupNotFoundFault"):
                raise
        else:
            group_tags = rds.list_tags_for_resource(ResourceName=subnet_group["DBSubnetGroupArn"])
            owned = is_ours(tag_dict(group_tags["TagList"]), owner)
            if subnet_group.get("VpcId") == vpc_id and owned and _ignore_missing(
                rds.delete_db_subnet_group, "DBSubnetGroupNotFoundFault",
                DBSubnetGroupName=group_name,
            ):
                removed.append(f"db subnet group {group_name}")

    # 4. Security groups (a DependencyViolation while RDS still uses one is retried).
    for group in ec2.describe_security_groups(Filters=[*in_vpc, *mine])["SecurityGroups"]:
        if _ignore_missing(ec2.delete_security_group, "InvalidGroup.NotFound",
                           GroupId=group["GroupId"]):
            removed.append(f"security group {group['GroupId']}")

    # 5. Subnets (deleting one drops its route table association).
    for subnet in ec2.describe_subnets(Filters=[*in_vpc, *mine])["Subnets"]:
        if _ignore_missing(ec2.delete_subnet, "InvalidSubnetID.NotFound",
                           SubnetId=subnet["SubnetId"]):
            removed.append(f"subnet {subnet['SubnetId']}")

    # 6. Route tables.
    for table in ec2.describe_route_tables(Filters=[*in_vpc, *mine])["RouteTables"]:
        for association in table.get("Associations", []):
            if not association.get("Main") and association.get("RouteTableAssociationId"):
                _ignore_missing(
                    ec2.disassociate_route_table, "InvalidAssociationID.NotFound",
                    AssociationId=association["RouteTableAssociationId"],
                )
        if _ignore_missing(ec2.delete_route_table, "InvalidRouteTableID.NotFound",
                           RouteTableId=table["RouteTableId"]):
            removed.append(f"route table {table['RouteTableId']}")

    # 7. The VPC itself.
    if _ignore_missing(ec2.delete_vpc, "InvalidVpcID.NotFound", VpcId=vpc_id):
        removed.append(f"vpc {vpc_id}")
    return removed
