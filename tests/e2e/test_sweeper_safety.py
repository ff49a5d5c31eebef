"""A sweep never removes what a running preview owns (issue: 7 of 48 previews lost their
database to sweeps run back to back). Kubernetes, PostgreSQL, Temporal and the workflow
are real; the visibility store is made to answer nothing at all, as an outage of it or
a lagging Elasticsearch would, so that every environment looks like an orphan: only the
by-id check, the grace period and the bounds stand between the sweep and live work."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from temporalio import activity
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.control_plane.blueprint_files import BlueprintFileActivities
from activities.control_plane.visibility import VisibilityActivities
from activities.kubernetes import ClusterClients, KubernetesActivities
from activities.postgres import PostgresAccess, PreviewDatabaseActivities
from domain.contract import LIVE_ENVIRONMENTS
from domain.naming import Ownership, environment_id, pg_identifier
from domain.pull_request import PullRequest
from domain.resources import NamespaceSpec, PostgresCloneSpec, StepInput
from engine.sealing import Sealer
from engine.settings import Settings
from starter import lifecycle
from worker import activities_of
from workflows.sweeper import OrphanSweepWorkflow, SweepReport, SweepRequest

pytestmark = [pytest.mark.kube, pytest.mark.slow]
PREVIEWS = 6
SWEEPS = 4


class VisibilityAnsweringNothing(VisibilityActivities):
    """The visibility list down (or behind): no preview looks alive. Asking for a
    workflow by id still works, as it does in such an outage (it reads the history)."""

    @activity.defn(name=LIVE_ENVIRONMENTS.name)
    async def live_environments(self) -> list[str]:
        return []


class Systems:
    """The preview systems a sweep looks at, with the removers' grace period."""

    def __init__(self, settings: Settings, kube_cluster: Any, postgres_server: Any,
                 grace: float) -> None:
        sealer = Sealer.from_settings(settings)
        self.kube = KubernetesActivities(
            ClusterClients({"default": str(kube_cluster.kubeconfig)}), sealer,
            sweep_grace=grace)
        self.postgres = PreviewDatabaseActivities(
            PostgresAccess(postgres_server.admin_url, sealer, b"sweep-key"), sweep_grace=grace)

    async def make(self, env: str) -> None:
        """What a preview makes first: its namespace, its database."""
        await asyncio.to_thread(ActivityEnvironment().run, self.kube.ensure_namespace,
                                StepInput(spec=NamespaceSpec(owner=Ownership(environment=env),
                                                             name=env)))
        await ActivityEnvironment().run(
            self.postgres.ensure_database_clone, StepInput(spec=PostgresCloneSpec(
                owner=Ownership(environment=env), database=pg_identifier(env, "main"),
                role=pg_identifier(env, "main", "app"))))


@pytest.fixture
async def project(tmp_path: Path) -> str:
    """A registered project (a blueprint file): its repository tells the sweeper which
    workflow owns each of its environments."""
    repository = f"acme/safe-{uuid.uuid4().hex[:6]}"
    (tmp_path / "preview.yaml").write_text(yaml.safe_dump({
        "project": {"name": "safe", "repository": repository},
        "applications": [{"name": "web", "image": "registry.local/web"}]}))
    return repository


@pytest.fixture
async def sweeping(temporal_client: Client, test_settings: Settings, kube_cluster: Any,
                   postgres_server: Any, tmp_path: Path) -> AsyncIterator[Any]:
    """sweep(grace, blind=True, **request) → the report of one sweep with removal, run by
    a worker whose removers keep what is younger than `grace` seconds, and whose
    visibility list answers nothing when `blind`. No discovery of clusters and AWS
    targets: the sweep still lists the projects, for their repositories."""
    queue = f"safe-{uuid.uuid4().hex[:6]}"

    async def sweep(grace: float, blind: bool = True, **request: Any) -> SweepReport:
        systems = Systems(test_settings, kube_cluster, postgres_server, grace)
        visibility = (VisibilityAnsweringNothing if blind else VisibilityActivities)(
            temporal_client)
        worker = Worker(
            temporal_client, task_queue=queue, workflows=[OrphanSweepWorkflow],
            activities=activities_of(visibility, systems.kube,
                                     systems.postgres, BlueprintFileActivities(tmp_path)),
            activity_executor=ThreadPoolExecutor(8))
        async with worker:
            report: SweepReport = await temporal_client.execute_workflow(
                OrphanSweepWorkflow.run,
                SweepRequest(dry_run=False, discover=False, **request),
                id=f"sweep-{uuid.uuid4()}", task_queue=queue)
        return report

    yield sweep


async def namespaces(kube_cluster: Any) -> set[str]:
    listed = await asyncio.to_thread(kube_cluster.kubectl, "get", "ns", "-o", "name")
    return {line.removeprefix("namespace/") for line in listed.split()}


