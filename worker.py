"""The worker: builds the Temporal client and runs the workflows and every activity.

    python -m worker                       # the lifecycle worker (all systems)
    python -m worker --target cluster:NAME # only Kubernetes activities of one cluster
    python -m worker --target account:ID   # only AWS activities of one cloud account

A tenant's worker holds only that tenant's credentials and polls only its task queue,
so it never runs another tenant's activities (see domain/plan.py: queue_for).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

from domain.contract import required_activities
from domain.systems import System, tenant_queue
from engine.client import connect
from engine.sealing import Sealer
from engine.settings import Settings

if TYPE_CHECKING:
    from activities.aws import AwsClients
    from activities.kubernetes import StoredKubeconfig
    from activities.postgres.migration import MigrationWatcher
    from store import Store

log = logging.getLogger("preview.worker")
MAX_CONCURRENT_ACTIVITIES = 64


def activities_of(*objects: object) -> list[Callable[..., Any]]:
    """Every method of these objects that is a Temporal activity."""
    found = []
    for obj in objects:
        for name in dir(obj):
            member = getattr(obj, name)
            if callable(member) and hasattr(member, "__temporal_activity_definition"):
                found.append(member)
    return found


def activity_name(function: Callable[..., Any]) -> str:
    definition = getattr(function, "__temporal_activity_definition")
    return str(definition.name)


@dataclass(frozen=True)
class Target:
    """What one worker serves: the lifecycle (every system), one cluster, or one account."""

    kind: str = "all"  # all | cluster | account
    name: str = ""

    @classmethod
    def parse(cls, text: str | None) -> Target:
        if not text:
            return cls()
        kind, _, name = text.partition(":")
        if kind not in ("cluster", "account") or not name:
            raise SystemExit(f"--target must be cluster:NAME or account:ID, got {text!r}")
        return cls(kind, name)

    @property
    def systems(self) -> frozenset[System]:
        """A tenant's worker holds one tenant's credentials for one system, nothing else."""
        if self.kind == "cluster":
            return frozenset({System.kubernetes})
        if self.kind == "account":
            return frozenset({System.aws})
        return frozenset(System)

    def task_queue(self, base: str) -> str:
        if self.kind == "cluster":
            return tenant_queue(base, "cluster", self.name)
        if self.kind == "account":
            return tenant_queue(base, "account", self.name)
        return base

    def describe(self) -> str:
        if self.kind == "all":
            return "the lifecycle worker"
        return f"the {self.kind}:{self.name} worker"


class MissingActivities(SystemExit):
    """The worker would leave a workflow's step unserved: it refuses to start."""


def check_served(target: Target, functions: list[Callable[..., Any]]) -> None:
    """Every activity the contract asks of this target is registered, or the worker stops."""
    served = {activity_name(f) for f in functions}
    missing = sorted(set(required_activities(target.systems)) - served)
    if missing:
        raise MissingActivities(f"{target.describe()} does not serve {', '.join(missing)}: "
                                "every workflow step that calls them would wait forever")


@dataclass
class Resources:
    """Clients that live as long as the worker and are closed with it."""

    closers: list[Callable[[], Any]] = field(default_factory=list)
    store: Store | None = None

    async def close(self) -> None:
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                result = close()
                if asyncio.iscoroutine(result):
                    await result


async def build_activities(
    settings: Settings, target: Target, resources: Resources
) -> list[Callable[..., Any]]:
    """The activities this target serves, checked against the contract."""
    # Imported here so a tenant worker loads only the client libraries it needs.
    from activities.aws import AwsClients

    sealer = Sealer.from_settings(settings)
    aws = AwsClients(settings)  # one per worker: it caches boto3 clients and assumed roles
    objects: list[object] = []
    if System.kubernetes in target.systems:
        objects += await kubernetes_activities(settings, target, resources, sealer, aws)
    if System.aws in target.systems:
        from activities.aws import aws_activities

        objects += aws_activities(aws, sealer, sweep_grace=settings.sweep_grace_minutes * 60)
    if System.registry in target.systems:
        from activities.registry import RegistryActivities

        registry = RegistryActivities(settings, aws=aws)
        resources.closers.append(registry.close)  # its HTTP connection pool
        objects.append(registry)
    if System.git_host in target.systems:
        from activities.git_host import FeedbackActivities, RepositoryActivities

        objects += [FeedbackActivities(settings), RepositoryActivities(settings)]
    if System.postgres in target.systems:
        from activities.postgres import postgres_activities

        objects += postgres_activities(
            settings.preview_database_url,
            sealer,
            settings.masking_key.get_secret_value().encode(),
            aws=aws,  # publishes golden dumps to S3
            app_address=settings.preview_database_app_address,
            control_plane_url=settings.database_url,
            sweep_grace=settings.sweep_grace_minutes * 60,
        )
    if System.control_plane in target.systems:
        objects += await control_plane_activities(settings, resources)
    functions = activities_of(*objects)
    check_served(target, functions)
    return functions


