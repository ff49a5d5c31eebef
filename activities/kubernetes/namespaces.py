"""Namespace activities: each preview's namespace with its quota, default limits,
network policies and pod-security labels, and the orphan sweeper's per-cluster listing
and removal of environments (which are their namespaces)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.kubernetes.api import (
    ENVIRONMENT_LABEL,
    MANAGED_BY_LABEL,
    ClusterClients,
    Json,
    KubeApi,
    Ref,
    ensure_owned,
    get_owned,
    heartbeat,
    is_ours,
    poll_delays,
    warn_not_ours,
)
from activities.kubernetes.policies import network_policies
from activities.kubernetes.rights import NamespaceRights
from domain.contract import LIST_KUBE_ENVIRONMENTS, REMOVE_KUBE_ENVIRONMENT
from domain.naming import MANAGED_BY, Ownership
from domain.resources import (
    KubeEnvironmentInput,
    KubeSweepInput,
    NamespaceSpec,
    StepInput,
    StepOutput,
)

NAMESPACE_TERMINATING = "NamespaceTerminating"

POD_SECURITY = "pod-security.kubernetes.io"

# What a preview makes outside its namespace, so that deleting the namespace leaves it:
# the re-bound copy of a golden volume snapshot (container_db_snapshot). Listed where the
# cluster serves the kind's API, and swept with the environment's namespaces.
CLUSTER_SCOPED_KINDS = ("VolumeSnapshotContent",)


def age_seconds(obj: Json) -> float:
    """Seconds since the object was created, by its own creationTimestamp (0 if unknown:
    taken as new, so never too old to keep)."""
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return 0.0
    created = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    return (datetime.now(UTC) - created).total_seconds()


def pod_security_labels(level: str) -> dict[str, str]:
    """Previews run arbitrary images from pull requests: the namespace enforces `level`
    (restricted unless the blueprint lowers it) of the cluster's current standard, and
    audits and warns at restricted whatever it enforces, so what a lowered level lets
    through stays visible in the audit log and in every apply's warnings."""
    return {
        f"{POD_SECURITY}/enforce": level,
        f"{POD_SECURITY}/enforce-version": "latest",
        f"{POD_SECURITY}/audit": "restricted",
        f"{POD_SECURITY}/audit-version": "latest",
        f"{POD_SECURITY}/warn": "restricted",
        f"{POD_SECURITY}/warn-version": "latest",
    }


