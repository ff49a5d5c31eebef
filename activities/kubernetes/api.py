"""The Kubernetes request layer: cluster clients, object references, JSON requests with
API errors mapped to `ApplicationError`s, and the ownership checks every resource uses.

Every object is written with server-side apply under one field manager, so applying
the same manifest twice is a no-op (same resourceVersion) and a half-done run simply
converges. Before applying, each activity reads the object and refuses to adopt one
that lacks our ownership labels for the same environment (`force` is only ever used
on objects we already own, or that do not exist yet).

The official `kubernetes` client's `ApiClient` serves as a transport for plain JSON
manifests: the typed models add nothing to server-side apply and would have to be
converted back to JSON anyway. The client blocks: activities using it are plain `def`s,
run on the worker's thread pool.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import foreign_resource, invalid_input
from domain.naming import MANAGED_BY, Ownership
from engine.settings import Settings

Json = dict[str, Any]

FIELD_MANAGER = "preview-engine"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"  # JSON is valid YAML
MERGE_PATCH = "application/merge-patch+json"

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
ENVIRONMENT_LABEL = "preview.dev/environment"
NAME_LABEL = "app.kubernetes.io/name"

API_ERROR = "KubernetesApiError"
CONFLICT = "Conflict"


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

    @classmethod
    def of(cls, kind: str, name: str, namespace: str | None = None) -> Ref:
        """`namespace=None` for cluster-scoped kinds."""
        api_version, plural = _KINDS[kind]
        return cls(api_version, kind, plural, name, namespace)

    @property
    def path(self) -> str:
        return f"{_collection(self.api_version, self.plural, self.namespace)}/{self.name}"

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
    "EndpointSlice": ("discovery.k8s.io/v1", "endpointslices"),
    "Deployment": ("apps/v1", "deployments"),
    "ReplicaSet": ("apps/v1", "replicasets"),
    "StatefulSet": ("apps/v1", "statefulsets"),
    "Job": ("batch/v1", "jobs"),
    "PersistentVolumeClaim": ("v1", "persistentvolumeclaims"),
    "PersistentVolume": ("v1", "persistentvolumes"),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings"),
    # The CSI snapshot API: served only where the cluster has the external snapshotter.
    "VolumeSnapshotClass": ("snapshot.storage.k8s.io/v1", "volumesnapshotclasses"),
    "VolumeSnapshot": ("snapshot.storage.k8s.io/v1", "volumesnapshots"),
    "VolumeSnapshotContent": ("snapshot.storage.k8s.io/v1", "volumesnapshotcontents"),
}


def _collection(api_version: str, plural: str, namespace: str | None) -> str:
    """Collection path; `namespace=None` for cluster-scoped kinds (or across namespaces)."""
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

    def log(self, namespace: str, pod: str, *, tail_lines: int) -> str:
        """The last lines a pod's (only) container wrote; "" when the pod is gone."""
        serialized = self._api.param_serialize(
            "GET", f"/api/v1/namespaces/{namespace}/pods/{pod}/log",
            query_params=[("tailLines", tail_lines)], header_params={"Accept": "*/*"},
            auth_settings=["BearerToken"])
        m, url, header_params, payload, post_params = serialized
        response = self._api.call_api(m, url, header_params=header_params, body=payload,
                                      post_params=post_params, _request_timeout=self._timeout)
        raw = response.read() or b""
        if 200 <= int(response.status) < 300:
            return raw.decode(errors="replace")
        if int(response.status) in (400, 404):  # gone, or never started
            return ""
        raise _api_error("GET", f"the log of pod {namespace}/{pod}", int(response.status),
                         response.reason, raw)

    def list(
        self, kind: str, namespace: str | None, selector: Mapping[str, str] | None = None,
        *, missing_ok: bool = False,
    ) -> list[Json]:
        """Objects of `kind` (across namespaces when `namespace` is None); `missing_ok`:
        none, instead of an error, where the cluster does not serve the kind's API."""
        query: list[tuple[str, str | bool | int]] = []
        if selector:
            query.append(
                ("labelSelector", ",".join(f"{k}={v}" for k, v in sorted(selector.items())))
            )
        where = f" in {namespace}" if namespace else ""
        path = _collection(*_KINDS[kind], namespace)
        result = self.request("GET", path, query=query, what=f"{kind}s{where}",
                              missing_ok=missing_ok)
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


