"""Kubernetes activities: namespaces, config maps, secrets, applications and ingresses,
and the orphan sweeper's per-cluster listing and removal of environments.

Every object is written with server-side apply under one field manager, so applying
the same manifest twice is a no-op (same resourceVersion) and a half-done run simply
converges. Before applying, each activity reads the object and refuses to adopt one
that lacks our ownership labels for the same environment (`force` is only ever used
on objects we already own, or that do not exist yet).

The activities use the official `kubernetes` client's `ApiClient` as a transport and
send plain JSON manifests: the typed models add nothing to server-side apply and
would have to be converted back to JSON anyway. Activities are plain `def`s: the
client blocks, and the worker runs them on its thread pool.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import ROLLOUT_FAILED, foreign_resource, invalid_input
from domain.naming import MANAGED_BY, Ownership
from domain.resources import (
    ApplicationSpec,
    ConfigMapSpec,
    IngressSpec,
    KubeEnvironmentInput,
    KubeSweepInput,
    NamespaceSpec,
    SecretSpec,
    StepInput,
    StepOutput,
)
from domain.secrets import SealedValue
from engine.sealing import Sealer, UnsealError
from engine.settings import Settings

Json = dict[str, Any]

FIELD_MANAGER = "preview-engine"
# Sleep writes only spec.replicas, under its own manager: an apply of a partial
# manifest by FIELD_MANAGER would remove every other field that manager owns.
SCALER_MANAGER = "preview-engine-scaler"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"  # JSON is valid YAML
MERGE_PATCH = "application/merge-patch+json"

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
ENVIRONMENT_LABEL = "preview.dev/environment"
NAME_LABEL = "app.kubernetes.io/name"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"

# Previews run arbitrary images from pull requests: refuse privileged pods, warn on
# anything that would not pass the restricted profile.
POD_SECURITY_LABELS = {
    "pod-security.kubernetes.io/enforce": "baseline",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/audit": "restricted",
}

# Container states that a kubelet will not get out of by itself: the rollout fails
# now instead of at its deadline.
FATAL_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)

API_ERROR = "KubernetesApiError"
CONFLICT = "Conflict"
NAMESPACE_TERMINATING = "NamespaceTerminating"


# --- clients ------------------------------------------------------------------------


# A cluster's kubeconfig kept sealed in the store: (parsed kubeconfig, context or None).
StoredKubeconfig = tuple[dict[str, Any], str | None]


class ClusterClients:
    """Cluster name → `ApiClient`, built on first use and cached.

    `kubeconfigs` maps each cluster name (the specs' `cluster` field) to a kubeconfig
    path, optionally `path#context`; `None` means the in-cluster service account. A name
    not there is looked up with `stored` (the sealed kubeconfigs of the store), if given.
    Nothing falls back to a default cluster: an unknown name is a non-retryable error.
    """

    def __init__(self, kubeconfigs: Mapping[str, str | None], *,
                 stored: Callable[[str], StoredKubeconfig | None] | None = None) -> None:
        self._kubeconfigs = dict(kubeconfigs)
        self._stored = stored
        self._clients: dict[str, k8s_client.ApiClient] = {}
        self._lock = threading.Lock()  # activities run on a thread pool
        # The client library writes a stored kubeconfig's certificates and key to files:
        # into a private folder of ours (0700), removed with these clients.
        self._files: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ClusterClients:
        return cls({"default": settings.kubeconfig, **settings.kube_contexts})

    @property
    def names(self) -> list[str]:
        return sorted(self._kubeconfigs)

    def get(self, cluster: str) -> k8s_client.ApiClient:
        with self._lock:
            api = self._clients.get(cluster)
            if api is not None:
                return api
        if cluster in self._kubeconfigs:
            api = self._build(self._kubeconfigs[cluster])
        else:
            # Outside the lock: the store is asked on the worker's event loop.
            stored = self._stored(cluster) if self._stored else None
            if stored is None:
                raise invalid_input(
                    f"cluster {cluster!r} is not configured (known: {', '.join(self.names)}"
                    + ("; nor stored" if self._stored else "")
                    + "); add it to PREVIEW_KUBE_CONTEXTS or `preview clusters set` it"
                )
            config, context = stored
            with self._lock:
                self._files = self._files or tempfile.mkdtemp(prefix="preview-kube-")
            configuration = k8s_client.Configuration()
            k8s_config.load_kube_config_from_dict(
                config, context=context, client_configuration=configuration,
                persist_config=False, temp_file_path=self._files)
            api = k8s_client.ApiClient(configuration)
        with self._lock:
            # Another thread may have built it meanwhile: keep one, close the other.
            kept = self._clients.setdefault(cluster, api)
        if kept is not api:
            api.close()
        return kept

    @staticmethod
    def _build(kubeconfig: str | None) -> k8s_client.ApiClient:
        if kubeconfig is None:
            configuration = k8s_client.Configuration()
            k8s_config.load_incluster_config(client_configuration=configuration)
            return k8s_client.ApiClient(configuration)
        path, _, context = kubeconfig.partition("#")
        # persist_config=False: never write refreshed tokens back into the file.
        return k8s_config.new_client_from_config(config_file=path, context=context or None,
                                                 persist_config=False)

    def close(self) -> None:
        with self._lock:
            for api in self._clients.values():
                api.close()
            self._clients.clear()
            if self._files:
                shutil.rmtree(self._files, ignore_errors=True)
                self._files = None


@dataclass(frozen=True)
class Ref:
    """Where one object lives in the API."""

    api_version: str
    kind: str
    plural: str
    name: str
    namespace: str | None = None

    @property
    def path(self) -> str:
        base = f"/api/{self.api_version}" if "/" not in self.api_version else (
            f"/apis/{self.api_version}"
        )
        scope = f"/namespaces/{self.namespace}" if self.namespace else ""
        return f"{base}{scope}/{self.plural}/{self.name}"

    @property
    def what(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else (
            f"{self.kind} {self.name}"
        )

    def manifest(self, labels: Mapping[str, str], **rest: Any) -> Json:
        metadata: Json = {"name": self.name, "labels": dict(labels)}
        if self.namespace:
            metadata["namespace"] = self.namespace
        return {"apiVersion": self.api_version, "kind": self.kind, "metadata": metadata, **rest}


def _ref(kind: str, name: str, namespace: str | None = None) -> Ref:
    api_version, plural = _KINDS[kind]
    return Ref(api_version, kind, plural, name, namespace)


_KINDS: dict[str, tuple[str, str]] = {
    "Namespace": ("v1", "namespaces"),
    "ResourceQuota": ("v1", "resourcequotas"),
    "LimitRange": ("v1", "limitranges"),
    "ConfigMap": ("v1", "configmaps"),
    "Secret": ("v1", "secrets"),
    "Service": ("v1", "services"),
    "Pod": ("v1", "pods"),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies"),
    "Ingress": ("networking.k8s.io/v1", "ingresses"),
    "Deployment": ("apps/v1", "deployments"),
    "ReplicaSet": ("apps/v1", "replicasets"),
    "StatefulSet": ("apps/v1", "statefulsets"),
    "Job": ("batch/v1", "jobs"),
    "PersistentVolumeClaim": ("v1", "persistentvolumeclaims"),
    "PersistentVolume": ("v1", "persistentvolumes"),
}


def _list_path(kind: str, namespace: str | None) -> str:
    """Collection path; `namespace=None` for cluster-scoped kinds (or across namespaces)."""
    api_version, plural = _KINDS[kind]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{scope}/{plural}"


class KubeApi:
    """JSON requests through an `ApiClient`; API errors become `ApplicationError`s.

    400/422 (the API rejected the manifest) are non-retryable InvalidInput; everything
    else is retryable. The API's own message is kept intact, but the raw response
    (headers, full body) is not chained, so it never reaches the workflow history.
    Connection errors are not caught: they are retryable as they are.
    """

    def __init__(self, api: k8s_client.ApiClient, timeout: tuple[float, float] = (10, 60)):
        self._api = api
        self._timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Iterable[tuple[str, str | bool | int]] = (),
        body: Json | None = None,
        content_type: str | None = None,
        what: str,
        missing_ok: bool = False,
    ) -> Json | None:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        elif body is not None:
            headers["Content-Type"] = "application/json"
        serialized = self._api.param_serialize(
            method,
            path,
            query_params=list(query),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        m, url, header_params, payload, post_params = serialized
        response = self._api.call_api(
            m, url, header_params=header_params, body=payload, post_params=post_params,
            _request_timeout=self._timeout,
        )
        raw = response.read() or b""
        status = int(response.status)
        if 200 <= status < 300:
            return json.loads(raw) if raw else {}
        if status == 404 and missing_ok:
            return None
        raise _api_error(method, what, status, response.reason, raw)

    def get(self, ref: Ref) -> Json | None:
        return self.request("GET", ref.path, what=ref.what, missing_ok=True)

    def list(
        self, kind: str, namespace: str | None, selector: Mapping[str, str] | None = None
    ) -> list[Json]:
        query: list[tuple[str, str | bool | int]] = []
        if selector:
            query.append(
                ("labelSelector", ",".join(f"{k}={v}" for k, v in sorted(selector.items())))
            )
        where = f" in {namespace}" if namespace else ""
        result = self.request(
            "GET", _list_path(kind, namespace), query=query, what=f"{kind}s{where}"
        )
        return list((result or {}).get("items") or [])

    def apply(self, ref: Ref, manifest: Json) -> Json:
        result = self.request(
            "PATCH",
            ref.path,
            query=[("fieldManager", FIELD_MANAGER), ("force", True)],
            body=manifest,
            content_type=APPLY_CONTENT_TYPE,
            what=ref.what,
        )
        assert result is not None
        return result

    def delete(self, ref: Ref) -> bool:
        """Delete; False when it was already gone."""
        result = self.request(
            "DELETE",
            ref.path,
            query=[("propagationPolicy", "Background")],
            what=ref.what,
            missing_ok=True,
        )
        return result is not None


def _api_error(
    method: str, what: str, status: int, reason: str | None, raw: bytes
) -> ApplicationError:
    message = ""
    try:
        parsed = json.loads(raw)
        if isinstance(parsed, dict):
            message = str(parsed.get("message") or "")
    except ValueError:
        pass
    text = f"{method} {what}: HTTP {status} {reason or ''}".rstrip()
    if message:
        text = f"{text}: {message}"
    if status in (400, 422):
        # The API rejected what the blueprint asked for: retrying cannot help.
        return invalid_input(text)
    if status == 409:
        return ApplicationError(text, type=CONFLICT)
    return ApplicationError(text, type=API_ERROR)


# --- helpers ------------------------------------------------------------------------


def heartbeat(*details: Any) -> None:
    # Outside an activity (scripts, a sweeper CLI) there is nobody to heartbeat to.
    if activity.in_activity():
        activity.heartbeat(*details)


def poll_delays(cap: float, first: float = 0.1) -> Iterator[float]:
    """Waits between polls of something converging: short at first, since most rollouts
    and deletions end within a second or two, then every `cap` seconds."""
    delay = min(first, cap)
    while True:
        yield delay
        delay = min(delay * 2, cap)


def is_ours(obj: Json, owner: Ownership) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return bool(
        labels.get(MANAGED_BY_LABEL) == MANAGED_BY
        and labels.get(ENVIRONMENT_LABEL) == owner.environment
    )


def _redact(error: ApplicationError, values: Iterable[str]) -> ApplicationError:
    """The same error with every secret value (and its base64) masked out."""
    message = error.message
    for value in values:
        if not value:
            continue
        for form in (value, base64.b64encode(value.encode()).decode()):
            message = message.replace(form, "***")
    if message == error.message:
        return error
    return ApplicationError(message, type=error.type, non_retryable=error.non_retryable)


@dataclass(frozen=True)
class RolloutState:
    ready: bool
    progress: Json
    fatal: str | None = None  # the rollout cannot complete: why
    waiting: str | None = None  # the most telling reason it is not ready yet


# --- activities ---------------------------------------------------------------------


class KubernetesActivities:
    """The Kubernetes activity pairs; holds its clients so tests inject them."""

    def __init__(
        self,
        clusters: ClusterClients,
        sealer: Sealer,
        *,
        poll_interval: float = 2.0,
        namespace_timeout: float = 900.0,
    ) -> None:
        self.clusters = clusters
        self.sealer = sealer
        self.poll_interval = poll_interval
        self.namespace_timeout = namespace_timeout

    def api(self, cluster: str) -> KubeApi:
        return KubeApi(self.clusters.get(cluster))

    # -- shared steps -----------------------------------------------------------------

    @staticmethod
    def _ensure(api: KubeApi, ref: Ref, manifest: Json, owner: Ownership) -> Json:
        """Apply `manifest`, unless a same-named object exists without our mark."""
        current = api.get(ref)
        if current is not None and not is_ours(current, owner):
            raise foreign_resource(ref.what, owner.environment)
        return api.apply(ref, manifest)

    @staticmethod
    def _remove(api: KubeApi, ref: Ref, owner: Ownership) -> bool:
        """Delete if it exists and is ours; what is absent or not ours is left alone."""
        current = api.get(ref)
        if current is None:
            return False
        if not is_ours(current, owner):
            _warn_not_ours(ref, owner)
            return False
        return api.delete(ref)

    # -- namespace --------------------------------------------------------------------

    @activity.defn(name=NamespaceSpec.present)
    def ensure_namespace(self, input: StepInput) -> StepOutput:
        spec = input.spec_as(NamespaceSpec)
        api = self.api(spec.cluster)
        labels = spec.owner.labels()
        ns = _ref("Namespace", spec.name)
        current = api.get(ns)
        if current is not None:
            if not is_ours(current, spec.owner):
                raise foreign_resource(ns.what, spec.owner.environment)
            if (current.get("metadata") or {}).get("deletionTimestamp"):
                # Nothing can be created in a terminating namespace; the retry
                # policy brings us back once it is gone.
                raise ApplicationError(
                    f"{ns.what} is still being deleted; it will be recreated once it is gone",
                    type=NAMESPACE_TERMINATING,
                )
        api.apply(ns, ns.manifest({**labels, **POD_SECURITY_LABELS}))
        for ref, manifest in self._namespace_objects(spec, labels):
            self._ensure(api, ref, manifest, spec.owner)
        return StepOutput(values={"namespace": spec.name})

    @staticmethod
    def _namespace_objects(
        spec: NamespaceSpec, labels: Mapping[str, str]
    ) -> list[tuple[Ref, Json]]:
        name = spec.name
        quota = _ref("ResourceQuota", "preview-quota", name)
        limits = _ref("LimitRange", "preview-limits", name)
        deny = _ref("NetworkPolicy", "default-deny-ingress", name)
        same = _ref("NetworkPolicy", "allow-same-namespace", name)
        ingress = _ref("NetworkPolicy", "allow-from-ingress-controller", name)
        return [
            (
                quota,
                quota.manifest(labels, spec={"hard": {
                    "requests.cpu": spec.cpu_quota,
                    "limits.cpu": spec.cpu_quota,
                    "requests.memory": spec.memory_quota,
                    "limits.memory": spec.memory_quota,
                }}),
            ),
            (
                # A quota on limits rejects pods without them: give containers defaults.
                limits,
                limits.manifest(labels, spec={"limits": [{
                    "type": "Container",
                    "default": {"cpu": "500m", "memory": "512Mi"},
                    "defaultRequest": {"cpu": "100m", "memory": "128Mi"},
                }]}),
            ),
            (
                deny,
                deny.manifest(labels, spec={"podSelector": {}, "policyTypes": ["Ingress"]}),
            ),
            (
                same,
                same.manifest(labels, spec={
                    "podSelector": {},
                    "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"podSelector": {}}]}],
                }),
            ),
            (
                ingress,
                ingress.manifest(labels, spec={
                    "podSelector": {},
                    "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {
                        "kubernetes.io/metadata.name": spec.ingress_namespace,
                    }}}]}],
                }),
            ),
        ]

    @activity.defn(name=NamespaceSpec.absent)
    def remove_namespace(self, input: StepInput) -> None:
        spec = input.spec_as(NamespaceSpec)
        api = self.api(spec.cluster)
        ns = _ref("Namespace", spec.name)
        current = api.get(ns)
        if current is None:
            return
        if not is_ours(current, spec.owner):
            _warn_not_ours(ns, spec.owner)
            return
        self._delete_namespace(api, ns, current)

    def _delete_namespace(self, api: KubeApi, ns: Ref, current: Json) -> None:
        """Delete a namespace (of ours: the caller checked) and wait until it is gone."""
        if not (current.get("metadata") or {}).get("deletionTimestamp"):
            api.delete(ns)
        # Deletion is asynchronous: the namespace stays Terminating until every
        # object in it is gone. Report done only once the API answers 404.
        started = time.monotonic()
        delays = poll_delays(self.poll_interval)
        while (live := api.get(ns)) is not None:
            waited = time.monotonic() - started
            status = live.get("status") or {}
            heartbeat({"namespace": ns.name, "phase": status.get("phase"),
                       "waited_s": round(waited, 1)})
            if waited > self.namespace_timeout:
                blocking = "; ".join(
                    f"{c.get('type')}: {c.get('message')}"
                    for c in status.get("conditions") or []
                    if c.get("status") == "True"
                )
                # Retryable: the next attempt picks up the wait where this one gave up.
                raise ApplicationError(
                    f"{ns.what} still terminating after {waited:.0f}s"
                    + (f" ({blocking})" if blocking else ""),
                    type=NAMESPACE_TERMINATING,
                )
            time.sleep(next(delays))

    # -- config map -------------------------------------------------------------------

    @activity.defn(name=ConfigMapSpec.present)
    def ensure_config_map(self, input: StepInput) -> StepOutput:
        spec = input.spec_as(ConfigMapSpec)
        data = dict(spec.data)
        for key, ref in spec.upstream.items():
            value = input.resolve(ref)
            if isinstance(value, SealedValue):
                # A ConfigMap is readable by anyone who can read the namespace.
                raise invalid_input(
                    f"ConfigMap {spec.namespace}/{spec.name}: {key!r} comes from the secret "
                    f"output {ref.step}.{ref.output}; put it in a secret instead"
                )
            data[key] = value
        ref_ = _ref("ConfigMap", spec.name, spec.namespace)
        self._ensure(
            self.api(spec.cluster), ref_, ref_.manifest(spec.owner.labels(), data=data),
            spec.owner,
        )
        return StepOutput(values={"config_map": spec.name})

    @activity.defn(name=ConfigMapSpec.absent)
    def remove_config_map(self, input: StepInput) -> None:
        spec = input.spec_as(ConfigMapSpec)
        self._remove(self.api(spec.cluster), _ref("ConfigMap", spec.name, spec.namespace),
                     spec.owner)

    # -- secret -----------------------------------------------------------------------

    def _unseal(self, spec: SecretSpec, key: str, sealed: SealedValue) -> str:
        try:
            return self.sealer.unseal(sealed)
        except UnsealError as error:
            # The message names the key id only, never key material or ciphertext.
            raise invalid_input(
                f"Secret {spec.namespace}/{spec.name}: value {key!r} cannot be unsealed: {error}"
            ) from None

    @activity.defn(name=SecretSpec.present)
    def ensure_secret(self, input: StepInput) -> StepOutput:
        spec = input.spec_as(SecretSpec)
        values = {key: self._unseal(spec, key, sealed) for key, sealed in spec.data.items()}
        for key, ref in spec.upstream.items():
            value = input.resolve(ref)
            values[key] = self._unseal(spec, key, value) if isinstance(value, SealedValue) else (
                value
            )
        ref_ = _ref("Secret", spec.name, spec.namespace)
        # `data` (base64), not `stringData`: stringData is write-only, so the server
        # could never tell that a re-apply changes nothing, nor drop a removed key.
        manifest = ref_.manifest(
            spec.owner.labels(),
            type="Opaque",
            data={k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
        )
        try:
            self._ensure(self.api(spec.cluster), ref_, manifest, spec.owner)
        except ApplicationError as error:
            raise _redact(error, values.values()) from None
        return StepOutput(values={"secret": spec.name})

    @activity.defn(name=SecretSpec.absent)
    def remove_secret(self, input: StepInput) -> None:
        spec = input.spec_as(SecretSpec)
        self._remove(self.api(spec.cluster), _ref("Secret", spec.name, spec.namespace), spec.owner)

    # -- application ------------------------------------------------------------------

    @staticmethod
    def _deployment(spec: ApplicationSpec) -> tuple[Ref, Json]:
        ref = _ref("Deployment", spec.name, spec.namespace)
        labels = {**spec.owner.labels(), NAME_LABEL: spec.name}
        resources = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
        container: Json = {
            "name": spec.name,
            "image": spec.image,
            "ports": [{"containerPort": p, "protocol": "TCP"} for p in spec.ports],
            "resources": {"requests": resources, "limits": resources},
        }
        if spec.command:
            container["command"] = list(spec.command)
        env_from: list[Json] = []
        if spec.config_map:
            env_from.append({"configMapRef": {"name": spec.config_map}})
        if spec.secret:
            env_from.append({"secretRef": {"name": spec.secret}})
        if env_from:
            container["envFrom"] = env_from
        if spec.health_check is not None:
            port = spec.health_check.port or (spec.ports[0] if spec.ports else None)
            if port is None:
                raise invalid_input(
                    f"application {spec.name}: the health check needs a port and the "
                    "application exposes none"
                )
            container["readinessProbe"] = {
                "httpGet": {"path": spec.health_check.path, "port": port},
                "initialDelaySeconds": spec.health_check.initial_delay_seconds,
            }
        manifest = ref.manifest(labels, spec={
            "replicas": spec.replicas,
            # The selector is immutable: only the stable name, never the env labels.
            "selector": {"matchLabels": {NAME_LABEL: spec.name}},
            # The controller marks the rollout failed (ProgressDeadlineExceeded) too.
            "progressDeadlineSeconds": max(spec.rollout_timeout_seconds, 1),
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container]},
            },
        })
        return ref, manifest

    @staticmethod
    def _service(spec: ApplicationSpec) -> tuple[Ref, Json]:
        ref = _ref("Service", spec.name, spec.namespace)
        manifest = ref.manifest({**spec.owner.labels(), NAME_LABEL: spec.name}, spec={
            "type": "ClusterIP",
            "selector": {NAME_LABEL: spec.name},
            "ports": [
                {"name": f"port-{p}", "port": p, "targetPort": p, "protocol": "TCP"}
                for p in spec.ports
            ],
        })
        return ref, manifest

    def _apply_application(self, api: KubeApi, spec: ApplicationSpec) -> Json:
        dep_ref, dep = self._deployment(spec)
        svc_ref, svc = self._service(spec)
        # Check both before writing either: a foreign Service must not leave a
        # Deployment of ours half-deployed behind it.
        for ref in (dep_ref, svc_ref):
            current = api.get(ref)
            if current is not None and not is_ours(current, spec.owner):
                raise foreign_resource(ref.what, spec.owner.environment)
        applied = api.apply(dep_ref, dep)
        if spec.ports:
            api.apply(svc_ref, svc)
        else:
            self._remove(api, svc_ref, spec.owner)  # a Service needs at least one port
        return applied

    @activity.defn(name=ApplicationSpec.present)
    def ensure_application(self, input: StepInput) -> StepOutput:
        spec = input.spec_as(ApplicationSpec)
        api = self.api(spec.cluster)
        self._apply_application(api, spec)
        self._wait_for_rollout(api, spec)
        values = {"service": f"{spec.name}.{spec.namespace}.svc"} if spec.ports else {}
        return StepOutput(values=values)

    @activity.defn(name=ApplicationSpec.absent)
    def remove_application(self, input: StepInput) -> None:
        spec = input.spec_as(ApplicationSpec)
        api = self.api(spec.cluster)
        self._remove(api, _ref("Service", spec.name, spec.namespace), spec.owner)
        self._remove(api, _ref("Deployment", spec.name, spec.namespace), spec.owner)

    @activity.defn(name=ApplicationSpec.sleep)
    def sleep_application(self, spec: ApplicationSpec) -> None:
        api = self.api(spec.cluster)
        ref = _ref("Deployment", spec.name, spec.namespace)
        current = api.get(ref)
        if current is None:
            return  # nothing to scale down
        if not is_ours(current, spec.owner):
            raise foreign_resource(ref.what, spec.owner.environment)
        api.request(
            "PATCH", ref.path,
            query=[("fieldManager", SCALER_MANAGER)],
            body={"spec": {"replicas": 0}},
            content_type=MERGE_PATCH,
            what=ref.what,
        )

    @activity.defn(name=ApplicationSpec.wake)
    def wake_application(self, spec: ApplicationSpec) -> None:
        # Re-applying the full manifest takes spec.replicas back from the scaler
        # (and recreates anything that went missing while asleep).
        api = self.api(spec.cluster)
        self._apply_application(api, spec)
        self._wait_for_rollout(api, spec)

    def _wait_for_rollout(self, api: KubeApi, spec: ApplicationSpec) -> None:
        ref = _ref("Deployment", spec.name, spec.namespace)
        deadline = time.monotonic() + spec.rollout_timeout_seconds
        delays = poll_delays(self.poll_interval)
        while True:
            state = self._rollout_state(api, ref)
            heartbeat(state.progress)
            if state.ready:
                return
            if state.fatal:
                raise ApplicationError(
                    f"{ref.what} cannot roll out: {state.fatal}",
                    type=ROLLOUT_FAILED, non_retryable=True,
                )
            if time.monotonic() >= deadline:
                raise ApplicationError(
                    f"{ref.what} not ready after {spec.rollout_timeout_seconds}s: "
                    f"{state.waiting or _progress_text(state.progress)}",
                    type=ROLLOUT_FAILED, non_retryable=True,
                )
            time.sleep(next(delays))

    def _rollout_state(self, api: KubeApi, ref: Ref) -> RolloutState:
        dep = api.get(ref)
        if dep is None:
            raise ApplicationError(f"{ref.what} disappeared during its rollout", type=API_ERROR)
        meta, spec, status = dep["metadata"], dep.get("spec") or {}, dep.get("status") or {}
        want = int(spec.get("replicas", 1))
        counts = {
            key: int(status.get(key) or 0)
            for key in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")
        }
        observed = int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        progress: Json = {"deployment": ref.what, "want": want, "observed": observed, **counts}
        if not observed:
            # Conditions and pods still describe the previous generation.
            return RolloutState(False, progress, waiting=(
                f"the deployment controller has not observed generation {meta.get('generation')}"
            ))
        if (
            counts["updatedReplicas"] == want
            and counts["replicas"] == want
            and counts["readyReplicas"] == want
            and counts["availableReplicas"] == want
        ):
            return RolloutState(True, progress)
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        progressing = conditions.get("Progressing") or {}
        pod_problem = self._pod_problem(api, dep)
        # e.g. pods forbidden by the namespace's quota: then there is no pod to look at.
        replica_failure = self._replica_failure(api, dep, conditions)
        if progressing.get("status") == "False" and (
            progressing.get("reason") == "ProgressDeadlineExceeded"
        ):
            reasons = [f"ProgressDeadlineExceeded: {progressing.get('message')}",
                       *(r for r in (replica_failure, pod_problem and pod_problem[1]) if r)]
            return RolloutState(False, progress, fatal="; ".join(reasons))
        if pod_problem and pod_problem[0]:
            return RolloutState(False, progress, fatal=pod_problem[1])
        waiting = replica_failure or (pod_problem[1] if pod_problem else None)
        if waiting:
            progress["reason"] = waiting
        return RolloutState(False, progress, waiting=waiting)

    @staticmethod
    def _replica_failure(api: KubeApi, dep: Json, conditions: Mapping[str, Json]) -> str | None:
        """Why pods cannot be created, from the Deployment or, before the deployment
        controller copies it there, from its ReplicaSets."""
        candidates = [conditions.get("ReplicaFailure") or {}]
        if candidates[0].get("status") != "True":
            meta = dep["metadata"]
            revision = (meta.get("annotations") or {}).get(REVISION_ANNOTATION)
            selector = (dep["spec"].get("selector") or {}).get("matchLabels") or {}
            for rs in api.list("ReplicaSet", meta["namespace"], selector):
                rs_meta = rs.get("metadata") or {}
                owned = any(o.get("uid") == meta.get("uid")
                            for o in rs_meta.get("ownerReferences") or [])
                current = (rs_meta.get("annotations") or {}).get(REVISION_ANNOTATION)
                if owned and revision and current == revision:  # not an older rollout's
                    candidates += [c for c in (rs.get("status") or {}).get("conditions") or []
                                   if c.get("type") == "ReplicaFailure"]
        for condition in candidates:
            if condition.get("status") == "True":
                return f"{condition.get('reason')}: {condition.get('message')}"
        return None

    @staticmethod
    def _pod_problem(api: KubeApi, dep: Json) -> tuple[bool, str] | None:
        """(fatal, why) for the first unhealthy pod of the current ReplicaSet."""
        meta = dep["metadata"]
        namespace = meta["namespace"]
        revision = (meta.get("annotations") or {}).get(REVISION_ANNOTATION)
        selector = (dep["spec"].get("selector") or {}).get("matchLabels") or {}
        current_hash = None
        for rs in api.list("ReplicaSet", namespace, selector):
            rs_meta = rs.get("metadata") or {}
            owners = rs_meta.get("ownerReferences") or []
            owned = any(o.get("uid") == meta.get("uid") for o in owners)
            rs_revision = (rs_meta.get("annotations") or {}).get(REVISION_ANNOTATION)
            if owned and revision and rs_revision == revision:
                current_hash = (rs_meta.get("labels") or {}).get("pod-template-hash")
        if current_hash is None:
            return None
        pods = api.list("Pod", namespace, {**selector, "pod-template-hash": current_hash})
        waiting: tuple[bool, str] | None = None
        for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
            name = pod["metadata"]["name"]
            pod_status = pod.get("status") or {}
            for cs in pod_status.get("containerStatuses") or []:
                state = (cs.get("state") or {}).get("waiting") or {}
                reason = state.get("reason")
                if reason in FATAL_WAITING_REASONS:
                    return True, f"pod {name}: {reason}: {state.get('message') or ''}".rstrip(": ")
                if reason and waiting is None:
                    waiting = (False, f"pod {name}: {reason}: {state.get('message') or ''}")
            for cond in pod_status.get("conditions") or []:
                if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                    # Unschedulable can clear (autoscaler, quota freed): not fatal.
                    waiting = waiting or (
                        False, f"pod {name}: {cond.get('reason')}: {cond.get('message')}"
                    )
        return waiting

    # -- ingress ----------------------------------------------------------------------

    @activity.defn(name=IngressSpec.present)
    def ensure_ingress(self, input: StepInput) -> StepOutput:
        spec = input.spec_as(IngressSpec)
        ref = _ref("Ingress", spec.name, spec.namespace)
        body: Json = {
            "rules": [
                {"host": h.host, "http": {"paths": [{
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": {"service": {"name": h.service, "port": {"number": h.port}}},
                }]}}
                for h in spec.hosts
            ],
        }
        if spec.tls_secret:
            body["tls"] = [{"hosts": sorted({h.host for h in spec.hosts}),
                            "secretName": spec.tls_secret}]
        manifest = ref.manifest(spec.owner.labels(), spec=body)
        if spec.basic_auth_secret:
            manifest["metadata"]["annotations"] = {
                "nginx.ingress.kubernetes.io/auth-type": "basic",
                "nginx.ingress.kubernetes.io/auth-secret": spec.basic_auth_secret,
                "nginx.ingress.kubernetes.io/auth-realm": "Preview environment",
            }
        self._ensure(self.api(spec.cluster), ref, manifest, spec.owner)
        scheme = "https" if spec.tls_secret else "http"
        return StepOutput(urls={h.host: f"{scheme}://{h.host}" for h in spec.hosts})

    @activity.defn(name=IngressSpec.absent)
    def remove_ingress(self, input: StepInput) -> None:
        spec = input.spec_as(IngressSpec)
        self._remove(self.api(spec.cluster), _ref("Ingress", spec.name, spec.namespace),
                     spec.owner)

    # -- orphan sweeper ---------------------------------------------------------------

    @activity.defn(name="list_kube_environments")
    def list_kube_environments(self, request: KubeSweepInput) -> dict[str, list[str]]:
        """Environment id → ["namespace <name>", ...] for every namespace we manage there."""
        api = self.api(request.cluster)
        found: dict[str, list[str]] = {}
        for ns in api.list("Namespace", None, {MANAGED_BY_LABEL: MANAGED_BY}):
            meta = ns.get("metadata") or {}
            environment = (meta.get("labels") or {}).get(ENVIRONMENT_LABEL)
            if not environment:
                continue  # our manager label without an owner: nobody to attribute it to
            found.setdefault(environment, []).append(f"namespace {meta['name']}")
        return {env: sorted(items) for env, items in sorted(found.items())}

    @activity.defn(name="remove_kube_environment")
    def remove_kube_environment(self, request: KubeEnvironmentInput) -> list[str]:
        """Delete every namespace of one environment there and wait until each is gone.

        The label selector is the ownership check: only namespaces carrying our mark for
        this environment are listed, so nothing foreign can be deleted.
        """
        api = self.api(request.cluster)
        owner = Ownership(environment=request.environment)
        removed: list[str] = []
        namespaces = api.list("Namespace", None, owner.labels())
        for current in sorted(namespaces, key=lambda n: n["metadata"]["name"]):
            ns = _ref("Namespace", current["metadata"]["name"])
            self._delete_namespace(api, ns, current)
            removed.append(f"namespace {ns.name}")
        return removed

    def activities(self) -> list[Callable[..., Any]]:
        """Every activity of this module, for the worker."""
        return [
            self.ensure_namespace, self.remove_namespace,
            self.ensure_config_map, self.remove_config_map,
            self.ensure_secret, self.remove_secret,
            self.ensure_application, self.remove_application,
            self.sleep_application, self.wake_application,
            self.ensure_ingress, self.remove_ingress,
            self.list_kube_environments, self.remove_kube_environment,
        ]


def _warn_not_ours(ref: Ref, owner: Ownership) -> None:
    if activity.in_activity():
        activity.logger.warning(
            "%s is not managed by preview-engine for %s; leaving it in place",
            ref.what, owner.environment,
        )


def _progress_text(progress: Mapping[str, Any]) -> str:
    return (
        f"{progress.get('readyReplicas', 0)}/{progress.get('want')} ready, "
        f"{progress.get('updatedReplicas', 0)} updated"
    )
