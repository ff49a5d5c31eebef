"""What the local stack plays besides the engine, so that a preview has something real to
copy: the demo repository's production database (customers with real-looking emails),
its masked golden copy, and CI, which builds the demo application (examples/demo) at a
pull request's head commit and pushes `<image>:<sha>` to the local registry.
"""

from __future__ import annotations

import asyncpg
from temporalio.client import Client

from domain.blueprint import Blueprint, DataPolicy
from workflows.golden import GoldenRefreshRequest, GoldenRefreshWorkflow, refresh_workflow_id

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
