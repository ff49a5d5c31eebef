"""ACM certificates for a preview's hosts, validated through Route53.

With a shared wildcard certificate there is nothing to create: it is checked and passed
on, and never deleted. Otherwise a certificate is requested (found by our tags first),
its DNS validation records are written, and the activity polls until it is ISSUED.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError
from temporalio import activity

from activities.aws.clients import (
    AwsClients,
    Waits,
    failed,
    is_error,
    is_ours,
    owning_environment,
    poll,
    tag_dict,
    tag_list,
)
from activities.aws.dns import claim_cnames, release_cnames
from activities.errors import invalid_input
from domain.naming import Ownership, stable_hash
from domain.resources import CertificateSpec, StepInput, StepOutput

if TYPE_CHECKING:
    from mypy_boto3_acm import ACMClient
    from mypy_boto3_acm.type_defs import CertificateDetailTypeDef, CertificateSummaryTypeDef

TERMINAL = ("FAILED", "VALIDATION_TIMED_OUT", "REVOKED", "EXPIRED", "INACTIVE")


def _domains(hosts: list[str]) -> list[str]:
    return [host.lower().rstrip(".") for host in hosts]


def _idempotency_token(owner: Ownership, hosts: list[str]) -> str:
    # ACM keeps a token for an hour and returns that token's certificate even after it
    # was deleted, so the token is scoped to one scheduled activity (its retries share
    # it); re-creation after a removal is a new scheduling. Tags deduplicate the rest.
    scope = ""
    if activity.in_activity():
        info = activity.info()
        scope = f"{info.workflow_run_id}/{info.activity_id}"
    return stable_hash(f"{owner.environment}|{','.join(hosts)}|{scope}", 32)


def _tagged_certificates(acm: ACMClient) -> Iterator[tuple[str, CertificateSummaryTypeDef]]:
    """(env id, summary) of every certificate tagged ours."""
    for page in acm.get_paginator("list_certificates").paginate():
        for summary in page["CertificateSummaryList"]:
            arn = summary.get("CertificateArn", "")
            try:
                tags = tag_dict(acm.list_tags_for_certificate(CertificateArn=arn).get("Tags"))
            except ClientError as error:
                if is_error(error, "ResourceNotFoundException"):
                    continue  # deleted while we listed
                raise
            if env := owning_environment(tags):
                yield env, summary


def list_certificates(acm: ACMClient) -> dict[str, list[tuple[str, str]]]:
    """Every certificate tagged ours: env id → [(arn, domain)]."""
    found: dict[str, list[tuple[str, str]]] = {}
    for env, summary in _tagged_certificates(acm):
        found.setdefault(env, []).append(
            (summary.get("CertificateArn", ""), summary.get("DomainName", "")))
    return found


def certificate_times(acm: ACMClient) -> dict[str, list[datetime]]:
    """When each certificate tagged ours was requested: env id → creation times."""
    found: dict[str, list[datetime]] = {}
    for env, summary in _tagged_certificates(acm):
        if (created := summary.get("CreatedAt")) is not None:
            found.setdefault(env, []).append(created)
    return found


def find_certificates(acm: ACMClient, owner: Ownership, hosts: list[str] | None) -> list[str]:
    """ARNs of the environment's certificates (for exactly these hosts when given)."""
    arns = []
    for arn, domain in list_certificates(acm).get(owner.environment, []):
        if hosts is None:
            arns.append(arn)
            continue
        if domain != hosts[0]:
            continue
        detail = acm.describe_certificate(CertificateArn=arn)["Certificate"]
        if sorted(_domains(detail.get("SubjectAlternativeNames", []))) == sorted(hosts):
            arns.append(arn)
    return sorted(arns)


def delete_certificates(acm: ACMClient, owner: Ownership, hosts: list[str] | None) -> list[str]:
    """Delete the environment's certificates; "already gone" is success."""
    deleted = []
    for arn in find_certificates(acm, owner, hosts):
        tags = tag_dict(acm.list_tags_for_certificate(CertificateArn=arn).get("Tags"))
        if not is_ours(tags, owner):
            continue
        try:
            # ResourceInUseException (still on a load balancer) is retried by Temporal.
            acm.delete_certificate(CertificateArn=arn)
        except ClientError as error:
            if not is_error(error, "ResourceNotFoundException"):
                raise
        deleted.append(f"certificate {arn}")
    return deleted


