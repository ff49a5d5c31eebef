"""The Helm chart of deploy/helm/preview-engine: helm itself (built like the control plane,
stack/helm.py) and one release of the chart applied to the session's control plane."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from stack import helm
from tests.plugins.kube import KubeCluster

CHART = Path(__file__).parents[2] / "deploy" / "helm" / "preview-engine"
CI_VALUES = CHART / "ci" / "test-values.yaml"

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Helm:
    binary: Path

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        answer = subprocess.run([str(self.binary), *args], capture_output=True, text=True,
                                timeout=120)
        if check and answer.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({answer.returncode}):\n"
                                 f"{answer.stderr}")
        return answer

    def template(self, release: str, namespace: str, *flags: str) -> str:
        return self.run("template", release, str(CHART), "--namespace", namespace,
                        *flags).stdout


def manifests(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="session")
def helm_cli() -> Helm:
    if not helm.is_built():
        if shutil.which("go") is None:
            pytest.skip(f"helm is not built in {helm.helm_path()} and there is no `go` to "
                        "build it (`python -m stack.helm build`)")
        helm.build()
    return Helm(helm.helm_path())


@dataclass
class Release:
    """The chart with the CI values, applied to the control plane in a namespace of its own
    that enforces the Pod Security Standard `restricted`."""

    name: str
    namespace: str
    text: str
    objects: list[Manifest] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Manifest]:
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind: str, name: str) -> Manifest:
        """The object of that kind called `name`, or `<release>-preview-engine<name>`."""
        found = [o for o in self.of_kind(kind)
                 if o["metadata"]["name"] in (name, f"{self.name}-preview-engine{name}")]
        assert len(found) == 1, f"no single {kind} {name}: {found}"
        return found[0]

    @property
    def worker_service_account(self) -> str:
        name: str = self.named("Deployment", "-worker")["spec"]["template"]["spec"][
            "serviceAccountName"]
        return name


@pytest.fixture(scope="session")
def release(helm_cli: Helm, kube_cluster: KubeCluster) -> Iterator[Release]:
    suffix = uuid.uuid4().hex[:6]
    installed = Release(name=f"pe-{suffix}", namespace=f"engine-{suffix}", text="")
    installed.text = helm_cli.template(installed.name, installed.namespace,
                                       "-f", str(CI_VALUES))
    installed.objects = manifests(installed.text)
    kubectl = kube_cluster.kubectl
    kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": installed.namespace, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }},
    }))
    # The dedicated cluster's kubeconfig a tenant worker of the CI values mounts.
    kubectl("create", "secret", "generic", "hipaa-kubeconfig", "-n", installed.namespace,
            "--from-literal=kubeconfig={}")
    kubectl("apply", "-n", installed.namespace, "-f", "-", input=installed.text)
    try:
        yield installed
    finally:
        kubectl("delete", "-n", installed.namespace, "--wait=false", "--ignore-not-found",
                "-f", "-", input=installed.text)
        kubectl("delete", "namespace", installed.namespace, "--wait=false")
