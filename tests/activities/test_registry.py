"""`ensure_image` against a real OCI registry (token authentication, our token service)
and against ECR on moto: present tags give their digest, missing ones a wait naming the
image, wrong credentials a non-retryable error, an outage a retryable one."""

from __future__ import annotations

import hashlib
import json
import uuid

import httpx
import pytest
from pydantic import SecretStr
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.aws import AwsClients
from activities.registry import (
    DOCKER_HUB,
    ECR_HOST,
    REGISTRY_UNAVAILABLE,
    ImageRef,
    RegistryActivities,
    parse_credentials,
)
from domain.naming import Ownership
from domain.resources import ImageSpec, StepInput, StepOutput
from engine.settings import Settings
from stack.ports import free_port
from tests.plugins.moto import MotoServer
from tests.plugins.registry import PULLER, SERVICE, LoopbackRegistry

SHA = "0123456789abcdef0123456789abcdef01234567"
OWNER = Ownership(environment="shop-pr-1-abc123", repository="acme/shop", pr_number=1)


def image(repository: str, tag: str = SHA) -> StepInput:
    return StepInput(spec=ImageSpec(owner=OWNER, repository=repository, tag=tag))


def fresh_repository(registry: LoopbackRegistry) -> str:
    return f"{registry.host}/team/web-{uuid.uuid4().hex[:8]}"


async def ensure(acts: RegistryActivities, step: StepInput) -> StepOutput:
    output: StepOutput = await ActivityEnvironment().run(acts.ensure_image, step)
    return output


@pytest.fixture
def acts(registry: LoopbackRegistry) -> RegistryActivities:
    return RegistryActivities(Settings(**registry.settings_update()))


async def test_present_tag_answers_its_digest_through_the_token_flow(
    registry: LoopbackRegistry, acts: RegistryActivities
) -> None:
    repository = fresh_repository(registry)
    name = repository.removeprefix(f"{registry.host}/")
    digest = registry.push(name, SHA).split("@")[-1]
    mark = registry.tokens.mark()

    output = await ensure(acts, image(repository))

    assert output.waiting is None
    assert output.values["digest"] == digest and digest.startswith("sha256:")
    # The registry challenged, the token service granted pull to the engine's user, and
    # the registry accepted that bearer (a refused one would have been a 401 again).
    calls = registry.tokens.calls_since(mark)
    assert [(c.user, c.scopes, c.status) for c in calls] == [
        (PULLER[0], (f"repository:{name}:pull",), 200)]


async def test_registry_refuses_a_request_without_a_token(registry: LoopbackRegistry) -> None:
    """The registry really enforces token auth: the engine's 200 above needed the bearer."""
    name = f"team/api-{uuid.uuid4().hex[:8]}"
    registry.push(name, SHA)
    async with httpx.AsyncClient() as client:
        answer = await client.head(f"{registry.server.url}/v2/{name}/manifests/{SHA}")
    assert answer.status_code == 401
    challenge = answer.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'realm="{registry.tokens.url}"' in challenge
    assert f'service="{SERVICE}"' in challenge
    assert f'scope="repository:{name}:pull"' in challenge


async def test_missing_tag_waits_naming_the_image(
    registry: LoopbackRegistry, acts: RegistryActivities
) -> None:
    repository = fresh_repository(registry)
    registry.push(repository.removeprefix(f"{registry.host}/"), "main")

    output = await ensure(acts, image(repository))

    assert output.waiting == f"waiting for image {repository}:{SHA[:12]}"
    assert output.values == {}


async def test_missing_repository_waits(
    registry: LoopbackRegistry, acts: RegistryActivities
) -> None:
    repository = fresh_repository(registry)  # nothing ever pushed there

    output = await ensure(acts, image(repository))

    assert output.waiting == f"waiting for image {repository}:{SHA[:12]}"


async def test_image_pushed_later_is_found_on_the_next_ask(
    registry: LoopbackRegistry, acts: RegistryActivities
) -> None:
    repository = fresh_repository(registry)
    assert (await ensure(acts, image(repository))).waiting is not None
    digest = registry.push(repository.removeprefix(f"{registry.host}/"), SHA).split("@")[-1]
    assert (await ensure(acts, image(repository))).values["digest"] == digest


@pytest.mark.parametrize("credentials", ["wrong", "none"])
async def test_wrong_credentials_fail_without_retry_naming_the_host(
    registry: LoopbackRegistry, credentials: str
) -> None:
    update = registry.settings_update()
    update["registry_credentials"] = (registry.credentials(PULLER[0], "not-the-password")
                                      if credentials == "wrong" else None)
    acts = RegistryActivities(Settings(**update))
    repository = fresh_repository(registry)
    registry.push(repository.removeprefix(f"{registry.host}/"), SHA)

    with pytest.raises(ApplicationError) as raised:
        await ensure(acts, image(repository))

    assert raised.value.non_retryable
    assert registry.host in str(raised.value)
    assert "PREVIEW_REGISTRY_CREDENTIALS" in str(raised.value)
    assert ("refused the worker's credentials" if credentials == "wrong"
            else "wants credentials") in str(raised.value)


