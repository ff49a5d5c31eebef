"""The real node (stack/node.py): pods run, resolve names, answer through the ingress,
cannot leave the machine, obey NetworkPolicies in both directions; a node killed with
SIGKILL leaves nothing that its successor does not remove.

Every check is made from outside the code under test: kubectl (exec runs inside the
container), HTTP through Traefik on 127.0.0.1, `ip`, /proc and the cgroup filesystem.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from activities.kubernetes.policies import network_policies
from domain.blueprint import EgressRule
from domain.naming import Ownership
from domain.resources import NamespaceSpec
from stack import images
from stack.node import RUN_DIR, RealNode
from stack.node_cleanup import NodeRecord, leftovers
from stack.postgres import PostgresServer
from tests.plugins.node import RealCluster
from tests.polling import wait_until

pytestmark = [pytest.mark.kube, pytest.mark.slow]
COMMIT = "0c0ffee" + uuid.uuid4().hex[:9]


def deployment(cluster: RealCluster, namespace: str, name: str, image: str) -> str:
    """A hardened Deployment + Service of the demo in `namespace`, like an application's."""
    manifests = [
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": name, "namespace": namespace},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                  "template": {"metadata": {"labels": {"app": name}}, "spec": {
                      "automountServiceAccountToken": False,
                      "securityContext": {"runAsNonRoot": True,
                                          "seccompProfile": {"type": "RuntimeDefault"}},
                      "containers": [{
                          "name": name, "image": image, "ports": [{"containerPort": 8080}],
                          "env": [{"name": "PORT", "value": "8080"}],
                          "readinessProbe": {"httpGet": {"path": "/health", "port": 8080},
                                             "periodSeconds": 1},
                          "securityContext": {"allowPrivilegeEscalation": False,
                                              "readOnlyRootFilesystem": True,
                                              "capabilities": {"drop": ["ALL"]}}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
         "spec": {"selector": {"app": name}, "ports": [{"port": 8080, "targetPort": 8080}]}},
    ]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))
    cluster.kubectl("rollout", "status", f"deployment/{name}", "-n", namespace,
                    "--timeout=90s", timeout=100)
    return cluster.kubectl("get", "pods", "-n", namespace, "-l", f"app={name}", "-o",
                           "jsonpath={.items[0].metadata.name}")


@pytest.fixture(scope="module")
def demo(real_cluster: RealCluster) -> dict[str, str]:
    return images.push_demo_images(real_cluster.registry_host, COMMIT)


@pytest.fixture(scope="module")
def apps(real_cluster: RealCluster, demo: dict[str, str],
         postgres_server: PostgresServer) -> Iterator[dict[str, tuple[str, str]]]:
    """Two previews' namespaces with the engine's network policies (a may reach the
    database server, b may not) and a source environment (src) without any: key →
    (namespace, pod of its `api` app)."""
    suffix = uuid.uuid4().hex[:6]
    gateway = f"{real_cluster.gateway}/32"
    host = f"{real_cluster.real_node.host_address}/32"
    found: dict[str, tuple[str, str]] = {}
    database = [EgressRule(cidr=gateway, ports=[postgres_server.port])]
    for key in ("a", "b", "src"):
        namespace = f"node-{key}-{suffix}"
        real_cluster.kubectl("create", "namespace", namespace)
        if key != "src":  # a may reach the database server, b may not
            spec = NamespaceSpec(owner=Ownership(environment=namespace), name=namespace,
                                 ingress_cidrs=[host], dns_cidrs=[gateway],
                                 egress=database if key == "a" else [])
            policies = [m for _, m in network_policies(spec, {"test": "real-node"})]
            real_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(policies))
        found[key] = (namespace, deployment(real_cluster, namespace, "api", demo["api"]))
    yield found
    for namespace, _ in found.values():
        real_cluster.kubectl("delete", "namespace", namespace, "--wait=false")


def probe(cluster: RealCluster, where: tuple[str, str], target: str) -> str:
    """`demo probe` inside the pod's container: one TCP connection, and what happened."""
    namespace, pod = where
    done = cluster.in_pod(namespace, pod, "/demo", "probe", target)
    return (done.stdout + done.stderr).strip()


def test_a_pod_runs_as_no_one_and_answers_through_the_ingress(
        real_cluster: RealCluster, apps: dict[str, tuple[str, str]]) -> None:
    namespace, pod = apps["a"]
    ingress = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"name": "api", "namespace": namespace},
               "spec": {"rules": [{"host": f"{namespace}.preview.localhost", "http": {
                   "paths": [{"path": "/", "pathType": "Prefix", "backend": {
                       "service": {"name": "api", "port": {"number": 8080}}}}]}}]}}
    real_cluster.kubectl("apply", "-f", "-", input=json.dumps(ingress))
    url = f"http://{namespace}.preview.localhost:{real_cluster.real_node.ingress_port}/"
    wait_until("the ingress to route", lambda: real_cluster.open(url).status_code == 200)
    answer = real_cluster.open(url).json()
    assert answer["commit"] == COMMIT  # the process of the image built for that commit

    who = real_cluster.in_pod(namespace, pod, "/demo", "whoami")
    assert who.returncode == 0, who.stderr
    uid = int(who.stdout.split()[0].removeprefix("uid="))
    assert uid != 0 and "token=false" in who.stdout
    # Its own Service, by name: cluster DNS and kube-proxy both work under the policies.
    assert probe(real_cluster, apps["a"], "api:8080") == "connected"


