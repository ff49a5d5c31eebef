"""A real Kubernetes node for the test session (stack/node.py): a control plane with no
fake nodes, a plain registry on loopback holding the images the node pulls, and one
kubelet node whose pods really run, answer through Traefik on 127.0.0.1 and reach the
session's PostgreSQL at the node's gateway.

`real_cluster` is started only by the tests that ask for it; kwok's fake nodes
(`kube_cluster`) stay for everything that needs only the API.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from stack import kube, node_build
from stack import registry as stack_registry
from stack.kube import ControlPlane
from stack.node import RealNode, missing_requirements, open_preview_url
from stack.ports import free_port
from stack.postgres import PostgresServer
from stack.preview_node import start_preview_node
from tests.plugins.kube import KubeCluster


@dataclass(frozen=True)
class RealCluster(KubeCluster):
    """A KubeCluster whose pods run: the node, its registry and its ingress."""

    node: RealNode | None = None
    registry_host: str = ""
    # The ingress sends requests no route takes here: serve the starter on it to see a
    # sleeping preview woken by its URL.
    default_backend_port: int = 0

    @property
    def real_node(self) -> RealNode:
        assert self.node is not None
        return self.node

    @property
    def ingress_url(self) -> str:
        return self.real_node.ingress_url

    @property
    def gateway(self) -> str:
        """Where pods reach the session's PostgreSQL (same port as on the host)."""
        return self.real_node.gateway

    @staticmethod
    def open(url: str, timeout: float = 5.0) -> httpx.Response:
        """GET a preview URL as a browser does (`*.localhost` is loopback)."""
        return open_preview_url(url, timeout=timeout)

    def in_pod(self, namespace: str, pod: str, *argv: str, container: str | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`kubectl exec` in a pod: the command runs inside the container, as it is."""
        assert self.kubectl_path is not None
        extra = ["-c", container] if container else []
        return subprocess.run(
            [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", "exec", "-n",
             namespace, pod, *extra, "--", *argv],
            capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def real_cluster(postgres_server: PostgresServer) -> Iterator[RealCluster]:
    if os.geteuid() != 0:
        pytest.skip("a real node needs root (network namespaces, mounts, cgroups)")
    for build in (kube.build, stack_registry.build, node_build.build):
        build()
    missing = missing_requirements()
    if missing:
        pytest.fail("a real node needs " + ", ".join(missing) + " (.ci/run installs them)")
    state = Path(tempfile.mkdtemp(prefix="preview-test-node-"))
    plane = ControlPlane(state / "kube", fake_nodes=0)
    registry = stack_registry.Registry(state / "registry")
    node: RealNode | None = None
    default_backend = free_port()
    try:
        plane.start()
        registry.start()
        node = start_preview_node(plane, registry, state / "node",
                                  pod_services={"postgres": postgres_server.port},
                                  default_backend=f"http://127.0.0.1:{default_backend}")
        kubectl = kube.cache_dir() / "kubectl"
        yield RealCluster(kubeconfig=plane.kubeconfig, kubectl_path=kubectl, node=node,
                          registry_host=registry.host, default_backend_port=default_backend)
    finally:
        if node is not None:
            node.stop()
        registry.stop()
        plane.stop()
        if os.environ.get("KEEP_KUBE_STATE"):
            print(f"real node state kept in {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)
