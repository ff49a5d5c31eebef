"""Lifecycle jobs (activities/kubernetes/jobs.py) as real Kubernetes Jobs on the real node:
the demo image's roles run, fail, time out and run once, a failure's log excerpt shows
no secret, and a migration watched on the session's PostgreSQL gets its report and its
policy limit. (The example preview's jobs through the whole engine, with outputs reaching
the api, are in tests/e2e/test_real_preview.py.)"""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.kubernetes import ClusterClients, JobActivities, KubernetesActivities
from activities.kubernetes.api import KubeApi, Ref
from activities.postgres import PostgresAccess
from activities.postgres.migration import MigrationWatcher
from domain.jobs import JobPhase
from domain.migration import MigrationLimits, MigrationReport, summary_line
from domain.naming import Ownership
from domain.resources import JobSpec, StepInput, StepOutput, WatchedDatabase
from engine.keyring import Keyring
from engine.sealing import Sealer
from stack import images
from stack.postgres import PostgresServer
from tests.plugins.node import RealCluster

pytestmark = [pytest.mark.kube, pytest.mark.slow]

PASSWORD = "s3cr3t-Pa55word"
LEAKY_URL = f"postgresql://app:{PASSWORD}@db.invalid:5432/shop"


@pytest.fixture(scope="module")
def image(real_cluster: RealCluster) -> str:
    sha = uuid.uuid4().hex + "10b5"
    images.push_demo_images(real_cluster.registry_host, sha)
    return f"registry.local/hello/api:{sha}"


@pytest.fixture(scope="module")
def jobs(real_cluster: RealCluster) -> Iterator[JobActivities]:
    key = base64.b64encode(os.urandom(32)).decode()
    clusters = ClusterClients({"default": str(real_cluster.kubeconfig)})
    yield JobActivities(KubernetesActivities(clusters, Sealer(Keyring.parse(f"t-1:{key}")),
                                             poll_interval=0.2))
    clusters.close()


@pytest.fixture
def namespace(real_cluster: RealCluster, jobs: JobActivities) -> Iterator[tuple[str, Ownership]]:
    name = f"jobs-{uuid.uuid4().hex[:8]}"
    owner = Ownership(environment=name)
    api = jobs.workloads.api("default")
    api.apply(Ref.of("Namespace", name), Ref.of("Namespace", name).manifest(
        {**owner.labels(), "pod-security.kubernetes.io/enforce": "restricted"}))
    yield name, owner
    real_cluster.kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=false")


def run(function: Any, spec: JobSpec) -> Any:
    return ActivityEnvironment().run(function, StepInput(spec=spec))


def spec(namespace: tuple[str, Ownership], image: str, **fields: Any) -> JobSpec:
    name, owner = namespace
    return JobSpec(owner=owner, namespace=name, image=image, **{
        "name": "migrate", "command": ["/demo", "version"], **fields})


def secret(api: KubeApi, namespace: str, values: dict[str, str]) -> str:
    ref = Ref.of("Secret", "migrate-secrets", namespace)
    api.apply(ref, ref.manifest({}, type="Opaque", stringData=values))
    return ref.name


def job_uids(api: KubeApi, namespace: str, name: str | None = None) -> list[str]:
    return sorted(j["metadata"]["uid"] for j in api.list("Job", namespace)
                  if name in (None, j["metadata"]["name"]))


def job_names(api: KubeApi, namespace: str) -> list[str]:
    return sorted(j["metadata"]["name"] for j in api.list("Job", namespace)
                  if j["metadata"]["name"].startswith("job-migrate-"))