async def kubernetes_activities(settings: Settings, target: Target, resources: Resources,
                                sealer: Sealer, aws: AwsClients) -> list[object]:
    from activities.kubernetes import ClusterClients, NamespaceRights, kubernetes_activities
    from activities.registry import parse_credentials

    kubeconfigs = {"default": settings.kubeconfig, **settings.kube_contexts}
    stored = None
    if target.kind == "cluster":
        # A tenant's worker knows its own cluster and no other: from its settings,
        # or else the kubeconfig stored sealed for it (`preview clusters set`).
        if target.name in kubeconfigs:
            kubeconfigs = {target.name: kubeconfigs[target.name]}
        else:
            kubeconfigs = {}
            store = await _store(settings, resources)
            if await store.cluster_credentials(target.name) is None:
                raise SystemExit(f"cluster {target.name!r} is neither in "
                                 "PREVIEW_KUBE_CONTEXTS nor stored (preview clusters set)")
            stored = stored_kubeconfigs(store, sealer, only=target.name)
            try:  # fail at start, not at the first step, if it cannot be used
                await asyncio.to_thread(stored, target.name)
            except ApplicationError as error:
                raise SystemExit(error.message) from None
    # The lifecycle worker never reads stored kubeconfigs: they belong to dedicated
    # clusters, which only their own tenant's worker may reach.
    clusters = ClusterClients(kubeconfigs, stored=stored)
    resources.closers.append(clusters.close)
    return kubernetes_activities(clusters, sealer, aws,
                                 NamespaceRights(settings.kube_preview_role),
                                 golden_namespace=settings.golden_snapshot_namespace,
                                 sweep_grace=settings.sweep_grace_minutes * 60,
                                 watcher=migration_watcher(settings, sealer),
                                 helm=settings.helm_binary,
                                 plain_http=settings.registry_plain_http,
                                 registry_mirrors=settings.registry_mirrors,
                                 registry_credentials=parse_credentials(
                                     settings.registry_credentials))


def migration_watcher(settings: Settings, sealer: Sealer) -> MigrationWatcher | None:
    """What watches a deploy job's databases (the migration report), where this worker
    is told the preview PostgreSQL server; a job's deploy never depends on reaching it."""
    if not settings.preview_database_url:
        return None
    from activities.postgres import PostgresAccess
    from activities.postgres.migration import MigrationWatcher

    return MigrationWatcher(PostgresAccess(
        settings.preview_database_url, sealer, settings.masking_key.get_secret_value().encode(),
        app_address=settings.preview_database_app_address))


async def control_plane_activities(settings: Settings, resources: Resources) -> list[object]:
    """Planning, preview slots, where blueprints come from, and Temporal's visibility."""
    from activities.control_plane.planning import PlanningActivities
    from activities.control_plane.store import PreviewSlotActivities
    from activities.control_plane.visibility import VisibilityActivities

    # Slots live in the store's database in every blueprint-source mode: it always
    # exists (the starter de-duplicates webhook deliveries in it).
    store = await _store(settings, resources)
    objects: list[object] = [PlanningActivities.from_settings(settings),
                             PreviewSlotActivities(store),
                             await source_activities(settings, resources),
                             VisibilityActivities()]
    return objects


async def source_activities(settings: Settings, resources: Resources) -> object:
    """Where source environments come from: the store, or a folder of blueprint files."""
    if settings.blueprint_source == "files":
        from activities.control_plane.blueprint_files import BlueprintFileActivities

        return BlueprintFileActivities(Path(settings.blueprint_dir))
    from activities.control_plane.store import StoreSourceActivities

    return StoreSourceActivities(await _store(settings, resources))


