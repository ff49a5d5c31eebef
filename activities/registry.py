"""Container registries: does an application's image exist yet?

CI builds `image:<head sha>` for minutes after a push; a rollout of a tag that is not
there sits in ImagePullBackOff until its deadline and undoes the preview. This activity
asks the registry instead and answers at once: present, or "not yet" (StepOutput.waiting),
and the saga asks again on a durable timer, woken early by CI's webhooks.

- OCI distribution API: `HEAD /v2/<name>/manifests/<tag>`, with the registry's token
  authentication (a 401 names the token realm; credentials, if configured for that
  host, are sent there as Basic auth).
- Amazon ECR (`<account>.dkr.ecr.<region>.amazonaws.com`): `DescribeImages` through
  boto3's credential chain.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from botocore.exceptions import ClientError
from pydantic import SecretStr
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.aws import AwsClients, is_error
from activities.aws.clients import heartbeat
from activities.errors import invalid_input
from domain.resources import AwsTarget, ImageSpec, StepInput, StepOutput
from engine.settings import Settings

DOCKER_HUB = "registry-1.docker.io"
# What people write for Docker Hub (in image names and docker's config.json): none of
# them serves the registry API, so each means DOCKER_HUB.
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry.hub.docker.com"})
MANIFEST_TYPES = ", ".join((
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))
ECR_HOST = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com$")
REGISTRY_UNAVAILABLE = "RegistryUnavailable"  # retried: outage, rate limit, network
# On the worker's metrics endpoint as preview_image_checks_total (the exporter adds
# _total). How long a preview waited for its image is the saga's step wait (kind=image).
IMAGE_CHECKS = "preview_image_checks"


@dataclass(frozen=True)
class ImageRef:
    host: str
    name: str
    tag: str

    @classmethod
    def parse(cls, repository: str, tag: str) -> ImageRef:
        """`registry.example.com:5000/team/web` → host and name; no host: Docker Hub."""
        first, _, rest = repository.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            host, name = _registry_host(first), rest
        else:
            host, name = DOCKER_HUB, repository
        if host == DOCKER_HUB and "/" not in name:
            name = f"library/{name}"  # Docker Hub's official images
        return cls(host, name, tag)

    def __str__(self) -> str:
        return f"{self.host}/{self.name}:{self.tag}"


def _registry_host(host: str) -> str:
    return DOCKER_HUB if host.lower() in DOCKER_HUB_ALIASES else host


def _challenge(header: str) -> dict[str, str]:
    """`Bearer realm="https://auth",service="reg",scope="repository:x:pull"` → fields."""
    scheme, _, rest = header.partition(" ")
    if scheme.lower() != "bearer":
        return {}
    return dict(re.findall(r'(\w+)="([^"]*)"', rest))


class RegistryActivities:
    def __init__(self, settings: Settings, *, aws: AwsClients | None = None,
                 client: httpx.AsyncClient | None = None) -> None:
        self._credentials = parse_credentials(settings.registry_credentials)
        self._plain_http = set(settings.registry_plain_http)
        self._mirrors = dict(settings.registry_mirrors)
        self._aws = aws or AwsClients(settings)
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(10.0))

    async def close(self) -> None:
        await self._client.aclose()

    @activity.defn(name=ImageSpec.present)
    async def ensure_image(self, input: StepInput) -> StepOutput:
        spec = input.spec_as(ImageSpec)
        ref = ImageRef.parse(spec.repository, spec.tag)
        ecr = ECR_HOST.match(ref.host)
        digest = (await asyncio.to_thread(self._ecr_digest, ref, ecr["account"], ecr["region"])
                  if ecr else await self._oci_digest(ref))
        _count_check("ecr" if ecr else "oci", "absent" if digest is None else "present")
        if digest is None:
            return StepOutput(waiting=f"waiting for image {spec.repository}:{spec.tag[:12]}")
        return StepOutput(values={"digest": digest}, detail=digest[:19])

    # -- OCI distribution API ------------------------------------------------------------

    def _url(self, ref: ImageRef) -> str:
        host = self._mirrors.get(ref.host, ref.host)
        scheme = "http" if host in self._plain_http else "https"
        return f"{scheme}://{host}/v2/{ref.name}/manifests/{ref.tag}"

    async def _oci_digest(self, ref: ImageRef) -> str | None:
        headers = {"Accept": MANIFEST_TYPES}
        answer = await self._send(ref, headers)
        if answer.status_code == 401:
            token = await self._token(ref, answer.headers.get("WWW-Authenticate", ""))
            answer = await self._send(ref, {**headers, "Authorization": f"Bearer {token}"})
        if answer.status_code == 404:
            return None
        if answer.status_code == 200:
            return answer.headers.get("Docker-Content-Digest") or "present"
        if answer.status_code in (401, 403):
            raise invalid_input(f"registry {ref.host} refuses to show {ref}: give the worker "
                                "pull access (PREVIEW_REGISTRY_CREDENTIALS)")
        raise ApplicationError(f"registry {ref.host} answered {answer.status_code} for {ref}",
                               type=REGISTRY_UNAVAILABLE)

    async def _send(self, ref: ImageRef, headers: dict[str, str]) -> httpx.Response:
        heartbeat(f"asking {ref.host}")  # before each request: up to three per check
        try:
            return await self._client.head(self._url(ref), headers=headers)
        except httpx.HTTPError as error:
            raise ApplicationError(f"registry {ref.host} unreachable: {type(error).__name__}",
                                   type=REGISTRY_UNAVAILABLE) from None

    async def _token(self, ref: ImageRef, header: str) -> str:
        challenge = _challenge(header)
        if "realm" not in challenge:
            raise invalid_input(f"registry {ref.host} asks for credentials the engine cannot "
                                f"send ({header.split(' ')[0] or 'no challenge'})")
        params = {"scope": challenge.get("scope") or f"repository:{ref.name}:pull"}
        if "service" in challenge:
            params["service"] = challenge["service"]
        auth = self._credentials.get(ref.host)
        heartbeat(f"token for {ref.host}")
        try:
            answer = await self._client.get(challenge["realm"], params=params, auth=auth)
        except httpx.HTTPError as error:
            raise ApplicationError(f"token service of {ref.host} unreachable: "
                                   f"{type(error).__name__}", type=REGISTRY_UNAVAILABLE) from None
        if answer.status_code in (401, 403) and auth is None:
            raise invalid_input(f"registry {ref.host} wants credentials for {ref.name}: give "
                                "the worker pull access (PREVIEW_REGISTRY_CREDENTIALS)")
        if answer.status_code in (401, 403):
            raise invalid_input(f"registry {ref.host} refused the worker's credentials for "
                                f"{ref.name}: check PREVIEW_REGISTRY_CREDENTIALS")
        if answer.status_code != 200:
            raise ApplicationError(f"token service of {ref.host} answered "
                                   f"{answer.status_code}", type=REGISTRY_UNAVAILABLE)
        body: dict[str, Any] = answer.json()
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str):
            raise ApplicationError(f"token service of {ref.host} gave no token",
                                   type=REGISTRY_UNAVAILABLE)
        return token

    # -- Amazon ECR ----------------------------------------------------------------------

    def _ecr_digest(self, ref: ImageRef, account: str, region: str) -> str | None:
        ecr = self._aws.client("ecr", AwsTarget(region=region))
        try:
            found = ecr.describe_images(registryId=account, repositoryName=ref.name,
                                        imageIds=[{"imageTag": ref.tag}])
        except ClientError as error:
            if is_error(error, "ImageNotFoundException", "RepositoryNotFoundException"):
                return None  # CI may create the repository with its first push
            if is_error(error, "AccessDeniedException"):
                raise invalid_input(f"ECR refuses to show {ref}: give the worker's role "
                                    "ecr:DescribeImages") from None
            raise
        details = found.get("imageDetails") or []
        return str(details[0].get("imageDigest") or "present") if details else None


def _count_check(registry: str, outcome: str) -> None:
    """One answer of a registry, by its API and outcome: never the image or its host."""
    if activity.in_activity():  # tests call the method directly too
        activity.metric_meter().create_counter(
            IMAGE_CHECKS, "Image existence checks by registry API (oci, ecr) and outcome "
            "(present, absent)").with_additional_attributes(
                {"registry": registry, "outcome": outcome}).add(1)


def docker_config_json(credentials: Mapping[str, tuple[str, str]]) -> str:
    """The `config.json` of a Docker-style client (crane, helm's --registry-config)
    that gives it these credentials per registry host."""
    return json.dumps({"auths": {host: {"auth": base64.b64encode(
        f"{user}:{password}".encode()).decode()} for host, (user, password) in
        credentials.items()}})


def parse_credentials(value: SecretStr | None) -> dict[str, tuple[str, str]]:
    """`{"host": "user:password", ...}` (JSON in PREVIEW_REGISTRY_CREDENTIALS)."""
    if value is None:
        return {}
    try:
        raw = json.loads(value.get_secret_value())
        pairs = {host: tuple(str(text).split(":", 1)) for host, text in dict(raw).items()}
    except (ValueError, TypeError):
        raise SystemExit("PREVIEW_REGISTRY_CREDENTIALS must be a JSON object "
                         '{"host": "user:password"}') from None
    bad = sorted(host for host, pair in pairs.items() if len(pair) != 2)
    if bad:
        raise SystemExit(f"PREVIEW_REGISTRY_CREDENTIALS: {', '.join(bad)}: want user:password")
    return {_registry_host(host): (pair[0], pair[1]) for host, pair in pairs.items()}
