"""ensure_certificate / remove_certificate against a real moto server.

The session's moto server keeps a requested certificate PENDING_VALIDATION for about a
second (MOTO_ACM_VALIDATION_WAIT), so the activity really has to poll for ISSUED.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.aws import AwsClients, Waits
from activities.aws.tls import TlsActivities
from activities.errors import INVALID_INPUT
from domain.naming import Ownership
from domain.resources import AwsTarget, CertificateSpec, StepInput, StepOutput
from tests.plugins.moto import REGION, MotoServer

ENV = "shop-pr-7-abc123"
HOSTS = ["web-pr-7.preview.test", "api-pr-7.preview.test"]


@pytest.fixture
def tls(aws_clients: AwsClients) -> TlsActivities:
    return TlsActivities(aws_clients, Waits(timeout=30, interval=0.05))


@pytest.fixture
def zone(moto_reset: MotoServer) -> str:
    route53 = moto_reset.client("route53")
    return str(route53.create_hosted_zone(Name="preview.test", CallerReference="t")
               ["HostedZone"]["Id"])


def spec(**changes: Any) -> CertificateSpec:
    fields: dict[str, Any] = {
        "owner": Ownership(environment=ENV), "target": AwsTarget(region=REGION), "hosts": HOSTS,
    }
    return CertificateSpec(**{**fields, **changes})


def run(fn: Any, spec: CertificateSpec, activity_id: str = "a1",
        heartbeats: list[Any] | None = None) -> Any:
    env = ActivityEnvironment()
    # One scheduled activity = one activity id; its retries would share it.
    env.info = dataclasses.replace(env.info, activity_id=activity_id)
    if heartbeats is not None:
        env.on_heartbeat = lambda *details: heartbeats.append(details)
    return env.run(fn, StepInput(spec=spec))


def certificates(moto: MotoServer) -> list[str]:
    acm = moto.client("acm")
    return [c["CertificateArn"] for c in acm.list_certificates()["CertificateSummaryList"]]


def marked_records(moto: MotoServer, zone: str) -> list[str]:
    found = moto.client("route53").list_resource_record_sets(HostedZoneId=zone)
    return sorted(r["Name"] for r in found["ResourceRecordSets"]
                  if any(ENV in v["Value"] for v in r.get("ResourceRecords", [])))


def test_requests_validates_and_waits_for_issue(
    tls: TlsActivities, zone: str, moto_reset: MotoServer
) -> None:
    heartbeats: list[Any] = []
    output: StepOutput = run(tls.ensure_certificate, spec(zone_id=zone), heartbeats=heartbeats)
    arn = output.values["certificate_arn"]
    acm = moto_reset.client("acm")
    detail = acm.describe_certificate(CertificateArn=arn)["Certificate"]
    assert detail["Status"] == "ISSUED"
    assert sorted(detail["SubjectAlternativeNames"]) == sorted(HOSTS)
    assert {"Key": "preview-environment", "Value": ENV} in acm.list_tags_for_certificate(
        CertificateArn=arn)["Tags"]
    assert heartbeats, "the activity waited without heartbeating"
    # Each validation CNAME is in the zone, with our mark next to it.
    route53 = moto_reset.client("route53")
    names = {r["Name"]: r for r in
             route53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]}
    for option in detail["DomainValidationOptions"]:
        record = option["ResourceRecord"]
        assert names[record["Name"]]["ResourceRecords"] == [{"Value": record["Value"]}]
        assert f"_owner.{record['Name']}" in names

    # Twice: the same certificate, nothing new.
    again: StepOutput = run(tls.ensure_certificate, spec(zone_id=zone), activity_id="a2")
    assert again.values["certificate_arn"] == arn
    assert certificates(moto_reset) == [arn]


def test_remove_deletes_certificate_and_validation_records(
    tls: TlsActivities, zone: str, moto_reset: MotoServer
) -> None:
    run(tls.remove_certificate, spec(zone_id=zone))  # absent: success
    run(tls.ensure_certificate, spec(zone_id=zone))
    assert marked_records(moto_reset, zone)
    run(tls.remove_certificate, spec(zone_id=zone))
    assert certificates(moto_reset) == []
    assert marked_records(moto_reset, zone) == []
    run(tls.remove_certificate, spec(zone_id=zone))  # again: success

    # A later, separately scheduled ensure makes a new one (the old token is not reused).
    output: StepOutput = run(tls.ensure_certificate, spec(zone_id=zone), activity_id="later")
    assert certificates(moto_reset) == [output.values["certificate_arn"]]


def test_a_certificate_without_our_tags_is_neither_adopted_nor_deleted(
    tls: TlsActivities, moto_reset: MotoServer
) -> None:
    acm = moto_reset.client("acm")
    theirs = acm.request_certificate(DomainName=HOSTS[0], SubjectAlternativeNames=HOSTS,
                                     ValidationMethod="DNS")["CertificateArn"]
    output: StepOutput = run(tls.ensure_certificate, spec())
    assert output.values["certificate_arn"] != theirs
    run(tls.remove_certificate, spec())
    assert certificates(moto_reset) == [theirs]


def _self_signed(host: str) -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_a_wildcard_certificate_is_used_as_is_and_never_deleted(
    tls: TlsActivities, moto_reset: MotoServer
) -> None:
    acm = moto_reset.client("acm")
    cert, key = _self_signed("*.preview.test")
    wildcard = acm.import_certificate(Certificate=cert, PrivateKey=key)["CertificateArn"]
    output: StepOutput = run(tls.ensure_certificate, spec(wildcard_certificate_arn=wildcard))
    assert output.values == {"certificate_arn": wildcard}
    assert certificates(moto_reset) == [wildcard]  # nothing requested
    run(tls.remove_certificate, spec(wildcard_certificate_arn=wildcard))
    assert certificates(moto_reset) == [wildcard]


def test_a_missing_wildcard_certificate_is_invalid_input(
    tls: TlsActivities, moto_reset: MotoServer
) -> None:
    missing = "arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
    with pytest.raises(ApplicationError) as caught:
        run(tls.ensure_certificate, spec(wildcard_certificate_arn=missing))
    assert caught.value.type == INVALID_INPUT
    assert caught.value.non_retryable
