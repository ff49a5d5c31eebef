"""boto3 clients for an `AwsTarget`, and the small helpers every AWS activity shares.

Clients are cached per (service, region, role): building one loads botocore's service
model, which is too slow to repeat on every activity. A target with a role gets its
clients from STS AssumeRole credentials (with the target's ExternalId), one set per
role, which botocore renews by itself shortly before they expire.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import (
    CredentialProvider,
    CredentialResolver,
    ReadOnlyCredentials,
    RefreshableCredentials,
)
from botocore.exceptions import ClientError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import ROLLOUT_FAILED, invalid_input
from domain.naming import MANAGED_BY, Ownership
from domain.resources import AwsTarget
from engine.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_acm import ACMClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import FilterTypeDef
    from mypy_boto3_rds import RDSClient
    from mypy_boto3_route53 import Route53Client
    from mypy_boto3_sts import STSClient

T = TypeVar("T")

MANAGED_BY_TAG = "managed-by"
ENVIRONMENT_TAG = "preview-environment"

_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 4},
    connect_timeout=10,
    read_timeout=60,
)


class _FixedProvider(CredentialProvider):
    """Hands botocore one (self-refreshing) credentials object."""

    METHOD = "preview-engine-assume-role"
    CANONICAL_NAME = "custom-preview-engine-assume-role"

    def __init__(self, credentials: RefreshableCredentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> RefreshableCredentials:
        return self._credentials


class AwsClients:
    """Builds (and caches) boto3 clients acting in a target's region and account."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_name: str = "preview-engine",
        refresh_margin: timedelta = timedelta(minutes=15),
        session: boto3.session.Session | None = None,
    ) -> None:
        self.endpoint_url = endpoint_url or (settings.aws_endpoint_url if settings else None)
        self.default_region = region or (settings.aws_region if settings else "eu-west-1")
        self._session_name = session_name
        self._refresh_margin = refresh_margin
        # None/None means boto3's own credential chain (production). Tests pass one shared
        # session: loading botocore's service models again for every test costs ~1 s.
        self._base = session or boto3.session.Session(
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key
        )
        # boto3 sessions are not thread-safe and activities run on a thread pool.
        self._lock = threading.Lock()
        self._role_sessions: dict[tuple[str, str | None], boto3.session.Session] = {}
        self._clients: dict[tuple[str, str, str | None, str | None], Any] = {}

    # --- typed accessors --------------------------------------------------------------

    def ec2(self, target: AwsTarget) -> EC2Client:
        return self.client("ec2", target)  # type: ignore[no-any-return]

    def rds(self, target: AwsTarget) -> RDSClient:
        return self.client("rds", target)  # type: ignore[no-any-return]

    def route53(self, target: AwsTarget) -> Route53Client:
        return self.client("route53", target)  # type: ignore[no-any-return]

    def acm(self, target: AwsTarget) -> ACMClient:
        return self.client("acm", target)  # type: ignore[no-any-return]

    def sts(self, target: AwsTarget) -> STSClient:
        return self.client("sts", target)  # type: ignore[no-any-return]

    # --- construction -----------------------------------------------------------------

    def client(self, service: str, target: AwsTarget) -> Any:
        region = target.region or self.default_region
        key = (service, region, target.role_arn, target.external_id)
        with self._lock:
            if key not in self._clients:
                session = self._role_session(target) if target.role_arn else self._base
                self._clients[key] = session.client(
                    service,  # type: ignore[call-overload]
                    region_name=region,
                    endpoint_url=self.endpoint_url,
                    config=_CONFIG,
                )
            return self._clients[key]

    def credentials(self, target: AwsTarget) -> ReadOnlyCredentials | None:
        """The credentials the target's clients sign with right now (None: boto3's chain)."""
        if not target.role_arn:
            return None
        with self._lock:
            session = self._role_session(target)
        return session.get_credentials().get_frozen_credentials()  # type: ignore[union-attr]

    def _role_session(self, target: AwsTarget) -> boto3.session.Session:
        """A session signing with the target role's AssumeRole credentials.

        botocore renews them itself once they are within `refresh_margin` of expiry, so
        a client held through a three-hour RDS wait never signs with expired keys.
        """
        assert target.role_arn is not None
        key = (target.role_arn, target.external_id)
        if key in self._role_sessions:
            return self._role_sessions[key]
        sts = self._base.client(
            "sts", region_name=target.region, endpoint_url=self.endpoint_url, config=_CONFIG
        )
        request: dict[str, Any] = {
            "RoleArn": target.role_arn, "RoleSessionName": self._session_name
        }
        if target.external_id:
            # The tenant's trust policy requires it (confused-deputy protection).
            request["ExternalId"] = target.external_id

        def assume() -> dict[str, str]:
            issued = sts.assume_role(**request)["Credentials"]
            return {
                "access_key": issued["AccessKeyId"],
                "secret_key": issued["SecretAccessKey"],
                "token": issued["SessionToken"],
                "expiry_time": issued["Expiration"].isoformat(),
            }

        margin = int(self._refresh_margin.total_seconds())
        credentials = RefreshableCredentials.create_from_metadata(
            metadata=assume(),
            refresh_using=assume,
            method=_FixedProvider.METHOD,
            advisory_timeout=margin,
            mandatory_timeout=min(margin, 600),
        )
        core = botocore.session.Session()
        core.register_component("credential_provider", CredentialResolver(
            [_FixedProvider(credentials)]
        ))
        session = boto3.session.Session(botocore_session=core)
        self._role_sessions[key] = session
        return session


