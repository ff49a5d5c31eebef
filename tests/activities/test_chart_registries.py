"""A chart in a private OCI registry (the session's registry with token authentication,
tests/plugins/registry.py): helm renders it with the engine's pull credentials
(PREVIEW_REGISTRY_CREDENTIALS, the same as for image checks), also where the registry is
reached at a mirror address; without them, or with a wrong password, the render fails in
helm's words, not retried, and no password is in the message."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.errors import INVALID_INPUT
from activities.kubernetes import ChartActivities, ClusterClients, KubernetesActivities
from domain.naming import Ownership
from domain.resources import ChartSpec
from engine.keyring import Keyring
from engine.sealing import Sealer
from stack import helm as stack_helm
from stack import registry as stack_registry
from tests.plugins.registry import PULLER, PUSHER, LoopbackRegistry

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "charts" / "hello"
MIRRORED = "oci://registry.local/private/hello"  # as a blueprint names it


@pytest.fixture(scope="module")
def helm(registry: LoopbackRegistry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """helm, once the example chart is in the private registry (pushed as CI would)."""
    binary = stack_helm.build()
    pusher = stack_registry.docker_config(tmp_path_factory.mktemp("pusher"), registry.host,
                                          *PUSHER)
    stack_helm.push_chart(EXAMPLE, registry.host, "private",
                          registry_config=pusher / "config.json")
    return binary


@pytest.fixture(scope="module")
def workloads() -> Iterator[KubernetesActivities]:
    clusters = ClusterClients({})  # rendering reaches no cluster
    yield KubernetesActivities(clusters, Sealer(Keyring.parse(
        f"t-1:{base64.b64encode(os.urandom(32)).decode()}")))
    clusters.close()


def render(workloads: KubernetesActivities, helm: Path, registry: LoopbackRegistry,
           credentials: dict[str, tuple[str, str]]) -> str:
    charts = ChartActivities(workloads, helm=str(helm), plain_http=["registry.local"],
                             registry_mirrors={"registry.local": registry.host},
                             registry_credentials=credentials)
    spec = ChartSpec(owner=Ownership(environment="shop-pr-1"), namespace="shop-pr-1",
                     name="shop", chart=MIRRORED, version="0.1.0",
                     values={"ingress": {"host": "shop-pr-1.preview.localhost"}})
    text: str = ActivityEnvironment().run(charts.render, spec)
    return text


def test_a_private_chart_is_pulled_with_the_engines_credentials_at_its_mirror(
        workloads: KubernetesActivities, helm: Path, registry: LoopbackRegistry) -> None:
    mark = registry.tokens.mark()
    text = render(workloads, helm, registry, {"registry.local": PULLER})
    assert "kind: Deployment" in text and "shop-pr-1.preview.localhost" in text
    granted = [call for call in registry.tokens.calls_since(mark) if call.status == 200]
    assert granted and {call.user for call in granted} == {PULLER[0]}
    assert any("repository:private/hello:pull" in call.scopes for call in granted), granted


@pytest.mark.parametrize("credentials", [{}, {"registry.local": (PULLER[0], "Wr0ng-pw-7")}],
                         ids=["none", "wrong"])
def test_without_the_right_credentials_helm_says_why_and_no_password_shows(
        workloads: KubernetesActivities, helm: Path, registry: LoopbackRegistry,
        credentials: dict[str, tuple[str, str]]) -> None:
    mark = registry.tokens.mark()
    with pytest.raises(ApplicationError) as caught:
        render(workloads, helm, registry, credentials)
    error = caught.value
    assert error.non_retryable and error.type == INVALID_INPUT  # a person fixes credentials
    assert error.message.startswith(f"chart shop ({MIRRORED}) does not render: ")
    assert "401" in error.message or "unauthorized" in error.message.lower(), error.message
    assert "Wr0ng-pw-7" not in error.message and PULLER[1] not in error.message
    assert [call.status for call in registry.tokens.calls_since(mark)] != []
    assert all(call.user is None for call in registry.tokens.calls_since(mark))