# --- ownership ------------------------------------------------------------------------


def is_ours(obj: Json, owner: Ownership) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return bool(
        labels.get(MANAGED_BY_LABEL) == MANAGED_BY
        and labels.get(ENVIRONMENT_LABEL) == owner.environment
    )


def get_owned(api: KubeApi, ref: Ref, owner: Ownership) -> Json | None:
    """The object, None when absent; a same-named object without our mark is refused."""
    current = api.get(ref)
    if current is not None and not is_ours(current, owner):
        raise foreign_resource(ref.what, owner.environment)
    return current


def ensure_owned(api: KubeApi, ref: Ref, manifest: Json, owner: Ownership) -> Json:
    """Apply `manifest`, unless a same-named object exists without our mark."""
    get_owned(api, ref, owner)
    return api.apply(ref, manifest)


def remove_owned(api: KubeApi, ref: Ref, owner: Ownership) -> bool:
    """Delete if it exists and is ours; False when absent or not ours (left alone)."""
    current = api.get(ref)
    if current is None:
        return False
    if not is_ours(current, owner):
        warn_not_ours(ref, owner)
        return False
    return api.delete(ref)


def warn_not_ours(ref: Ref, owner: Ownership) -> None:
    if activity.in_activity():
        activity.logger.warning(
            "%s is not managed by preview-engine for %s; leaving it in place",
            ref.what, owner.environment,
        )


# --- helpers --------------------------------------------------------------------------


def secret_manifest(ref: Ref, labels: Mapping[str, str], values: Mapping[str, str]) -> Json:
    # `data` (base64), not `stringData`: stringData is write-only, so the server could
    # never tell that a re-apply changes nothing, nor drop a removed key.
    return ref.manifest(
        labels, type="Opaque",
        data={k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    )


def secret_value(secret: Json | None, key: str) -> str | None:
    """One value of a Secret as read from the API (base64 in `data`), or None."""
    encoded = ((secret or {}).get("data") or {}).get(key)
    return base64.b64decode(encoded).decode() if encoded else None


def redact(error: ApplicationError, values: Iterable[str]) -> ApplicationError:
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


def secret_forms(values: Iterable[str]) -> list[str]:
    """What to mask in a log: each value, and the password inside a URL-shaped one (a
    job may print the password alone)."""
    forms: set[str] = set()
    for value in values:
        if len(value) < 4:  # masking "1" or "on" everywhere would hide the log, not a secret
            continue
        forms.add(value)
        with contextlib.suppress(ValueError):
            password = urlsplit(value).password
            if password and len(password) >= 4:
                forms.update({password, unquote(password)})
    return sorted(forms, key=len, reverse=True)  # longest first: a URL before its password


def masked(text: str, forms: Iterable[str]) -> str:
    for form in forms:
        text = text.replace(form, "***")
    return text


def heartbeat(*details: Any) -> None:
    # Outside an activity (scripts, a sweeper CLI) there is nobody to heartbeat to.
    if activity.in_activity():
        activity.heartbeat(*details)


def poll_delays(cap: float, first: float = 0.1, *, brisk: float = 0.25,
                brisk_for: float = 8.0) -> Iterator[float]:
    """Waits between polls of something converging: most rollouts and deletions end
    within a few seconds, so at most `brisk` apart for the first `brisk_for` seconds
    (a rollout seen late is a preview late), then doubling up to every `cap` seconds."""
    delay, waited = min(first, cap), 0.0
    while True:
        yield delay
        waited += delay
        delay = min(delay * 2, cap if waited >= brisk_for else min(brisk, cap))


def wait_while(reason: Callable[[], str], delays: Iterator[float], *, timeout: float,
               what: str, advice: str) -> None:
    """Ask `reason()` (why it is not there yet; "" once it is) until it is there, with a
    heartbeat per answer; after `timeout` seconds a retryable error naming `what`, the
    last reason and the operator's `advice`."""
    deadline = time.monotonic() + timeout
    while why := reason():
        heartbeat({"waiting": why})
        if time.monotonic() >= deadline:
            raise ApplicationError(f"{what}{why} after {timeout:.0f}s. {advice}",
                                   type=API_ERROR)
        time.sleep(next(delays))