class NamespaceActivities:
    """The namespace pair and the sweeper's two activities; holds its clients so tests
    inject them."""

    def __init__(
        self,
        clusters: ClusterClients,
        *,
        rights: NamespaceRights | None = None,
        poll_interval: float = 2.0,
        namespace_timeout: float = 900.0,
        sweep_grace: float = 0.0,
    ) -> None:
        """sweep_grace: seconds; the sweeper's removal keeps an environment any of whose
        objects is younger (a preview being made right now)."""
        self.clusters = clusters
        self.rights = rights or NamespaceRights()
        self.poll_interval = poll_interval
        self.namespace_timeout = namespace_timeout
        self.sweep_grace = sweep_grace

    def api(self, cluster: str) -> KubeApi:
        return KubeApi(self.clusters.get(cluster))

    # -- namespace --------------------------------------------------------------------

    @activity.defn(name=NamespaceSpec.present)
    def ensure_namespace(self, input: StepInput) -> StepOutput:
        spec = input.spec_as(NamespaceSpec)
        api = self.api(spec.cluster)
        labels = spec.owner.labels()
        ns = Ref.of("Namespace", spec.name)
        current = get_owned(api, ns, spec.owner)
        if current is not None and (current.get("metadata") or {}).get("deletionTimestamp"):
            # Nothing can be created in a terminating namespace; the retry
            # policy brings us back once it is gone.
            raise ApplicationError(
                f"{ns.what} is still being deleted; it will be recreated once it is gone",
                type=NAMESPACE_TERMINATING,
            )
        api.apply(ns, ns.manifest({**labels, **pod_security_labels(spec.pod_security)}))
        for ref, manifest in self._namespace_objects(spec, labels):
            ensure_owned(api, ref, manifest, spec.owner)
        self.rights.require(api, spec.cluster, spec.name, spec.owner)
        detail = "" if spec.pod_security == "restricted" else f"pod security {spec.pod_security}"
        return StepOutput(values={"namespace": spec.name}, detail=detail)

    @staticmethod
    def _namespace_objects(
        spec: NamespaceSpec, labels: Mapping[str, str]
    ) -> list[tuple[Ref, Json]]:
        name = spec.name
        quota = Ref.of("ResourceQuota", "preview-quota", name)
        limits = Ref.of("LimitRange", "preview-limits", name)
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
            *network_policies(spec, labels),
        ]

    @activity.defn(name=NamespaceSpec.absent)
    def remove_namespace(self, input: StepInput) -> None:
        spec = input.spec_as(NamespaceSpec)
        api = self.api(spec.cluster)
        ns = Ref.of("Namespace", spec.name)
        current = api.get(ns)
        if current is None:
            return
        if not is_ours(current, spec.owner):
            warn_not_ours(ns, spec.owner)
            return
        self._delete_namespace(api, ns, current)

    @activity.defn(name=NamespaceSpec.check)
    def check_namespace(self, input: StepInput) -> str:
        """"" while the preview's namespace is there and ours; else what happened to it."""
        spec = input.spec_as(NamespaceSpec)
        current = self.api(spec.cluster).get(Ref.of("Namespace", spec.name))
        if current is None:
            return f"namespace {spec.name} is gone"
        if not is_ours(current, spec.owner):
            return f"namespace {spec.name} is no longer marked as this preview's"
        if (current.get("metadata") or {}).get("deletionTimestamp"):
            return f"namespace {spec.name} is being deleted"
        return ""

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

    # -- orphan sweeper ---------------------------------------------------------------

    @activity.defn(name=LIST_KUBE_ENVIRONMENTS.name)
    def list_kube_environments(self, request: KubeSweepInput) -> dict[str, list[str]]:
        """Environment id → ["namespace <name>", "volumesnapshotcontent <name>", ...]:
        every namespace and cluster-scoped object we manage there."""
        api = self.api(request.cluster)
        found: dict[str, list[str]] = {}
        ours = {MANAGED_BY_LABEL: MANAGED_BY}
        listed = [("Namespace", obj) for obj in api.list("Namespace", None, ours)] + [
            (kind, obj) for kind in CLUSTER_SCOPED_KINDS
            for obj in api.list(kind, None, ours, missing_ok=True)]
        for kind, obj in listed:
            meta = obj.get("metadata") or {}
            environment = (meta.get("labels") or {}).get(ENVIRONMENT_LABEL)
            if not environment:
                continue  # our manager label without an owner: nobody to attribute it to
            found.setdefault(environment, []).append(f"{kind.lower()} {meta['name']}")
        return {env: sorted(items) for env, items in sorted(found.items())}

    @activity.defn(name=REMOVE_KUBE_ENVIRONMENT.name)
    def remove_kube_environment(self, request: KubeEnvironmentInput) -> list[str]:
        """Delete every namespace of one environment there and wait until each is gone,
        then its cluster-scoped objects.

        The label selector is the ownership check: only objects carrying our mark for
        this environment are listed, so nothing foreign can be deleted.
        """
        api = self.api(request.cluster)
        owner = Ownership(environment=request.environment)
        removed: list[str] = []
        namespaces = api.list("Namespace", None, owner.labels())
        cluster_scoped = [(kind, obj) for kind in CLUSTER_SCOPED_KINDS
                          for obj in api.list(kind, None, owner.labels(), missing_ok=True)]
        youngest = max((age_seconds(obj) for obj in
                        [*namespaces, *(obj for _, obj in cluster_scoped)]), default=None)
        if youngest is not None and youngest < self.sweep_grace:
            return []  # being made now, perhaps by a preview the sweep does not know yet
        for current in sorted(namespaces, key=lambda n: n["metadata"]["name"]):
            ns = Ref.of("Namespace", current["metadata"]["name"])
            self._delete_namespace(api, ns, current)
            removed.append(f"namespace {ns.name}")
        for kind, current in cluster_scoped:
            ref = Ref.of(kind, current["metadata"]["name"])
            api.delete(ref)  # a retained snapshot content: only the API object goes
            removed.append(f"{kind.lower()} {ref.name}")
        return sorted(removed)

    def activities(self) -> list[Callable[..., Any]]:
        """Every activity of this class, for the worker."""
        return [
            self.ensure_namespace, self.remove_namespace, self.check_namespace,
            self.list_kube_environments, self.remove_kube_environment,
        ]
