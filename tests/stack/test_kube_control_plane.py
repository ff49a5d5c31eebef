"""The test control plane is a real Kubernetes: controllers, scheduler, validation, kubectl."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import pytest
from kubernetes import client
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from stack import kube, ports
from stack.ports import free_port, free_ports
from tests.plugins.kube import KubeCluster, Kubectl
from tests.polling import wait_until

pytestmark = pytest.mark.kube

T = TypeVar("T")


def must(value: T | None) -> T:
    """The client models type every field Optional; a present field is asserted here."""
    assert value is not None
    return value


def _gone(read: Callable[[], object]) -> bool:
    try:
        read()
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    return False


@pytest.fixture
def core(kube_cluster: KubeCluster) -> Iterator[client.CoreV1Api]:
    with kube_cluster.api_client() as api:
        yield client.CoreV1Api(api)


@pytest.fixture
def apps(kube_cluster: KubeCluster) -> Iterator[client.AppsV1Api]:
    with kube_cluster.api_client() as api:
        yield client.AppsV1Api(api)


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as e:
        if e.status != 404:
            raise
    wait_until(f"namespace {name} gone", lambda: _gone(lambda: core.read_namespace(name)), 120)


def _deployment(name: str, replicas: int) -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    # kwok never pulls or runs the image; the name only has to be valid.
                    containers=[client.V1Container(name="app", image="registry.invalid/app:1")]
                ),
            ),
        ),
    )


def test_deployment_rolls_out_on_kwok_nodes(
    core: client.CoreV1Api, apps: client.AppsV1Api, namespace: str
) -> None:
    apps.create_namespaced_deployment(namespace, _deployment("web", replicas=2))

    def ready() -> client.V1Deployment | None:
        dep = apps.read_namespaced_deployment("web", namespace)
        return dep if (must(dep.status).ready_replicas or 0) == 2 else None

    wait_until("2 ready replicas", ready, timeout=90)
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    nodes = {must(n.metadata).name: n for n in core.list_node().items}
    assert len(pods) == 2
    for pod in pods:
        status, node_name = must(pod.status), must(must(pod.spec).node_name)
        assert status.phase == "Running"
        assert node_name in nodes, node_name
        # Scheduled onto a kwok fake node, not anything else.
        annotations = must(must(nodes[node_name].metadata).annotations)
        assert annotations.get("kwok.x-k8s.io/node") == "fake"
        assert status.pod_ip  # kwok assigned an address from its CIDR


def test_namespace_deletion_is_asynchronous(core: client.CoreV1Api, apps: client.AppsV1Api) -> None:
    name = f"t-del-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    apps.create_namespaced_deployment(name, _deployment("web", replicas=1))
    # A finalizer we control holds the namespace in Terminating deterministically,
    # the way a real controller's finalizer would.
    hold = "preview-engine.test/hold"
    core.create_namespaced_config_map(
        name,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="held", finalizers=[hold]), data={"k": "v"}
        ),
    )

    core.delete_namespace(name)
    ns = core.read_namespace(name)
    assert must(ns.status).phase == "Terminating"
    assert must(ns.metadata).deletion_timestamp is not None

    # The namespace controller deletes the contents; the held object waits for us.
    wait_until(
        "deployment deleted by the namespace controller",
        lambda: _gone(lambda: apps.read_namespaced_deployment("web", name)),
    )

    def held_for_deletion() -> client.V1ConfigMap | None:
        cm = core.read_namespaced_config_map("held", name)
        return cm if must(cm.metadata).deletion_timestamp else None

    held = wait_until("configmap marked for deletion", held_for_deletion)
    assert must(held.metadata).finalizers == [hold]
    assert must(core.read_namespace(name).status).phase == "Terminating"

    core.patch_namespaced_config_map(
        "held", name, [{"op": "remove", "path": "/metadata/finalizers"}]
    )
    wait_until(
        "configmap gone", lambda: _gone(lambda: core.read_namespaced_config_map("held", name))
    )
    wait_until(f"namespace {name} gone", lambda: _gone(lambda: core.read_namespace(name)), 120)


def test_invalid_name_is_rejected_with_422(core: client.CoreV1Api, namespace: str) -> None:
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="Bad_Name"))
        )
    assert err.value.status == 422
    body = json.loads(must(err.value.body))
    assert body["reason"] == "Invalid"
    assert "Bad_Name" in body["message"]


def test_kubectl_sees_what_the_python_client_created(
    core: client.CoreV1Api, namespace: str, kubectl: Kubectl
) -> None:
    value = uuid.uuid4().hex
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="from-python"), data={"v": value}),
    )
    out = kubectl("get", "configmap", "from-python", "-n", namespace, "-o", "jsonpath={.data.v}")
    assert out == value
    nodes = kubectl("get", "nodes", "-o", "name").split()
    assert len(nodes) >= kube.NODE_COUNT


def test_two_control_planes_side_by_side(
    kube_cluster: KubeCluster, core: client.CoreV1Api, tmp_path: Path
) -> None:
    """A second cluster is fully separate (own ports, own etcd) and stops cleanly."""
    if kube.missing_binaries():
        pytest.skip("needs the locally built binaries")
    marker = f"only-in-second-{uuid.uuid4().hex[:8]}"
    plane = kube.ControlPlane(tmp_path / "second")
    with plane:
        assert plane.kubeconfig != kube_cluster.kubeconfig
        with k8s_config.new_client_from_config(config_file=str(plane.kubeconfig)) as api:
            second = client.CoreV1Api(api)
            second.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=marker)))
            assert must(second.read_namespace(marker).metadata).name == marker
        assert _gone(lambda: core.read_namespace(marker))
        procs = list(plane.processes.children)
        assert {p.name for p in procs} >= {"etcd", "kube-apiserver", "kwok"}
    # Every process of the second plane is gone; stop() again is a no-op.
    assert all(p.popen.poll() is not None for p in procs)
    plane.stop()


def test_ports_handed_out_are_never_handed_out_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each is bound only later by its server, so the kernel may offer it again (it did:
    # the starter and kube-apiserver both got 42863). Here it always offers the same one.
    offers = iter([70001, 70001, 70001, 70002, 70003])

    class Offering:
        def __init__(self, *_: object) -> None:
            self.port = next(offers)

        def bind(self, _: object) -> None:
            pass

        def getsockname(self) -> tuple[str, int]:
            return "127.0.0.1", self.port

        def close(self) -> None:
            pass

    # A stand-in for the socket module as ports.py sees it; nothing else is touched.
    monkeypatch.setattr(ports, "socket", SimpleNamespace(
        socket=Offering, AF_INET=socket.AF_INET, SOCK_STREAM=socket.SOCK_STREAM))
    assert free_port() == 70001
    assert free_ports(2) == [70002, 70003]  # 70001 offered twice more, refused
