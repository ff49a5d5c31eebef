"""With PREVIEW_INGRESS_WAIT_FOR_ADDRESS an Ingress is ready only once its controller has
published an address for it and its Service has a ready endpoint: what a controller
needs before it routes the host (Traefik drops a route whose Service has no ready
endpoint). Here the test plays the controller and the endpoint controller, on kwok."""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any

from domain.naming import DEFAULT_BACKEND_HEADER
from domain.resources import IngressHost, IngressSpec, UrlCheck
from tests.activities.kubernetes.workload_env import CLUSTER, Env
from tests.polling import wait_until


def endpoint_slice(namespace: str, service: str, ready: bool) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service}-x", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.88.0.9"], "conditions": {"ready": ready}}]}


def ensure_in_background(env: Env, spec: IngressSpec) -> tuple[threading.Thread,
                                                                threading.Event]:
    done = threading.Event()

    def ensure() -> None:
        env.step(env.acts.ensure_ingress, spec)
        done.set()

    runner = threading.Thread(target=ensure, daemon=True)
    runner.start()
    return runner, done


def test_ready_once_addressed_and_its_service_has_a_ready_endpoint(env: Env) -> None:
    ns = env.namespace().name
    spec = IngressSpec(owner=env.owner, cluster=CLUSTER, namespace=ns, name="web",
                       hosts=[IngressHost(host="web-pr-3.preview.test", service="web",
                                          port=8080)], wait_for_address=True)
    env.create(endpoint_slice(ns, "web", ready=False))  # a pod that is not ready yet
    runner, done = ensure_in_background(env, spec)

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


class Controller(http.server.ThreadingHTTPServer):
    """Plays the ingress controller on 127.0.0.1: a host it does not route gets its 404
    page; what the preview's host gets is set by the test: (status, body, headers)."""

    def __init__(self, host: str) -> None:
        super().__init__(("127.0.0.1", 0), Answer)
        self.host = host
        self.answer: tuple[int, str, dict[str, str]] = NOT_FOUND
        self.seen: list[tuple[str, str]] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


NOT_FOUND: tuple[int, str, dict[str, str]] = (404, "404 page not found\n", {})


class Answer(http.server.BaseHTTPRequestHandler):
    server: Controller

    def do_GET(self) -> None:
        self.server.seen.append((self.headers["Host"], self.path))
        routed = self.headers["Host"].split(":")[0] == self.server.host
        status, body, headers = self.server.answer if routed else NOT_FOUND
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body.encode())))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_ready_only_once_the_url_answers_from_the_application(env: Env) -> None:
    """Traefik publishes the address before it routes the host: until the route is
    there, its 404 and the wake page (a 202 from the default backend) are not the app."""
    ns = env.namespace().name
    controller = Controller("web-pr-4.preview.test")
    threading.Thread(target=controller.serve_forever, daemon=True).start()
    spec = IngressSpec(owner=env.owner, cluster=CLUSTER, namespace=ns, name="web",
                       hosts=[IngressHost(host="web-pr-4.preview.test", service="web",
                                          port=8080)], url_port=8443,
                       url_check=UrlCheck(path="/healthz", health=True,
                                          connect_to=controller.address))
    runner, done = ensure_in_background(env, spec)
    try:
        wait_until("the controller's 404 noticed", lambda: any(
            "/healthz: 404, as for a host the ingress does not route" in str(h)
            for h in env.heartbeats))
        controller.answer = (202, "waking up", {DEFAULT_BACKEND_HEADER: "wake"})
        wait_until("the default backend noticed", lambda: any(
            "the default backend answered (202)" in str(h) for h in env.heartbeats))
        controller.answer = (500, "boom", {})  # the app, but not healthy
        wait_until("the 500 noticed", lambda: any("/healthz: 500" in str(h)
                                                  for h in env.heartbeats))
        assert not done.is_set()
        controller.answer = (200, "ok", {})
        assert done.wait(timeout=30), "ensure_ingress did not return once the app answered"
        # Asked through the controller's address, for the preview's host and health path.
        assert controller.seen[-1] == ("web-pr-4.preview.test:8443", "/healthz")
    finally:
        controller.shutdown()
        runner.join(timeout=5)


def test_an_app_without_a_health_check_or_behind_basic_auth_counts_once_routed(
        env: Env) -> None:
    """Without a health check `/` is asked, and any answer of the application counts,
    its own 404 too (unlike the controller's page for unknown hosts); with basic auth
    the route's 401 challenge shows the route is there."""
    ns = env.namespace().name
    controller = Controller("api-pr-4.preview.test")
    threading.Thread(target=controller.serve_forever, daemon=True).start()
    for answer in ((404, '{"error": "no route /"}', {}),
                   (401, "", {"WWW-Authenticate": 'Basic realm="Preview environment"'})):
        controller.answer = NOT_FOUND
        spec = IngressSpec(owner=env.owner, cluster=CLUSTER, namespace=ns, name="api",
                           hosts=[IngressHost(host="api-pr-4.preview.test", service="api",
                                              port=8080)],
                           url_check=UrlCheck(connect_to=controller.address))
        env.heartbeats.clear()
        runner, done = ensure_in_background(env, spec)
        try:
            wait_until("the controller's 404 noticed", lambda: any(
                "GET http://api-pr-4.preview.test/: 404, as for a host" in str(h)
                for h in env.heartbeats))
            controller.answer = answer
            assert done.wait(timeout=30), f"{answer[0]} from the route did not count"
        finally:
            runner.join(timeout=5)
    controller.shutdown()