def test_a_pod_cannot_leave_the_machine(
        real_cluster: RealCluster, apps: dict[str, tuple[str, str]]) -> None:
    # The source environment has no policy at all: the node's guards alone stop it.
    for target in ("1.1.1.1:80", "10.255.255.1:80", "169.254.169.254:80"):
        said = probe(real_cluster, apps["src"], target)
        assert said.startswith("refused:") and "network is unreachable" in said, (target, said)
    # Nor the host behind the node, nor a name outside the cluster.
    assert "i/o timeout" in probe(real_cluster, apps["src"],
                                  f"{real_cluster.real_node.host_address}:22")
    assert "server misbehaving" in probe(real_cluster, apps["src"], "example.com:80")  # REFUSED


def test_previews_are_closed_to_each_other_and_to_the_source(
        real_cluster: RealCluster, apps: dict[str, tuple[str, str]],
        postgres_server: PostgresServer) -> None:
    def address(key: str) -> str:
        namespace, _ = apps[key]
        return f"api.{namespace}.svc.cluster.local:8080"

    assert probe(real_cluster, apps["a"], address("a")) == "connected"
    # a → b: b's ingress is closed to other namespaces; a → src: a's egress is closed.
    assert "i/o timeout" in probe(real_cluster, apps["a"], address("b"))
    assert "i/o timeout" in probe(real_cluster, apps["a"], address("src"))
    # src has no policy of its own, and still cannot get into a preview.
    assert "i/o timeout" in probe(real_cluster, apps["src"], address("a"))
    assert probe(real_cluster, apps["src"], address("src")) == "connected"
    # The database server at the gateway: a preview reaches it only when its egress says
    # so (the node would let any pod through: the policy alone says no to b).
    database = f"{real_cluster.gateway}:{postgres_server.port}"
    assert probe(real_cluster, apps["a"], database) == "connected"
    assert "i/o timeout" in probe(real_cluster, apps["b"], database)
    assert probe(real_cluster, apps["src"], database) == "connected"


def test_a_node_killed_with_sigkill_is_removed_by_the_next_one(
        real_cluster: RealCluster, tmp_path: Path) -> None:
    """A second node of its own stack (`python -m stack.node up`), with a pod running,
    is killed with SIGKILL: its shims, pods, namespace, routes and cgroups stay. The next
    node to take its slot removes them all; stopping that one leaves nothing either."""
    stack = subprocess.Popen(
        [sys.executable, "-m", "stack.node", "up", "--state-dir", str(tmp_path / "stack")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=Path(__file__).parents[2], start_new_session=True)
    try:
        assert stack.stdout is not None
        lines: list[str] = []
        for line in stack.stdout:
            lines.append(line)
            if line.startswith("KUBECONFIG="):
                break
        assert lines and lines[-1].startswith("KUBECONFIG="), "".join(lines[-30:])
        slot = int(lines[-1].split("slot ")[1].split()[0])
        record = NodeRecord.from_json(json.loads(
            (RUN_DIR / f"preview-node-{slot}.json").read_text()))
        kubeconfig = lines[-1].split()[0].removeprefix("KUBECONFIG=")
        kubectl = [str(real_cluster.kubectl_path), f"--kubeconfig={kubeconfig}"]
        subprocess.run([*kubectl, "run", "sleeper", "--image", lines[-1].split()[-1],
                        "--restart=Never"], check=True, capture_output=True)
        wait_until("the pod to run", lambda: subprocess.run(
            [*kubectl, "get", "pod", "sleeper", "-o", "jsonpath={.status.phase}"],
            capture_output=True, text=True).stdout == "Running", timeout=60)
        os.kill(stack.pid, signal.SIGKILL)
        stack.wait(timeout=10)
    finally:
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGKILL)
    left = leftovers(record)
    assert any(item.startswith("process") for item in left)  # the shim and the pod
    assert f"network namespace {record.network.name}" in left

    successor = RealNode(real_cluster.real_node.plane, tmp_path / "successor",
                         sandbox_image=real_cluster.real_node.sandbox_image,
                         relayed_ports=real_cluster.real_node.relayed_ports)
    with successor:  # start() waits for it to be Ready on that slot
        assert successor.name == record.network.name  # the lowest free slot: the dead one's
    assert leftovers(record) == []
    assert not (RUN_DIR / f"preview-node-{slot}.json").exists()
