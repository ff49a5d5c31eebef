"""One environment of a test of the workload activities: its id, its namespaces, the
activities under test, a recorder of heartbeats, and kubectl to check from outside."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.kubernetes import KubernetesActivities
from domain.blueprint import HealthCheck, Resources
from domain.naming import Ownership
from domain.resources import ApplicationSpec, NamespaceSpec, StepInput, StepOutput
from engine.sealing import Sealer
from tests.plugins.kube import KubeCluster

CLUSTER = "kwok"  # the only cluster the activities know: nothing may fall back to "default"


@dataclass
class Env:
    """One environment id per test, with its namespaces and a recorder of heartbeats."""

    cluster: KubeCluster
    acts: KubernetesActivities
    sealer: Sealer
    id: str
    heartbeats: list[Any] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    @property
    def owner(self) -> Ownership:
        return Ownership(environment=self.id)

    def ns_name(self, suffix: str = "") -> str:
        name = f"{self.id}{suffix}"
        self.namespaces.append(name)
        return name

    def run(self, fn: Callable[..., Any], arg: Any) -> Any:
        env = ActivityEnvironment()
        env.on_heartbeat = lambda *details: self.heartbeats.append(details[0] if details else None)
        return env.run(fn, arg)

    def step(self, fn: Callable[..., Any], spec: Any, **upstream: StepOutput) -> Any:
        return self.run(fn, StepInput(spec=spec, upstream=upstream))

    def failure(
        self, fn: Callable[..., Any], spec: Any, **upstream: StepOutput
    ) -> ApplicationError:
        with pytest.raises(ApplicationError) as caught:
            self.step(fn, spec, **upstream)
        return caught.value

    # -- from outside ---------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.cluster.kubectl(*args, input=input)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        args = ["get", kind, name, "--ignore-not-found", "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        out = self.kubectl(*args).strip()
        return json.loads(out) if out else None

    def must_get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        obj = self.get(kind, name, namespace)
        assert obj is not None, f"{kind} {namespace}/{name} does not exist"
        return obj

    def rv(self, kind: str, name: str, namespace: str | None = None) -> str:
        return str(self.must_get(kind, name, namespace)["metadata"]["resourceVersion"])

    def create(self, manifest: dict[str, Any]) -> None:
        self.kubectl("create", "-f", "-", input=json.dumps(manifest))

    def namespace(self, suffix: str = "", **kw: Any) -> NamespaceSpec:
        spec = NamespaceSpec(owner=self.owner, cluster=CLUSTER, name=self.ns_name(suffix), **kw)
        self.step(self.acts.ensure_namespace, spec)
        return spec


def app_spec(env: Env, ns: str, **kw: Any) -> ApplicationSpec:
    base: dict[str, Any] = dict(
        owner=env.owner, cluster=CLUSTER, namespace=ns, name="web",
        image="registry.example/shop/web:abc123", ports=[8080, 9090], replicas=2,
        resources=Resources(cpu="200m", memory="256Mi"),
        health_check=HealthCheck(path="/ready", port=9090, initial_delay_seconds=1),
        command=["/bin/web", "--serve"], config_map="web-config", secret="web-secrets",
        rollout_timeout_seconds=120,
    )
    return ApplicationSpec(**{**base, **kw})

