"""A Redis cache per preview: a Deployment and Service in the preview's namespace, run
like an application (hardened pod, rollout wait), with a password of its own.

The password is made once and kept in a Secret of ours, so a retried or repeated
ensure keeps the URL the applications already hold. The server keeps nothing on disk:
a preview's cache starts empty and goes with the namespace.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.kubernetes.api import (
    Ref,
    get_owned,
    redact,
    remove_owned,
    secret_manifest,
    secret_value,
)
from activities.kubernetes.workloads import KubernetesActivities
from domain.blueprint import Resources
from domain.resources import ApplicationSpec, CacheSpec, StepInput, StepOutput

PORT = 6379
PASSWORD_KEY = "REDIS_PASSWORD"
REDIS_UID = 999  # the `redis` user of the official images (Debian and Alpine)


def _megabytes(quantity: str) -> int:
    """A Kubernetes memory quantity (Mi, Gi, M, G) in MiB, for Redis' maxmemory."""
    match = re.fullmatch(r"(\d+)(Mi|Gi|M|G)", quantity)
    if match is None:
        raise ValueError(f"memory {quantity!r}: use Mi or Gi, e.g. 256Mi")
    number, unit = int(match.group(1)), match.group(2)
    return number * 1024 if unit in ("Gi", "G") else number


class CacheActivities:
    def __init__(self, workloads: KubernetesActivities) -> None:
        self.workloads = workloads  # its clients, sealer and rollout wait

    @staticmethod
    def server(spec: CacheSpec, secret: str) -> ApplicationSpec:
        """The Redis server as an application: its password from the Secret's env."""
        maxmemory = max(1, _megabytes(spec.memory) * 9 // 10)
        return ApplicationSpec(
            owner=spec.owner, cluster=spec.cluster, namespace=spec.namespace,
            name=spec.name, image=spec.image, ports=[PORT],
            resources=Resources(cpu=spec.cpu, memory=spec.memory),
            command=["redis-server", "--requirepass", f"$({PASSWORD_KEY})",
                     "--save", "", "--appendonly", "no",
                     "--maxmemory", f"{maxmemory}mb", "--maxmemory-policy", "allkeys-lru"],
            secret=secret, run_as_user=REDIS_UID,
        )

    @activity.defn(name=CacheSpec.present)
    def ensure_cache(self, input: StepInput) -> StepOutput:
        spec = input.spec_as(CacheSpec)
        api = self.workloads.api(spec.cluster)
        self.workloads.rights.require(api, spec.cluster, spec.namespace, spec.owner)
        ref = Ref.of("Secret", f"{spec.name}-auth", spec.namespace)
        password = (secret_value(get_owned(api, ref, spec.owner), PASSWORD_KEY)
                    or secrets.token_urlsafe(24))
        try:
            api.apply(ref, secret_manifest(ref, spec.owner.labels(), {PASSWORD_KEY: password}))
        except ApplicationError as error:
            raise redact(error, [password]) from None
        self.workloads.roll_out(self.server(spec, ref.name))
        host = f"{spec.name}.{spec.namespace}.svc"
        url = f"redis://:{quote(password, safe='')}@{host}:{PORT}/0"
        return StepOutput(values={"host": host, "port": str(PORT)},
                          secrets={"url": self.workloads.sealer.seal(url)},
                          detail=f"{spec.image}, {spec.memory}")

    @activity.defn(name=CacheSpec.absent)
    def remove_cache(self, input: StepInput) -> None:
        spec = input.spec_as(CacheSpec)
        self.workloads.take_down(self.server(spec, f"{spec.name}-auth"))
        api = self.workloads.api(spec.cluster)
        if self.workloads.rights.grant(api, spec.cluster, spec.namespace, spec.owner):
            remove_owned(api, Ref.of("Secret", f"{spec.name}-auth", spec.namespace),
                         spec.owner)

    @activity.defn(name=CacheSpec.sleep)
    def sleep_cache(self, spec: CacheSpec) -> None:
        """Scaled to zero with the applications: its data goes (it keeps none on disk)."""
        self.workloads.sleep_application(self.server(spec, f"{spec.name}-auth"))

    @activity.defn(name=CacheSpec.wake)
    def wake_cache(self, spec: CacheSpec) -> None:
        self.workloads.wake_application(self.server(spec, f"{spec.name}-auth"))

    def activities(self) -> list[Callable[..., Any]]:
        return [self.ensure_cache, self.remove_cache, self.sleep_cache, self.wake_cache]
