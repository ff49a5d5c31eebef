"""The golden refresh workflow and its schedule, on the Temporal dev server and a real
PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
import yaml
from temporalio.client import (
    Client,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    WorkflowFailureError,
)
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import Worker

from activities.aws import AwsClients
from activities.errors import INVALID_INPUT
from activities.postgres import GoldenCopyActivities, PostgresAccess, pg_bin_dir
from domain.blueprint import MaskingMethod, MaskingRule
from domain.golden import GoldenRefreshRequest
from domain.masking import (
    golden_dump_uri,
    golden_generation_dump_key,
    golden_masking_uri,
    masking_record,
)
from engine.keyring import Keyring
from engine.sealing import Sealer
from stack.postgres import PostgresServer
from stack.temporal import TemporalDevServer
from starter import cli
from starter.schedules import ensure_golden_schedule
from tests.plugins.moto import REGION, MotoServer
from workflows.golden import GoldenRefreshWorkflow, refresh_workflow_id

SEALER = Sealer(Keyring.parse("test:" + base64.b64encode(b"w" * 32).decode()))
RULES = [
    MaskingRule(table="people", column="email", method=MaskingMethod.hash),
    MaskingRule(table="visits", column="email", method=MaskingMethod.hash),
    MaskingRule(table="people", column="name", method=MaskingMethod.fake),
]


@pytest.fixture(scope="module")
async def source_url(postgres_server: PostgresServer) -> str:
    conn = await asyncpg.connect(postgres_server.admin_url)
    try:
        await conn.execute("DROP DATABASE IF EXISTS wft_source WITH (FORCE)")
        await conn.execute("CREATE DATABASE wft_source")
    finally:
        await conn.close()
    url = postgres_server.url("wft_source")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("""
            CREATE TABLE people (id int PRIMARY KEY, email text UNIQUE NOT NULL, name text);
            CREATE TABLE visits (id int PRIMARY KEY, email text REFERENCES people (email));
            INSERT INTO people SELECT g, 'person' || g || '@example.org', 'Person Number ' || g
                FROM generate_series(1, 100) g;
            INSERT INTO visits SELECT g, 'person' || (g % 100 + 1) || '@example.org'
                FROM generate_series(1, 300) g;""")
    finally:
        await conn.close()
    return url


@pytest.fixture
async def worker(temporal_client: Client, postgres_server: PostgresServer,
                 ) -> AsyncIterator[str]:
    acts = GoldenCopyActivities(
        PostgresAccess(postgres_server.admin_url, SEALER, b"workflow-test-key"))
    task_queue = f"golden-{uuid.uuid4().hex[:8]}"
    async with Worker(temporal_client, task_queue=task_queue,
                      workflows=[GoldenRefreshWorkflow], activities=acts.all_activities()):
        yield task_queue


async def pointer(server: PostgresServer, source: str) -> str | None:
    conn = await asyncpg.connect(server.admin_url)
    try:
        found: str | None = await conn.fetchval(
            "SELECT current_generation FROM preview_engine.golden WHERE source_name = $1", source)
        return found
    finally:
        await conn.close()


async def generations(server: PostgresServer, source: str) -> dict[str, bool]:
    conn = await asyncpg.connect(server.admin_url)
    try:
        rows = await conn.fetch("SELECT datname, datallowconn FROM pg_database "
                                "WHERE datname LIKE $1", f"golden\\_{source}\\_%")
        return {r["datname"]: r["datallowconn"] for r in rows}
    finally:
        await conn.close()


async def count_in_golden(server: PostgresServer, generation: str, sql: str) -> int:
    """Run a count on a golden copy, which normally admits no connection."""
    conn = await asyncpg.connect(server.admin_url)
    try:
        await conn.execute(f"ALTER DATABASE {generation} ALLOW_CONNECTIONS true")
        golden = await asyncpg.connect(server.url(generation))
        try:
            found: int = await golden.fetchval(sql)
            return found
        finally:
            await golden.close()
            await conn.execute(f"ALTER DATABASE {generation} ALLOW_CONNECTIONS false")
    finally:
        await conn.close()


async def test_refresh_promotes_and_a_failed_one_changes_nothing(
    temporal_client: Client, worker: str, source_url: str, postgres_server: PostgresServer,
) -> None:
    request = GoldenRefreshRequest(source_url=source_url, source_name="wft", masking=RULES,
                                   keep_generations=1)
    generation = await temporal_client.execute_workflow(
        GoldenRefreshWorkflow.run, request, id=f"golden-test-{uuid.uuid4()}", task_queue=worker)
    assert await pointer(postgres_server, "wft") == generation
    assert await generations(postgres_server, "wft") == {generation: False}
    assert await count_in_golden(postgres_server, generation, (
        "SELECT count(*) FROM visits v JOIN people p ON p.email = v.email")) == 300
    assert await count_in_golden(postgres_server, generation, (
        "SELECT count(*) FROM people WHERE email LIKE '%@example.org'")) == 0

    bad = request.model_copy(update={"masking": [
        *RULES, MaskingRule(table="people", column="missing", method=MaskingMethod.null)]})
    with pytest.raises(WorkflowFailureError) as failed:
        await temporal_client.execute_workflow(
            GoldenRefreshWorkflow.run, bad, id=f"golden-test-{uuid.uuid4()}", task_queue=worker)
    cause = failed.value.cause
    assert isinstance(cause, ActivityError) and isinstance(cause.cause, ApplicationError)
    assert cause.cause.type == INVALID_INPUT and "public.people.missing" in cause.cause.message
    # The pointer did not move, and the half-made generation is gone.
    assert await pointer(postgres_server, "wft") == generation
    assert await generations(postgres_server, "wft") == {generation: False}

    # The next good refresh replaces it; keep_generations=1 drops the old one.
    newer = await temporal_client.execute_workflow(
        GoldenRefreshWorkflow.run, request, id=f"golden-test-{uuid.uuid4()}", task_queue=worker)
    assert newer != generation
    assert await pointer(postgres_server, "wft") == newer
    assert await generations(postgres_server, "wft") == {newer: False}


async def test_schedule_is_created_updated_and_runs(
    temporal_client: Client, worker: str, source_url: str, postgres_server: PostgresServer,
) -> None:
    request = GoldenRefreshRequest(source_url=source_url, source_name="wfs", masking=RULES)
    schedule_id = f"golden-refresh-test-{uuid.uuid4().hex[:8]}"
    handle = await ensure_golden_schedule(temporal_client, request, task_queue=worker,
                                          every=timedelta(days=1), schedule_id=schedule_id)
    try:
        described = await handle.describe()
        action = described.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert action.workflow == "GoldenRefreshWorkflow" and action.task_queue == worker
        assert described.schedule.spec.intervals == [ScheduleIntervalSpec(every=timedelta(days=1))]

        # An operator pauses it; updating the interval keeps it paused.
        await handle.pause(note="maintenance")
        again = await ensure_golden_schedule(temporal_client, request, task_queue=worker,
                                             every=timedelta(hours=6), schedule_id=schedule_id)
        described = await again.describe()
        assert described.schedule.spec.intervals == [ScheduleIntervalSpec(every=timedelta(hours=6))]
        assert described.schedule.state.paused

        await handle.unpause()
        await handle.trigger()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while await pointer(postgres_server, "wfs") is None:  # poll, bounded by a deadline
            assert loop.time() < deadline, "the scheduled refresh did not complete"
            await asyncio.sleep(0.2)
        assert (await handle.describe()).info.num_actions == 1
    finally:
        await handle.delete()

    with pytest.raises(ValueError):
        await ensure_golden_schedule(temporal_client, request, task_queue=worker)


async def test_a_refresh_publishes_its_masked_dump_for_container_databases(
    temporal_client: Client, source_url: str, postgres_server: PostgresServer,
    moto_server: MotoServer, tmp_path: Path,
) -> None:
    aws = AwsClients(endpoint_url=moto_server.endpoint_url, region=REGION,
                     session=moto_server.session)
    acts = GoldenCopyActivities(
        PostgresAccess(postgres_server.admin_url, SEALER, b"workflow-test-key", aws=aws))
    s3 = moto_server.client("s3")
    bucket = f"goldens-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    uri = golden_dump_uri(bucket, "wfp")
    key = uri.removeprefix(f"s3://{bucket}/")
    request = GoldenRefreshRequest(source_url=source_url, source_name="wfp", masking=RULES,
                                   dump_bucket=bucket)
    task_queue = f"golden-publish-{uuid.uuid4().hex[:8]}"
    async with Worker(temporal_client, task_queue=task_queue,
                      workflows=[GoldenRefreshWorkflow], activities=acts.all_activities()):
        generation = await temporal_client.execute_workflow(
            GoldenRefreshWorkflow.run, request, id=f"golden-test-{uuid.uuid4()}",
            task_queue=task_queue)
        published = s3.head_object(Bucket=bucket, Key=key)  # the pointer
        digest, rules = masking_record(RULES)
        dump_key = golden_generation_dump_key("wfp", generation)
        assert json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()) == {
            "generation": generation, "dump": dump_key, "masking": digest}
        assert s3.head_object(Bucket=bucket, Key=dump_key)["Metadata"] == {
            "generation": generation, "masking": digest}
        rules_key = golden_masking_uri(uri, digest).removeprefix(f"s3://{bucket}/")
        assert s3.get_object(Bucket=bucket, Key=rules_key)["Body"].read().decode() == rules

        # What a container database would restore: masked, joins intact.
        dump = tmp_path / "current.dump"
        s3.download_file(bucket, dump_key, str(dump))
        target = await postgres_server.new_database("restored")
        subprocess.run([str(pg_bin_dir() / "pg_restore"), "--no-owner", "--exit-on-error",
                        f"--dbname={target}", str(dump)], check=True)
        restored = await asyncpg.connect(target)
        try:
            assert await restored.fetchval(
                "SELECT count(*) FROM visits v JOIN people p ON p.email = v.email") == 300
            assert await restored.fetchval(
                "SELECT count(*) FROM people WHERE email LIKE '%@example.org' "
                "OR name LIKE 'Person Number%'") == 0
        finally:
            await restored.close()

        # A refresh that fails leaves the published dump as it was.
        bad = request.model_copy(update={"masking": [
            *RULES, MaskingRule(table="people", column="missing", method=MaskingMethod.null)]})
        with pytest.raises(WorkflowFailureError):
            await temporal_client.execute_workflow(
                GoldenRefreshWorkflow.run, bad, id=f"golden-test-{uuid.uuid4()}",
                task_queue=task_queue)
        assert s3.head_object(Bucket=bucket, Key=key)["ETag"] == published["ETag"]
        assert await pointer(postgres_server, "wfp") == generation

        # A refresh whose dump cannot be published is not put in service either.
        nowhere = request.model_copy(update={"dump_bucket": f"{bucket}-missing"})
        with pytest.raises(WorkflowFailureError) as failed:
            await temporal_client.execute_workflow(
                GoldenRefreshWorkflow.run, nowhere, id=f"golden-test-{uuid.uuid4()}",
                task_queue=task_queue)
        cause = failed.value.cause
        assert isinstance(cause, ActivityError) and isinstance(cause.cause, ApplicationError)
        assert "does not exist" in cause.cause.message
        assert await pointer(postgres_server, "wfp") == generation
        assert await generations(postgres_server, "wfp") == {generation: False}


async def test_the_cli_refreshes_a_blueprint_database_now_or_on_a_schedule(
    temporal_client: Client, temporal_server: TemporalDevServer, worker: str, source_url: str,
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    blueprint = tmp_path / "preview.yaml"
    blueprint.write_text(yaml.safe_dump({
        "project": {"name": "people", "repository": "acme/people"},
        "applications": [{"name": "web", "image": "registry.local/web"}],
        "databases": [
            {"name": "main", "source": "wfc", "data_policy": "masked_clone",
             "masking": [r.model_dump(mode="json") for r in RULES]},
            {"name": "cache"},
        ]}))
    monkeypatch.setenv("PREVIEW_TEMPORAL_ADDRESS", temporal_server.address)
    monkeypatch.setenv("PREVIEW_TASK_QUEUE", worker)
    args = ["golden", "--blueprint", str(blueprint), "--source-url", source_url]

    assert await cli.run([*args, "--database", "main"]) == 0
    generation = await pointer(postgres_server, "wfc")
    assert generation and f"golden copy of wfc is now {generation}" in capsys.readouterr().out
    # The blueprint's masking rules were applied: no original e-mail is left.
    assert await count_in_golden(postgres_server, generation, (
        "SELECT count(*) FROM people WHERE email LIKE '%@example.org'")) == 0
    with pytest.raises(SystemExit, match=r"no database 'nope' \(databases: main, cache\)"):
        await cli.run([*args, "--database", "nope"])
    with pytest.raises(SystemExit, match="'cache' has data_policy empty"):
        await cli.run([*args, "--database", "cache"])

    assert await cli.run([*args, "--database", "main", "--every-hours", "12"]) == 0
    handle = temporal_client.get_schedule_handle(refresh_workflow_id("wfc"))
    try:
        described = await handle.describe()
        action = described.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert action.workflow == "GoldenRefreshWorkflow" and action.task_queue == worker
        assert described.schedule.spec.intervals == [
            ScheduleIntervalSpec(every=timedelta(hours=12))]
    finally:
        await handle.delete()