# --- ownership tags -----------------------------------------------------------------------


def tag_list(tags: Mapping[str, str]) -> list[Any]:
    """AWS `[{"Key": k, "Value": v}]` form (each service's stubs declare its own type)."""
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def tag_dict(tags: Iterable[Mapping[str, Any]] | None) -> dict[str, str]:
    return {str(tag["Key"]): str(tag.get("Value", "")) for tag in tags or []}


def is_ours(tags: Mapping[str, str], owner: Ownership) -> bool:
    return (
        tags.get(MANAGED_BY_TAG) == MANAGED_BY
        and tags.get(ENVIRONMENT_TAG) == owner.environment
    )


def owning_environment(tags: Mapping[str, str]) -> str | None:
    """The environment id in our mark, or None when the resource is not ours at all."""
    if tags.get(MANAGED_BY_TAG) != MANAGED_BY:
        return None
    return tags.get(ENVIRONMENT_TAG) or None


def owned_tags(owner: Ownership, name: str | None = None) -> dict[str, str]:
    tags = owner.tags()
    if name is not None:
        tags["Name"] = name
    return tags


def ec2_filters(**by_name: str | Sequence[str]) -> list[FilterTypeDef]:
    """`ec2_filters(**{"vpc-id": v})` → EC2 `Filters`."""
    return [
        {"Name": name, "Values": [value] if isinstance(value, str) else list(value)}
        for name, value in by_name.items()
    ]


def ownership_filters(owner: Ownership | None, name: str | None = None) -> list[FilterTypeDef]:
    """EC2 filters for our mark (any environment when owner is None) and an optional Name."""
    filters = ec2_filters(**{f"tag:{MANAGED_BY_TAG}": MANAGED_BY})
    if owner is not None:
        filters += ec2_filters(**{f"tag:{ENVIRONMENT_TAG}": owner.environment})
    if name is not None:
        filters += ec2_filters(**{"tag:Name": name})
    return filters


# --- errors -------------------------------------------------------------------------------


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def is_error(error: BaseException, *codes: str) -> bool:
    return isinstance(error, ClientError) and error_code(error) in codes


def failed(what: str) -> ApplicationError:
    """A resource we created reached a terminal failure: retrying the same call won't help."""
    return ApplicationError(f"{what}; inspect it in the AWS console", type=ROLLOUT_FAILED,
                            non_retryable=True)


# --- waiting ------------------------------------------------------------------------------


def heartbeat(*details: Any) -> None:
    # Outside an activity (scripts, the sweeper CLI) there is nobody to heartbeat to.
    if activity.in_activity():
        activity.heartbeat(*details)


BEAT_SECONDS = 2.0  # longest wait between heartbeats while polling


@dataclass(frozen=True)
class Waits:
    """How long and how often activities poll AWS; tests shorten the interval."""

    timeout: float = 3600.0
    interval: float = 15.0


def poll(check: Callable[[], T | None], *, what: str, waits: Waits) -> T:
    """Call `check` until it returns a value, heartbeating; a retryable error at the deadline.

    The deadline error is retryable on purpose: the activity's retry policy then keeps
    polling, and on worker loss the next attempt simply checks again.
    """
    deadline = time.monotonic() + waits.timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise ApplicationError(f"still waiting for {what} after {waits.timeout:.0f}s")
        heartbeat(what)
        # A step's heartbeat timeout is a few seconds (domain/resources.py): keep beating
        # through polls minutes apart, so only a dead worker misses it.
        resume = time.monotonic() + waits.interval
        while (left := resume - time.monotonic()) > 0:
            time.sleep(min(left, BEAT_SECONDS))
            heartbeat(what)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` → (bucket, key)."""
    parsed = urllib.parse.urlparse(uri)
    key = parsed.path.lstrip("/")
    if parsed.scheme != "s3" or not parsed.netloc or not key:
        raise invalid_input(f"golden dump location {uri!r} is not an s3://bucket/key URI")
    return parsed.netloc, key
