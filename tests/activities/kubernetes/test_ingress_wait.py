"""With PREVIEW_INGRESS_WAIT_FOR_ADDRESS an Ingress is ready only once its controller has
published an address for it and its Service has a ready endpoint: what a controller
needs before it routes the host (Traefik drops a route whose Service has no ready
endpoint). Here the test plays the controller and the endpoint controller, on kwok."""

from __future__ import annotations

import json
import threading
from typing import Any

from domain.resources import IngressHost, IngressSpec
from tests.activities.kubernetes.workload_env import CLUSTER, Env
from tests.polling import wait_until


def endpoint_slice(namespace: str, service: str, ready: bool) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service}-x", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.88.0.9"], "conditions": {"ready": ready}}]}


def test_ready_once_addressed_and_its_service_has_a_ready_endpoint(env: Env) -> None:
    ns = env.namespace().name
    spec = IngressSpec(owner=env.owner, cluster=CLUSTER, namespace=ns, name="web",
                       hosts=[IngressHost(host="web-pr-3.preview.test", service="web",
                                          port=8080)], wait_for_address=True)
    env.create(endpoint_slice(ns, "web", ready=False))  # a pod that is not ready yet
    done = threading.Event()

    def ensure() -> None:
        env.step(env.acts.ensure_ingress, spec)
        done.set()

    runner = threading.Thread(target=ensure, daemon=True)
    runner.start()

    # The controller takes it: an address. Still not ready: no ready endpoint.
    wait_until("the Ingress", lambda: env.get("ingress", "web", ns))
    env.kubectl("patch", "ingress", "web", "-n", ns, "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}}}))
    wait_until("a heartbeat about the endpoints", lambda: any(
        "no ready endpoint of Service web" in str(h) for h in env.heartbeats))
    assert not done.is_set()

    env.kubectl("apply", "-f", "-", input=json.dumps(endpoint_slice(ns, "web", ready=True)))
    assert done.wait(timeout=30), "ensure_ingress did not return once routed"
    runner.join(timeout=5)