async def test_a_failing_job_fails_with_its_last_log_lines_and_no_secret_in_them(
        jobs: JobActivities, namespace: tuple[str, Ownership], image: str) -> None:
    api = jobs.workloads.api("default")
    name = secret(api, namespace[0], {"DATABASE_URL": LEAKY_URL, "MIGRATION_FAIL": "yes"})
    failing = spec(namespace, image, command=["/demo", "migrate"], secret=name)
    with pytest.raises(ApplicationError) as caught:
        await run(jobs.run_job, failing)
    error = caught.value
    assert error.non_retryable
    assert error.message.startswith("deploy job migrate failed: BackoffLimitExceeded")
    assert "applying step 1 on ***" in error.message  # the URL the job printed, masked
    assert 'relation "customers_v3" does not exist' in error.message  # its last line
    assert PASSWORD not in error.message and "db.invalid" not in error.message
    first = job_uids(api, namespace[0])
    assert len(first) == 1  # kept for people to read until the next deploy

    # The next deploy of the same commit runs it again (a new Job), and it fails again.
    with pytest.raises(ApplicationError):
        await run(jobs.run_job, failing)
    again = job_uids(api, namespace[0])
    assert len(again) == 1 and again != first

    await run(jobs.remove_job, failing)
    assert api.list("Job", namespace[0]) == []


async def test_a_completed_run_is_not_run_again_and_a_first_deploy_job_runs_once(
        jobs: JobActivities, namespace: tuple[str, Ownership], image: str) -> None:
    api = jobs.workloads.api("default")
    deploy = spec(namespace, image)
    made: StepOutput = await run(jobs.run_job, deploy)
    uids = job_uids(api, namespace[0])
    assert made.values["job"].startswith("job-migrate-") and len(uids) == 1
    assert (await run(jobs.run_job, deploy)).values == made.values  # a retried step
    assert job_uids(api, namespace[0]) == uids

    # Another commit is another run: the one before stays (a failed deploy restores
    # it), the one before that goes.
    second: StepOutput = await run(jobs.run_job, spec(namespace, image,
                                                      command=["/demo", "version", "2"]))
    assert second.values["job"] != made.values["job"]
    assert len(job_uids(api, namespace[0])) == 2
    third: StepOutput = await run(jobs.run_job, spec(namespace, image,
                                                     command=["/demo", "version", "3"]))
    assert job_names(api, namespace[0]) == sorted([second.values["job"], third.values["job"]])

    seed = spec(namespace, image, name="seed", when=JobPhase.first_deploy)
    first_run: StepOutput = await run(jobs.run_job, seed)
    assert first_run.values["job"] == "job-seed"
    seeds = job_uids(api, namespace[0], "job-seed")
    later: StepOutput = await run(jobs.run_job, seed.model_copy(update={
        "command": ["/demo", "version", "new-commit"]}))
    assert later.detail == "ran once, at the first deploy"
    assert job_uids(api, namespace[0], "job-seed") == seeds

async def test_a_job_past_its_time_fails_and_a_destroy_job_runs_when_removed(
        jobs: JobActivities, namespace: tuple[str, Ownership], image: str,
        caplog: pytest.LogCaptureFixture) -> None:
    api = jobs.workloads.api("default")
    endless = spec(namespace, image, command=["/demo", "worker"], timeout_seconds=3)
    with pytest.raises(ApplicationError, match="DeadlineExceeded"):
        await run(jobs.run_job, endless)

    # A destroy job is nothing until removed; removal runs it (here it fails: no
    # DATABASE_URL), says why, and removes it anyway: a teardown never stops there.
    farewell = spec(namespace, image, name="farewell", when=JobPhase.destroy,
                    command=["/demo", "farewell"])
    made: StepOutput = await run(jobs.run_job, farewell)
    assert made.detail == "runs first when the preview is removed"
    assert not [j for j in api.list("Job", namespace[0])
                if j["metadata"]["name"] == "job-farewell"]
    with caplog.at_level("WARNING"):
        await run(jobs.remove_job, farewell)
    warned = [r.getMessage() for r in caplog.records if "destroy job farewell" in r.getMessage()]
    assert warned and "DATABASE_URL is not set" in warned[0], warned
    assert not [j for j in api.list("Job", namespace[0])
                if j["metadata"]["name"] == "job-farewell"]


