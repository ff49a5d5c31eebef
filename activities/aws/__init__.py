"""Everything the engine does in AWS: clients and ownership tags (clients.py), a VPC per
preview (network.py), Route53 records (dns.py), ACM certificates (tls.py), RDS and
Aurora clones (rds.py), and the orphan sweeper's listing and removal (sweeper.py)."""

from activities.aws.clients import AwsClients, Waits, is_error, parse_s3_uri

__all__ = ["AwsClients", "Waits", "is_error", "parse_s3_uri"]