async def databases(postgres_server: Any) -> set[str]:
    conn = await asyncpg.connect(postgres_server.admin_url)
    try:
        return {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
    finally:
        await conn.close()


@pytest.mark.parametrize("blind", [False, True], ids=["visibility", "visibility-blind"])
async def test_previews_made_while_sweeps_remove_lose_nothing(
    sweeping: Any, project: str, temporal_client: Client, test_settings: Settings,
    kube_cluster: Any, postgres_server: Any, blind: bool,
) -> None:
    """Previews start (their workflows run) and make their namespace and database while
    sweeps with removal run back to back with no grace period: not one loses anything,
    whether the visibility list works (each sweep reads it once, at its start: the
    issue's reproduction) or answers nothing at all. An orphan planted before is removed."""
    systems = Systems(test_settings, kube_cluster, postgres_server, grace=0)
    orphan = environment_id(project, 999)  # its PR's workflow never ran
    await systems.make(orphan)
    envs = [environment_id(project, n) for n in range(1, PREVIEWS + 1)]
    handles = []

    async def open_preview(number: int) -> None:
        pr = PullRequest(repository=project, number=number, head_sha="b" * 40)
        # The workflow runs (on a queue no worker serves: it stays where it started)...
        handles.append(await lifecycle.deploy(temporal_client, pr,
                                              task_queue=f"idle-{uuid.uuid4().hex[:6]}"))
        await systems.make(environment_id(project, number))  # ...and makes its resources

    sweeps: list[SweepReport] = []

    async def sweep_back_to_back() -> None:
        for _ in range(SWEEPS):
            sweeps.append(await sweeping(0, blind, force=True))

    try:
        await asyncio.gather(sweep_back_to_back(),
                             *(open_preview(n) for n in range(1, PREVIEWS + 1)))
        sweeps.append(await sweeping(0, blind, force=True))  # one more, every preview made

        assert set(envs) <= await namespaces(kube_cluster)
        assert {pg_identifier(env, "main") for env in envs} <= await databases(postgres_server)
        for report in sweeps:
            if blind:
                assert report.live == []  # the visibility list said nothing was alive
            for system in ("kubernetes:default", "postgres"):
                assert not set(envs) & set(report.removed.get(system, {})), report
        last = sweeps[-1]
        for system in ("kubernetes:default", "postgres"):
            for env in envs:  # listed alive, or kept, and the report says why
                assert env in last.live or last.kept[system][env].startswith(
                    "its preview workflow preview/")
        # The orphan went (in whichever sweep came first).
        assert orphan not in await namespaces(kube_cluster)
        assert pg_identifier(orphan, "main") not in await databases(postgres_server)
    finally:
        for handle in handles:
            await handle.terminate("test over")


async def test_the_grace_period_and_the_bounds_keep_what_they_should(
    sweeping: Any, project: str, test_settings: Settings, kube_cluster: Any,
    postgres_server: Any,
) -> None:
    """An orphan younger than the removers' grace period is kept, and removed by a sweep
    once past it; a sweep that would remove more than the bound holds the system back
    and says what it would have removed; one no registered project owns needs force."""
    systems = Systems(test_settings, kube_cluster, postgres_server, grace=0)
    young = [environment_id(project, n) for n in (101, 102)]
    for env in young:
        await systems.make(env)

    # Within the grace period (an hour): kept by the removers themselves.
    report = await sweeping(3600, force=True)
    for system in ("kubernetes:default", "postgres"):
        for env in young:
            assert report.kept[system][env] == ("nothing removed: younger than the grace "
                                                "period, or already gone"), report.kept
            assert report.removed[system][env] == []
    assert set(young) <= await namespaces(kube_cluster)

    # The bound: at most one environment per system in one sweep, and two are orphans.
    report = await sweeping(0, max_removals=1)
    for system in ("kubernetes:default", "postgres"):
        assert report.failed[system].startswith("held back: it would remove "), report.failed
        for env in young:
            assert report.kept[system][env] == "held back by the bound"
            assert env in report.found[system]  # what it would have removed
        assert system not in report.removed
    assert set(young) <= await namespaces(kube_cluster)

    # Past the grace period (none here), within the bounds: removed, since their
    # workflows, asked for by id, do not run. One whose project is not registered (its
    # workflow cannot be asked for) is kept unless the operator forces it.
    stranger = environment_id("acme/unregistered", 7)
    await systems.make(stranger)
    report = await sweeping(0, max_removals=1000, max_removal_share=1.0)
    for system in ("kubernetes:default", "postgres"):
        for env in young:
            assert report.removed[system][env], report.removed
        assert report.kept[system][stranger].startswith("no registered project owns it")
    assert not set(young) & await namespaces(kube_cluster)
    assert not {pg_identifier(env, "main") for env in young} & await databases(postgres_server)
    assert stranger in await namespaces(kube_cluster)
    report = await sweeping(0, force=True)
    assert stranger in report.removed["kubernetes:default"] and stranger in report.removed[
        "postgres"]
    assert stranger not in await namespaces(kube_cluster)
