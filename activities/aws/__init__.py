"""Everything the engine does in AWS: clients and ownership tags (clients.py), a VPC per
preview (network.py), Route53 records (dns.py), ACM certificates (tls.py), RDS and
Aurora clones (rds.py), and the orphan sweeper's listing and removal (sweeper.py).

`aws_activities` is what a worker serving AWS registers: a new kind of AWS resource adds
its activity object there, and nowhere else.
"""

from activities.aws.clients import AwsClients, Waits, is_error, parse_s3_uri
from engine.sealing import Sealer


def aws_activities(aws: AwsClients, sealer: Sealer, *, sweep_grace: float = 0.0,
                   ) -> list[object]:
    from activities.aws.dns import DnsActivities
    from activities.aws.network import NetworkActivities
    from activities.aws.rds import RdsActivities
    from activities.aws.sweeper import AwsSweepActivities
    from activities.aws.tls import TlsActivities

    return [NetworkActivities(aws), DnsActivities(aws), TlsActivities(aws),
            RdsActivities(aws, sealer), AwsSweepActivities(aws, sweep_grace=sweep_grace)]


__all__ = ["AwsClients", "Waits", "aws_activities", "is_error", "parse_s3_uri"]