async def test_the_migration_report_of_a_real_job_and_a_lock_past_the_policys_limit(
        jobs: JobActivities, namespace: tuple[str, Ownership], image: str,
        real_cluster: RealCluster, postgres_server: PostgresServer) -> None:
    """The demo's migration, run as a Job on the node against a database of the session's
    PostgreSQL, watched from the worker: its report names what it changed and the lock it
    held (the demo holds customers locked for 1.5 s, as a migration of a big table
    would); with policy.migrations.max_write_lock_seconds 0.5 the step fails naming the
    table and the time, from the report recorded on the Job."""
    database, role, password = f"jobs_{uuid.uuid4().hex[:8]}", f"jobs_{uuid.uuid4().hex[:8]}", \
        uuid.uuid4().hex
    admin = await asyncpg.connect(postgres_server.admin_url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        await admin.execute(f"CREATE DATABASE {database} OWNER {role}")
    finally:
        await admin.close()
    owner = await asyncpg.connect(postgres_server.url(database), user=role, password=password)
    try:
        await owner.execute("CREATE TABLE customers (id serial PRIMARY KEY, name text, "
                            "email text); INSERT INTO customers (name, email) "
                            "SELECT 'n' || g, g || '@example.com' FROM generate_series(1, 1000) g")
    finally:
        await owner.close()
    api = jobs.workloads.api("default")
    url = f"postgresql://{role}:{password}@{real_cluster.gateway}:{postgres_server.port}/{database}"
    name = secret(api, namespace[0], {"DATABASE_URL": url, "MIGRATION_HOLD_LOCK": "1500ms"})
    key = base64.b64encode(os.urandom(32)).decode()
    watcher = MigrationWatcher(PostgresAccess(postgres_server.admin_url,
                                              Sealer(Keyring.parse(f"t-1:{key}")), b"mask"))
    watched = JobActivities(jobs.workloads, watcher)
    migrate = spec(namespace, image, command=["/demo", "migrate"], secret=name,
                   watch=[WatchedDatabase(name="main", database=database)])
    try:
        made: StepOutput = await run(watched.run_job, migrate)
        [report] = [MigrationReport.model_validate(r) for r in json.loads(made.values["report"])]
        assert (report.job, report.database, report.note) == ("migrate", "main", None)
        assert report.schema_changes == [
            "+ column public.customers.plan text NOT NULL DEFAULT 'free'::text",
            "+ index public.customers.customers_plan_idx: CREATE INDEX customers_plan_idx "
            "ON public.customers USING btree (plan)"]
        assert report.rewrites == []  # a constant default: no rewrite
        held = {lock.mode: lock for lock in report.locks if lock.table == "public.customers"}
        assert 1.3 <= held["AccessExclusiveLock"].seconds <= 3.5, report.locks
        assert held["AccessExclusiveLock"].blocks == "reads and writes"
        assert report.seconds >= 1.5 and report.data_bytes > 0
        assert made.detail == summary_line(report)
        assert made.secrets["SCHEMA_VERSION"]  # its output, sealed

        # The same run under a limit: the step fails from the report recorded on the Job
        # (the Job is not run again), naming the table and how long it was held.
        limited = migrate.model_copy(update={
            "limits": MigrationLimits(max_write_lock_seconds=0.5)})
        with pytest.raises(ApplicationError) as caught:
            await run(watched.run_job, limited)
        assert caught.value.non_retryable
        assert re.search(r"migration job migrate held AccessExclusiveLock on "
                         r"public\.customers for [1-3]\.\d+ s, which blocks reads and "
                         r"writes; the limit is 0\.5 s", caught.value.message), \
            caught.value.message
        assert len(api.list("Job", namespace[0])) == 1
    finally:
        await run(watched.remove_job, migrate)
        admin = await asyncpg.connect(postgres_server.admin_url)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            await admin.execute(f"DROP ROLE IF EXISTS {role}")
        finally:
            await admin.close()
