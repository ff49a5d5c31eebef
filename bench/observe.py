"""What the real-node latency benchmark (bench/url_latency.py) watches from outside the
engine: a preview's URL polled as a browser would (`UrlPoller`), its pods as the API
server reports them (`PodWatch`, a watch, so each change is seen within milliseconds
by this process's clock), the kubelet's image pull times (its `Pulled` events), and a
bare-Kubernetes baseline (`Baseline`): the same Deployments applied straight to the API
server, without the engine.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

from activities.kubernetes import KubernetesActivities
from activities.kubernetes.api import NAME_LABEL, KubeApi, Ref
from domain.plan import Plan
from domain.resources import ApplicationSpec
from stack.node import open_preview_url

PAGE_COMMIT = re.compile(r'id="commit">\s*([^<\s]+)\s*<')
TITLE = re.compile(r"<title>([^<]*)</title>", re.IGNORECASE)
# The kubelet's `Pulled` event: `Successfully pulled image "x" in 115ms (115ms including
# waiting). Image size: ...`, or `Container image "x" already present on machine`.
PULLED = re.compile(r" in (\S+) \((\S+) including waiting\)")
GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|h|m|s)")
GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_seconds(text: str) -> float:
    """A Go duration (`1m2.5s`, `115ms`, `850µs`) in seconds."""
    parts = GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Go duration: {text!r}")
    return sum(float(number) * GO_UNITS[unit] for number, unit in parts)


def commit_of(response: httpx.Response, kind: str) -> str | None:
    """The commit an answer says it serves: the demo page's `id="commit"` field (web) or
    the `commit` of its JSON (api); None when it says none."""
    if response.status_code != 200:
        return None
    if kind == "page":
        match = PAGE_COMMIT.search(response.text)
        return match.group(1) if match else None
    try:
        value = response.json().get("commit")
    except ValueError:
        return None
    return str(value) if value else None


@dataclass
class Answer:
    sent: float  # time.time() when the request went out
    done: float  # ... and when its answer (or error) came back
    status: int | None  # None: no HTTP answer (connection refused, reset, timeout)
    commit: str | None
    error: str | None = None
    title: str = ""  # of a page that is not the application's (an error, the starter's)

    @property
    def failed(self) -> bool:
        return self.status != 200


class UrlPoller(threading.Thread):
    """GET a preview URL every `interval` seconds (from one request's start to the next
    one's; a new connection each time, as stack.node.open_preview_url makes it) and keep
    every answer; with `stop_at`, stop at the first 200 that serves that commit."""

    def __init__(self, url: str, kind: str, *, interval: float = 0.05,
                 stop_at: str | None = None, limit: int = 50_000) -> None:
        super().__init__(daemon=True, name=f"poll {url}")
        self.url, self.kind, self.interval, self.stop_at = url, kind, interval, stop_at
        self.limit = limit
        self.answers: list[Answer] = []
        self.stopped = threading.Event()
        self.seen: dict[str, float] = {}  # commit → when the first answer serving it came
        self.stop_text = ""  # the body of the answer that served `stop_at`
        self._changed = threading.Condition()

    def run(self) -> None:
        while not self.stopped.is_set() and len(self.answers) < self.limit:
            began = time.time()
            try:
                response = open_preview_url(self.url, timeout=5.0)
                answer = Answer(began, time.time(), response.status_code,
                                commit_of(response, self.kind))
                if response.status_code != 200:
                    found = TITLE.search(response.text)
                    answer.title = (found.group(1) if found else response.text[:40]).strip()
            except httpx.HTTPError as error:
                answer = Answer(began, time.time(), None, None, type(error).__name__)
            with self._changed:
                self.answers.append(answer)
                if answer.commit and answer.commit not in self.seen:
                    self.seen[answer.commit] = answer.done
                self._changed.notify_all()
            if self.stop_at and answer.commit == self.stop_at:
                self.stop_text = response.text
                break
            self.stopped.wait(max(0.0, self.interval - (time.time() - began)))
        self.stopped.set()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, commit: str | None, timeout: float) -> float:
        """When the first answer serving `commit` came (any answer when None); raises
        TimeoutError past `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if commit is None and self.answers:
                    return self.answers[0].done
                if commit is not None and commit in self.seen:
                    return self.seen[commit]
                left = deadline - time.monotonic()
                if left <= 0 or (self.stopped.is_set() and self.stop_at != commit):
                    last = self.answers[-1] if self.answers else None
                    raise TimeoutError(f"{self.url} did not serve {commit} within "
                                       f"{timeout:.0f}s; last answer {last}")
                self._changed.wait(min(left, 1.0))

    def finish(self) -> None:
        self.stopped.set()
        self.join(timeout=10)

    def outcomes(self, since: float = 0.0, until: float = float("inf")) -> dict[str, int]:
        """How many answers of each kind came in a window: `200 <commit>`, a status
        code, or an error's name."""
        counts: Counter[str] = Counter()
        for a in self.answers:
            if since <= a.sent <= until:
                counts[a.error or (f"200 {(a.commit or '?')[:12]}" if a.status == 200
                                   else f"{a.status} {a.title}".strip())] += 1
        return dict(counts)


@dataclass
class PodTimes:
    """When this process saw a pod reach each point (time.time(); None: not seen)."""

    namespace: str
    name: str
    app: str
    image: str
    created: float  # first seen (the API server had just stored it)
    scheduled: float | None = None
    started: float | None = None  # its container running
    ready: float | None = None
    deleted: float | None = None
    restarts: int = 0


class PodWatch(threading.Thread):
    """A watch on the pods of some applications (NAME_LABEL) in every namespace."""

    def __init__(self, kubeconfig: str, apps: tuple[str, ...] = ("web", "api")) -> None:
        super().__init__(daemon=True, name="pod watch")
        self.kubeconfig, self.apps = kubeconfig, apps
        self.pods: dict[str, PodTimes] = {}  # by uid
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.errors: list[str] = []

    def run(self) -> None:
        api = k8s_config.new_client_from_config(config_file=self.kubeconfig)
        core = k8s.CoreV1Api(api)
        selector = f"{NAME_LABEL} in ({','.join(self.apps)})"
        version = ""
        while not self.stopped.is_set():
            try:
                if not version:
                    listed = core.list_pod_for_all_namespaces(label_selector=selector)
                    for pod in listed.items:
                        self._saw("ADDED", pod)
                    self._gone({str(pod.metadata.uid) for pod in listed.items if pod.metadata})
                    version = str(listed.metadata.resource_version) if listed.metadata else ""
                stream = k8s_watch.Watch().stream(
                    core.list_pod_for_all_namespaces, label_selector=selector,
                    resource_version=version, timeout_seconds=5, allow_watch_bookmarks=True)
                for event in stream:
                    pod = event["object"]
                    if event["type"] == "ERROR":
                        version = ""  # expired: list again
                        break
                    if isinstance(pod, dict):  # a BOOKMARK: the client leaves it raw
                        version = (pod.get("metadata") or {}).get("resourceVersion") or version
                        continue
                    version = pod.metadata.resource_version or version
                    self._saw(event["type"], pod)
                    if self.stopped.is_set():
                        break
            except Exception as error:  # keep watching; a relist catches up
                self.errors.append(repr(error)[:200])
                version = ""
                self.stopped.wait(0.2)
        api.close()

    def _saw(self, kind: str, pod: Any) -> None:
        now = time.time()
        meta, spec, status = pod.metadata, pod.spec, pod.status
        with self.lock:
            times = self.pods.get(meta.uid)
            if times is None:
                times = self.pods[meta.uid] = PodTimes(
                    meta.namespace, meta.name, (meta.labels or {}).get(NAME_LABEL, "?"),
                    spec.containers[0].image, now)
            if kind == "DELETED":
                times.deleted = times.deleted or now
                return
            if spec.node_name and times.scheduled is None:
                times.scheduled = now
            for container in (status.container_statuses or []) if status else []:
                times.restarts = max(times.restarts, container.restart_count or 0)
                if container.state and container.state.running and times.started is None:
                    times.started = now
            ready = any(c.type == "Ready" and c.status == "True"
                        for c in (status.conditions or []) if status)
            if ready and times.ready is None:
                times.ready = now

    def _gone(self, present: set[str]) -> None:
        """After a (re)list: pods we knew that are not there any more were deleted while
        the watch was down (their DELETED event is lost); say so now."""
        now = time.time()
        with self.lock:
            for uid, times in self.pods.items():
                if uid not in present and times.deleted is None:
                    times.deleted = now

    def of(self, namespace: str, tag: str) -> list[PodTimes]:
        """The pods of `namespace` whose image has tag `tag`, oldest first."""
        with self.lock:
            found = [p for p in self.pods.values()
                     if p.namespace == namespace and p.image.endswith(f":{tag}")]
        return sorted(found, key=lambda p: p.created)

    def wait(self, namespace: str, tag: str, predicate: Any, timeout: float) -> list[PodTimes]:
        deadline = time.monotonic() + timeout
        while not predicate(pods := self.of(namespace, tag)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"pods of {namespace} at {tag[:12]}: not there in "
                                   f"{timeout:.0f}s: {pods}")
            time.sleep(0.05)  # polling a condition with a deadline
        return pods

    def finish(self) -> None:
        self.stopped.set()


def pulls(kubeconfig: str, namespace: str) -> dict[str, dict[str, Any]]:
    """Pod name → the kubelet's word on its image pull (its `Pulled` event) and on its
    failed readiness probes (`Unhealthy` events: how many, and the first message)."""
    api = k8s_config.new_client_from_config(config_file=kubeconfig)
    try:
        events = k8s.CoreV1Api(api).list_namespaced_event(namespace).items
    finally:
        api.close()
    found: dict[str, dict[str, Any]] = {}
    for event in events:
        message = event.message or ""
        pod = found.setdefault(str(event.involved_object.name), {})
        if event.reason == "Pulled":
            match = PULLED.search(message)
            pod.update({
                "pull_seconds": round(go_seconds(match.group(1)), 4) if match else 0.0,
                "including_waiting_seconds": round(go_seconds(match.group(2)), 4) if match
                else 0.0,
                "already_present": "already present" in message,
            })
        elif event.reason == "Unhealthy":
            pod["probe_failures"] = pod.get("probe_failures", 0) + (event.count or 1)
            pod.setdefault("probe_failure", message[:200])
    return found


def pod_facts(pods: list[PodTimes], pulled: dict[str, dict[str, Any]],
              t0: float) -> list[dict[str, Any]]:
    """Each pod's moments (seconds after t0) and durations, with its image pull."""
    def rel(t: float | None) -> float | None:
        return round(t - t0, 3) if t is not None else None

    def span(a: float | None, b: float | None) -> float | None:
        return round(b - a, 3) if a is not None and b is not None else None

    return [{
        "pod": p.name, "app": p.app,
        "created_at": rel(p.created), "started_at": rel(p.started),
        "ready_at": rel(p.ready), "deleted_at": rel(p.deleted),
        "created_to_started": span(p.created, p.started),
        "started_to_ready": span(p.started, p.ready),
        "created_to_ready": span(p.created, p.ready),
        "restarts": p.restarts,
        **pulled.get(p.name, {}),
    } for p in pods]


class Baseline:
    """The floor under a preview's latency: the web and api Deployments the engine
    makes for this plan (the same manifests, from KubernetesActivities: replicas, probes,
    preStop, hardened pods), with a Service each and one Ingress, applied straight to the
    API server in a namespace of their own; no configuration, secret, database, cache,
    network policy or quota. Their images have a commit of their own (freshly pushed, so
    pulled as a preview's are)."""

    APPS = ("web", "api")

    def __init__(self, kubeconfig: str, plan: Plan, number: int, url_port: int | None) -> None:
        self.api = KubeApi(k8s_config.new_client_from_config(config_file=kubeconfig))
        self.plan = plan
        self.namespace = f"bench-baseline-{number}"
        port = f":{url_port}" if url_port else ""
        domain = plan.urls["web"].split("://", 1)[1].split(".", 1)[1].rsplit(":", 1)[0]
        # Not `<app>-pr-<n>`: the starter's wake route answers such hosts from Temporal.
        self.hosts = {app: f"{app}-base-{number}.{domain}" for app in self.APPS}
        self.urls = {app: f"http://{host}{port}" for app, host in self.hosts.items()}

    def _specs(self, commit: str) -> list[ApplicationSpec]:
        specs = []
        for app in self.APPS:
            spec = self.plan.step(f"app/{app}").spec
            assert isinstance(spec, ApplicationSpec)
            image = spec.image.rsplit(":", 1)[0].replace("/hello/", "/baseline/")
            specs.append(spec.model_copy(update={
                "namespace": self.namespace, "image": f"{image}:{commit}",
                "config_map": None, "secret": None}))
        return specs

    def apply(self, commit: str) -> None:
        """Create (or update to `commit`) everything; returns at once, as `kubectl apply`."""
        labels = {"app.kubernetes.io/part-of": "bench-baseline"}
        ns = Ref.of("Namespace", self.namespace)
        self.api.apply(ns, ns.manifest(labels))
        for spec in self._specs(commit):
            ref, deployment = KubernetesActivities._deployment(spec)
            own = {**labels, NAME_LABEL: spec.name}
            deployment["metadata"]["labels"] = own
            deployment["spec"]["template"]["metadata"]["labels"] = own
            self.api.apply(ref, deployment)
            ref, service = KubernetesActivities._service(spec)
            service["metadata"]["labels"] = own
            self.api.apply(ref, service)
        ingress = Ref.of("Ingress", "baseline", self.namespace)
        services = {s.name: s.ports[0] for s in self._specs(commit)}
        self.api.apply(ingress, ingress.manifest(labels, spec={"rules": [
            {"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
                "service": {"name": app, "port": {"number": services[app]}}}}]}}
            for app, host in self.hosts.items()]}))

    def delete(self, timeout: float = 120) -> float:
        """Delete the namespace and wait until it is gone; seconds it took."""
        began = time.monotonic()
        ref = Ref.of("Namespace", self.namespace)
        self.api.delete(ref)
        while self.api.get(ref) is not None:
            if time.monotonic() - began > timeout:
                raise TimeoutError(f"namespace {self.namespace} still there after {timeout}s")
            time.sleep(0.2)  # polling a condition with a deadline
        return round(time.monotonic() - began, 3)