async def test_registry_down_is_retryable() -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    acts = RegistryActivities(Settings(check_images=True, registry_plain_http=[host]))

    with pytest.raises(ApplicationError) as raised:
        await ensure(acts, image(f"{host}/team/web"))

    assert not raised.value.non_retryable
    assert raised.value.type == REGISTRY_UNAVAILABLE
    assert host in str(raised.value)


async def test_stopped_registry_is_retryable_and_found_again_after_restart(
    registry: LoopbackRegistry, acts: RegistryActivities
) -> None:
    repository = fresh_repository(registry)
    registry.push(repository.removeprefix(f"{registry.host}/"), SHA)
    registry.server.stop()
    try:
        with pytest.raises(ApplicationError) as raised:
            await ensure(acts, image(repository))
        assert not raised.value.non_retryable and raised.value.type == REGISTRY_UNAVAILABLE
    finally:
        registry.server.start()  # same port and storage: the session's registry goes on
    assert (await ensure(acts, image(repository))).waiting is None


# -- image references ----------------------------------------------------------------------


@pytest.mark.parametrize(("repository", "host", "name"), [
    ("nginx", DOCKER_HUB, "library/nginx"),
    ("acme/web", DOCKER_HUB, "acme/web"),
    ("docker.io/acme/web", DOCKER_HUB, "acme/web"),
    ("docker.io/nginx", DOCKER_HUB, "library/nginx"),
    ("index.docker.io/acme/web", DOCKER_HUB, "acme/web"),
    ("ghcr.io/acme/shop/web", "ghcr.io", "acme/shop/web"),
    ("localhost/web", "localhost", "web"),
    ("localhost:5000/team/web", "localhost:5000", "team/web"),
    ("127.0.0.1:5000/web", "127.0.0.1:5000", "web"),
    ("registry.example.com/team/web", "registry.example.com", "team/web"),
    ("123456789012.dkr.ecr.eu-west-1.amazonaws.com/shop/web",
     "123456789012.dkr.ecr.eu-west-1.amazonaws.com", "shop/web"),
])
def test_image_reference_parsing(repository: str, host: str, name: str) -> None:
    ref = ImageRef.parse(repository, SHA)
    assert (ref.host, ref.name, ref.tag) == (host, name, SHA)
    assert str(ref) == f"{host}/{name}:{SHA}"


@pytest.mark.parametrize(("host", "ecr"), [
    ("123456789012.dkr.ecr.eu-west-1.amazonaws.com", ("123456789012", "eu-west-1")),
    ("210987654321.dkr.ecr.us-gov-west-1.amazonaws.com", ("210987654321", "us-gov-west-1")),
    ("12345.dkr.ecr.eu-west-1.amazonaws.com", None),  # not an account id
    ("123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil.example", None),
    ("ghcr.io", None),
])
def test_ecr_hosts_are_recognised(host: str, ecr: tuple[str, str] | None) -> None:
    found = ECR_HOST.match(host)
    assert (None if found is None else (found["account"], found["region"])) == ecr


# -- Amazon ECR on moto --------------------------------------------------------------------

ACCOUNT = "123456789012"  # moto's default account


@pytest.fixture
def ecr_acts(aws_clients: AwsClients) -> RegistryActivities:
    return RegistryActivities(Settings(check_images=True), aws=aws_clients)


def put_ecr_image(moto: MotoServer, name: str, tag: str) -> str:
    ecr = moto.client("ecr")
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "size": 2, "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest()},
        "layers": [],
    })
    image_id = ecr.put_image(repositoryName=name, imageManifest=manifest,
                             imageTag=tag)["image"]["imageId"]
    return str(image_id["imageDigest"])


async def test_ecr_present_tag_answers_its_digest(
    moto_reset: MotoServer, ecr_acts: RegistryActivities
) -> None:
    moto_reset.client("ecr").create_repository(repositoryName="shop/web")
    digest = put_ecr_image(moto_reset, "shop/web", SHA)

    output = await ensure(ecr_acts, image(f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/shop/web"))

    assert output.waiting is None
    assert output.values["digest"] == digest


async def test_ecr_missing_tag_and_missing_repository_wait(
    moto_reset: MotoServer, ecr_acts: RegistryActivities
) -> None:
    moto_reset.client("ecr").create_repository(repositoryName="shop/web")
    put_ecr_image(moto_reset, "shop/web", "main")
    host = f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com"

    missing_tag = await ensure(ecr_acts, image(f"{host}/shop/web"))
    missing_repo = await ensure(ecr_acts, image(f"{host}/shop/api"))

    assert missing_tag.waiting == f"waiting for image {host}/shop/web:{SHA[:12]}"
    assert missing_repo.waiting == f"waiting for image {host}/shop/api:{SHA[:12]}"


def test_credentials_for_docker_hub_under_any_of_its_names() -> None:
    credentials = parse_credentials(SecretStr(json.dumps(
        {"docker.io": "ci:token", "ghcr.io": "bot:pat:with:colons"})))
    assert credentials == {DOCKER_HUB: ("ci", "token"), "ghcr.io": ("bot", "pat:with:colons")}
    with pytest.raises(SystemExit, match="want user:password"):
        parse_credentials(SecretStr(json.dumps({"ghcr.io": "no-colon"})))