async def _store(settings: Settings, resources: Resources) -> Store:
    """The worker's one connection pool to the control-plane store."""
    if resources.store is None:
        from store import Store

        resources.store = await Store.connect(settings.database_url)
        resources.closers.append(resources.store.close)
    return resources.store


def stored_kubeconfigs(store: Store, sealer: Sealer, *, only: str | None = None,
                       ) -> Callable[[str], StoredKubeconfig | None]:
    """Looks up a cluster's sealed kubeconfig in the store, from an activity's thread."""
    from activities.errors import invalid_input
    from domain.clusters import KubeconfigError, check_kubeconfig

    loop = asyncio.get_running_loop()

    def lookup(name: str) -> StoredKubeconfig | None:
        if only is not None and name != only:
            return None
        found = asyncio.run_coroutine_threadsafe(store.cluster_credentials(name), loop)
        credentials = found.result(timeout=60)
        if credentials is None:
            return None
        try:
            config = check_kubeconfig(sealer.unseal(credentials.sealed), credentials.context)
        except KubeconfigError as error:  # stored before today's rules: fix, don't retry
            raise invalid_input(f"stored kubeconfig of cluster {name!r}: {error}; store it "
                                "again with `preview clusters set`") from None
        return config, credentials.context

    return lookup


def workflows_for(target: Target) -> list[type]:
    if target.kind != "all":
        return []
    from workflows.golden import GoldenRefreshWorkflow
    from workflows.preview import PreviewEnvironmentWorkflow
    from workflows.sweeper import OrphanSweepWorkflow

    return [PreviewEnvironmentWorkflow, GoldenRefreshWorkflow, OrphanSweepWorkflow]


async def build_worker(
    client: Client, settings: Settings, target: Target, resources: Resources
) -> Worker:
    return Worker(
        client,
        task_queue=target.task_queue(settings.task_queue),
        workflows=workflows_for(target),
        activities=await build_activities(settings, target, resources),
        # One thread per concurrent activity: a blocking activity waiting for a thread
        # would not heartbeat, and would time out under load.
        activity_executor=ThreadPoolExecutor(max_workers=MAX_CONCURRENT_ACTIVITIES),
        max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=settings.sticky_timeout_seconds),
    )


def histogram_buckets(target: Target) -> dict[str, Sequence[float]]:
    """Bucket bounds (seconds) of the engine's histograms this target may record; the
    SDK's default ones stop at 10 s, and a preview takes minutes."""
    from workflows.metrics import HISTOGRAM_BUCKETS

    buckets: dict[str, Sequence[float]] = dict(HISTOGRAM_BUCKETS)
    if System.postgres in target.systems:
        from activities.postgres.clones import CLONE_BUCKETS

        buckets.update(CLONE_BUCKETS)
    return buckets


def telemetry_runtime(address: str, target: Target | None = None) -> Runtime:
    """A Temporal runtime serving Prometheus metrics at http://<address>/metrics: the
    SDK's own and the engine's, which workflows and activities record through the same
    meter. Prometheus conventions: `_total` on counters, the unit on histograms
    (`_seconds`), durations in seconds; the engine's names carry no suffix themselves."""
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(
        bind_address=address, counters_total_suffix=True, unit_suffix=True,
        durations_as_seconds=True,
        histogram_bucket_overrides=histogram_buckets(target or Target()))))


async def serve(settings: Settings, target: Target) -> None:
    if settings.worker_metrics_address:
        # Before the client: clients and workers use the runtime current when made.
        Runtime.set_default(telemetry_runtime(settings.worker_metrics_address, target))
        log.info("metrics at http://%s/metrics", settings.worker_metrics_address)
    client = await connect(settings)
    resources = Resources()
    worker = await build_worker(client, settings, target, resources)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker polling %s on %s", worker.task_queue, settings.temporal_address)
    async with worker:
        print(f"worker ready: task queue {worker.task_queue}", flush=True)
        await stop.wait()
    await resources.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", help="cluster:NAME or account:ID (tenant worker)")
    args = parser.parse_args()
    logging.basicConfig(
        level=os.environ.get("PREVIEW_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    settings = Settings()
    settings.require_secure("worker")
    asyncio.run(serve(settings, Target.parse(args.target)))
    # Leave without interpreter finalisation: the SDK's threads can crash it (exit 139).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
