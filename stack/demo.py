"""What the local stack plays besides the engine, so that a preview has something real to
copy: the demo repository's production database (customers with real-looking emails),
its masked golden copy, and CI, which builds the demo application (examples/demo) at a
pull request's head commit and pushes `<image>:<sha>` to the local registry (in
stack/images.py). And the operator: the example blueprint imported into the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import asyncpg
from temporalio.client import Client

from domain.blueprint import Blueprint, DataPolicy
from engine.settings import Settings
from workflows.golden import GoldenRefreshRequest, GoldenRefreshWorkflow, refresh_workflow_id

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "preview.yaml"
SOURCE_DATABASE = "hello_production"
CUSTOMERS = (
    ("Ada Lovelace", "ada.lovelace@example.com"),
    ("Grace Hopper", "grace.hopper@example.com"),
    ("Edsger Dijkstra", "edsger@example.org"),
)


async def create_source_database(admin_url: str, url: str) -> None:
    """The production database the example blueprint clones: made once, kept as is."""
    conn = await asyncpg.connect(admin_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1",
                                   SOURCE_DATABASE):
            await conn.execute(f'CREATE DATABASE "{SOURCE_DATABASE}"')
        # Production's data shares this server with the previews here: their roles stay out.
        await conn.execute(f'REVOKE CONNECT, TEMPORARY ON DATABASE "{SOURCE_DATABASE}" '
                           "FROM PUBLIC")
    finally:
        await conn.close()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS customers (id serial PRIMARY KEY, "
                           "name text NOT NULL, email text NOT NULL)")
        if not await conn.fetchval("SELECT count(*) FROM customers"):
            await conn.executemany("INSERT INTO customers (name, email) VALUES ($1, $2)",
                                   CUSTOMERS)
    finally:
        await conn.close()


async def refresh_golden_copies(client: Client, blueprint: Blueprint, source_url: str,
                                task_queue: str) -> dict[str, str]:
    """Each cloned database's masked golden copy, as `preview golden` makes it (the
    schedule does in production); database name → generation."""
    done: dict[str, str] = {}
    for database in blueprint.databases:
        if database.data_policy not in (DataPolicy.clone, DataPolicy.masked_clone):
            continue
        request = GoldenRefreshRequest(source_url=source_url, source_name=database.source,
                                       masking=database.masking)
        done[database.name] = await client.execute_workflow(
            GoldenRefreshWorkflow.run, request, id=refresh_workflow_id(database.source),
            task_queue=task_queue)
    return done


async def make_golden_copies(client: Client, blueprint: Blueprint, admin_url: str,
                             task_queue: str) -> dict[str, str]:
    """Production's database on the server of `admin_url` (made if missing), then each
    cloned database's masked golden copy; database name → generation."""
    source_url = admin_url.rsplit("/", 1)[0] + f"/{SOURCE_DATABASE}"
    await create_source_database(admin_url, source_url)
    return await refresh_golden_copies(client, blueprint, source_url, task_queue)


async def import_example(settings: Settings, actor: str,
                         secrets: Mapping[str, str] | None = None) -> Blueprint:
    """Migrate the control-plane store and import examples/preview.yaml, as
    `preview blueprint import` does; `secrets` (key → value) are set as `preview secrets
    set` does."""
    from domain.blueprint_file import parse_blueprint
    from engine.sealing import Sealer
    from store import Store

    store = await Store.connect(settings.database_url, Sealer.from_settings(settings))
    try:
        await store.migrate()
        blueprint = parse_blueprint(EXAMPLE.read_text(), str(EXAMPLE.relative_to(ROOT)))
        await store.import_blueprint(blueprint, actor=actor)
        for key, value in (secrets or {}).items():
            await store.put_secret(blueprint.project.name, key, value, actor=actor)
    finally:
        await store.close()
    return blueprint