class TlsActivities:
    def __init__(self, aws: AwsClients, waits: Waits | None = None) -> None:
        self.aws = aws
        self.waits = waits or Waits(timeout=1800, interval=10)

    @activity.defn(name=CertificateSpec.present)
    def ensure_certificate(self, step: StepInput) -> StepOutput:
        spec = step.spec_as(CertificateSpec)
        acm = self.aws.acm(spec.target)
        if spec.wildcard_certificate_arn:
            return self._check_wildcard(acm, spec.wildcard_certificate_arn)
        if not spec.hosts:
            raise invalid_input("a certificate needs at least one host")
        hosts = _domains(spec.hosts)
        found = find_certificates(acm, spec.owner, hosts)
        arn = found[0] if found else acm.request_certificate(
            DomainName=hosts[0],
            SubjectAlternativeNames=hosts,
            ValidationMethod="DNS",
            IdempotencyToken=_idempotency_token(spec.owner, hosts),
            Tags=tag_list(spec.owner.tags()),
        )["CertificateArn"]

        if spec.zone_id:
            records = self._validation_records(acm, arn, hosts)
            if records:
                claim_cnames(self.aws.route53(spec.target), spec.zone_id, records, spec.owner)

        def issued() -> str | None:
            detail = acm.describe_certificate(CertificateArn=arn)["Certificate"]
            status = detail.get("Status", "")
            if status in TERMINAL:
                raise failed(f"certificate {arn} for {', '.join(hosts)} is {status}")
            return arn if status == "ISSUED" else None

        poll(issued, what=f"certificate {arn} issued", waits=self.waits)
        return StepOutput(values={"certificate_arn": arn})

    @activity.defn(name=CertificateSpec.absent)
    def remove_certificate(self, step: StepInput) -> None:
        spec = step.spec_as(CertificateSpec)
        if spec.wildcard_certificate_arn:
            return  # shared, not ours to delete
        acm = self.aws.acm(spec.target)
        hosts = _domains(spec.hosts)
        if spec.zone_id:
            # Validation records first: they can only be found through the certificate.
            names: list[str] = []
            for arn in find_certificates(acm, spec.owner, hosts):
                names += self._validation_records(acm, arn, hosts, wait=False)
            release_cnames(self.aws.route53(spec.target), spec.zone_id, names, spec.owner)
        delete_certificates(acm, spec.owner, hosts)

    def _check_wildcard(self, acm: ACMClient, arn: str) -> StepOutput:
        try:
            status = acm.describe_certificate(CertificateArn=arn)["Certificate"].get("Status")
        except ClientError as error:
            if is_error(error, "ResourceNotFoundException", "ValidationException"):
                raise invalid_input(f"wildcard certificate {arn} does not exist") from None
            raise
        if status != "ISSUED":
            raise invalid_input(f"wildcard certificate {arn} is {status}, not ISSUED")
        return StepOutput(values={"certificate_arn": arn})

    def _validation_records(
        self, acm: ACMClient, arn: str, hosts: list[str], wait: bool = True
    ) -> dict[str, str]:
        """name → value of the certificate's DNS validation CNAMEs.

        ACM fills them in a few seconds after the request, so wait for every host's.
        """

        def ready() -> CertificateDetailTypeDef | None:
            detail = acm.describe_certificate(CertificateArn=arn)["Certificate"]
            options = detail.get("DomainValidationOptions", [])
            complete = len(options) >= len(hosts) and all("ResourceRecord" in o for o in options)
            return detail if complete or not wait else None

        detail = poll(ready, what=f"validation records of {arn}", waits=self.waits)
        return {
            o["ResourceRecord"]["Name"]: o["ResourceRecord"]["Value"]
            for o in detail.get("DomainValidationOptions", [])
            if "ResourceRecord" in o and o["ResourceRecord"]["Type"] == "CNAME"
        }
