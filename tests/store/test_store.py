"""The control-plane store against a real PostgreSQL (a fresh database for this module)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import get_args, get_origin

import asyncpg
import pytest
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.control_plane.store import StoreSourceActivities
from domain.blueprint import (
    COLLECTIONS,
    Application,
    AppliesTo,
    Blueprint,
    BlueprintCollection,
    Chart,
    ClusterRef,
    Database,
    Environment,
    EnvironmentKind,
    Isolation,
    Named,
    VariableKind,
    VariableScope,
)
from domain.blueprint_file import parse_blueprint
from domain.resources import SweepTargets
from domain.secrets import SealedValue
from domain.source import LoadSourceRequest, SourceEnvironment
from domain.variables import Target, resolve_variables
from engine.keyring import Keyring
from engine.sealing import Sealer
from stack.postgres import PostgresServer
from store import (
    Conflict,
    Invalid,
    MigrationError,
    NotFound,
    ProjectSpec,
    ScopedVariable,
    Store,
    VariableRef,
    token_hash,
)
from tests.plugins.postgres import migrated_store

EXAMPLE = Path(__file__).parents[2] / "examples" / "preview.yaml"
SECRET = "s3cr3t-Value-that-must-never-leak-7f1c"
TABLES = ["projects", "environments", "applications", "databases", "variables", "secrets",
          "api_tokens", "webhook_deliveries", "audit_log", "schema_version", "clusters"]


def key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


SEALER = Sealer(Keyring.parse(f"old:{key(1)}"))


# The example runs no chart (its applications are the demo's own): one of the chart in
# examples/charts/hello, so that every kind of element is stored and round-trips.
CHART = Chart(name="hello", chart="oci://registry.local/charts/hello", version="0.1.0",
              values={"greeting": "hi {{ pr.number }}"}, image_tag_values=["image.tag"])


def example() -> Blueprint:
    blueprint = parse_blueprint(EXAMPLE.read_text(), str(EXAMPLE))
    return blueprint.model_copy(update={"charts": [CHART]})


@pytest.fixture(scope="module")
async def database_url(postgres_server: PostgresServer) -> str:
    return await postgres_server.new_database("store_test")


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[Store]:
    store = await migrated_store(database_url, SEALER)
    yield store
    await store.close()


@pytest.fixture
async def project(store: Store) -> AsyncIterator[str]:
    """A project imported from the example blueprint, under a unique name and repository."""
    suffix = uuid.uuid4().hex[:8]
    blueprint = example()
    blueprint = blueprint.model_copy(update={"project": blueprint.project.model_copy(
        update={"name": f"hello-{suffix}", "repository": f"Codertocat/Hello-{suffix}"})})
    await store.import_blueprint(blueprint, "tester")
    yield blueprint.project.name
    with contextlib.suppress(NotFound):
        await store.delete_project(blueprint.project.name, "tester")


async def dump_everything(pool: asyncpg.Pool) -> str:
    """Every row of every table as text: what a leaked backup would show."""
    rows = []
    for table in TABLES:
        rows += [r[0] for r in await pool.fetch(f"SELECT row_to_json(t)::text FROM {table} t")]
    return "\n".join(rows)


# ---------------------------------------------------------------------------- migrations


async def test_migrations_apply_from_empty_and_twice_is_a_no_op(
    postgres_server: PostgresServer,
) -> None:
    url = await postgres_server.new_database("migrate")
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        store = Store(pool)
        files = [name for _, name, _ in Store.migrations()]
        assert files[0] == "0001_init.sql" and files == sorted(files)
        assert await store.migrate() == files
        tables = {r["tablename"] for r in await pool.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert set(TABLES) <= tables
        before = await pool.fetch("SELECT * FROM schema_version ORDER BY version")
        assert await store.migrate() == []
        assert await pool.fetch("SELECT * FROM schema_version ORDER BY version") == before
    finally:
        await pool.close()


async def test_concurrent_starters_apply_each_migration_once(
    postgres_server: PostgresServer,
) -> None:
    url = await postgres_server.new_database("migrate_race")
    pools = [await asyncpg.create_pool(url, min_size=1, max_size=1) for _ in range(4)]
    try:
        results = await asyncio.gather(*(Store(p).migrate() for p in pools))
        applied = [name for result in results for name in result]
        assert sorted(applied) == [name for _, name, _ in Store.migrations()]
        assert await pools[0].fetchval("SELECT count(*) FROM schema_version") == len(applied)
    finally:
        for pool in pools:
            await pool.close()


async def test_a_changed_applied_migration_is_refused(postgres_server: PostgresServer) -> None:
    url = await postgres_server.new_database("migrate_changed")
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
    try:
        await Store(pool).migrate()
        await pool.execute("UPDATE schema_version SET sha256 = 'x' WHERE version = 1")
        with pytest.raises(MigrationError, match=r"0001_init\.sql was changed"):
            await Store(pool).migrate()
    finally:
        await pool.close()


async def test_the_audit_log_is_append_only(store: Store, project: str) -> None:
    assert (await store.audit_entries(project=project)).total >= 1
    for statement in ("UPDATE audit_log SET actor = 'someone else'",
                      "DELETE FROM audit_log", "TRUNCATE audit_log"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await store.pool.execute(statement)
    assert (await store.audit_entries(project=project)).total >= 1


# ---------------------------------------------------------------------------- projects


async def test_project_crud(store: Store) -> None:
    name = f"p-{uuid.uuid4().hex[:8]}"
    spec = ProjectSpec(name=name, repository=f"acme/{name}")
    created = await store.create_project(spec, "tester")
    assert created.name == name and created.source_environment == "production"
    assert await store.get_project(name) == created
    with pytest.raises(Conflict, match="already exists"):
        await store.create_project(spec, "tester")
    # Repositories are unique regardless of case (Git hosts ignore it).
    other = ProjectSpec(name=f"{name}-2", repository=f"ACME/{name.upper()}")
    with pytest.raises(Conflict, match=f"already registered by project '{name}'"):
        await store.create_project(other, "tester")
    assert (await store.project_for_repository(f"Acme/{name}")) == created

    changed = spec.model_copy(update={"repository": f"acme/{name}-renamed"})
    updated = await store.update_project(name, changed, "tester")
    assert updated.repository == f"acme/{name}-renamed" and updated.updated_at >= created.updated_at
    with pytest.raises(Invalid, match="renaming is not supported"):
        await store.update_project(name, changed.model_copy(update={"name": "x"}), "tester")

    page = await store.list_projects(limit=1, offset=0, only=name)
    assert page.total == 1 and page.items[0].name == name
    await store.delete_project(name, "tester")
    with pytest.raises(NotFound, match=f"project '{name}' not found"):
        await store.get_project(name)
    with pytest.raises(NotFound):
        await store.delete_project(name, "tester")


async def test_listing_pages_with_totals(store: Store) -> None:
    prefix = uuid.uuid4().hex[:6]
    for i in range(5):
        await store.create_project(ProjectSpec(name=f"pg-{prefix}-{i}",
                                               repository=f"acme/pg-{prefix}-{i}"), "t")
    total = (await store.list_projects(limit=1)).total
    seen = []
    for offset in range(0, total, 2):
        page = await store.list_projects(limit=2, offset=offset)
        assert page.total == total and len(page.items) <= 2
        seen += [p.name for p in page.items]
    assert seen == sorted(seen) and len(seen) == total == len(set(seen))
    for i in range(5):
        await store.delete_project(f"pg-{prefix}-{i}", "t")


# ---------------------------------------------------------------------------- documents


async def test_environment_application_database_crud(store: Store, project: str) -> None:
    staging = Environment(name="staging", kind=EnvironmentKind.staging)
    assert await store.environments.create(project, staging, "t") == staging
    assert await store.environments.get(project, "staging") == staging
    with pytest.raises(Conflict, match=r"environment 'staging' .* already exists"):
        await store.environments.create(project, staging, "t")
    with pytest.raises(Conflict, match="source environment"):
        await store.environments.delete(project, "production", "t")
    record = await store.get_project(project)
    spec = ProjectSpec(**record.model_dump(exclude={"created_at", "updated_at"}))
    with pytest.raises(Invalid, match=r"has no environment 'qa' .*create it first"):
        await store.update_project(project, spec.model_copy(
            update={"source_environment": "qa"}), "t")
    moved = await store.update_project(project, spec.model_copy(
        update={"source_environment": "staging"}), "t")
    assert (await store.export_blueprint(project)).environment == staging
    await store.update_project(project, spec, "t")
    assert moved.source_environment == "staging"
    await store.environments.delete(project, "staging", "t")
    with pytest.raises(NotFound, match="environment 'staging'"):
        await store.environments.get(project, "staging")

    applications, databases = store.collections["applications"], store.collections["databases"]
    cache = Database(name="cache")
    await databases.create(project, cache, "t")
    page = await databases.list(project)
    assert [d.name for d in page.items] == ["main", "cache"] and page.total == 2

    admin = Application(name="admin", image="registry.local/hello/admin", depends_on=["cache"])
    await applications.create(project, admin, "t")
    apps = await applications.list(project, limit=2, offset=2)
    assert [a.name for a in apps.items] == ["worker", "admin"] and apps.total == 4
    bigger = admin.model_copy(update={"replicas": 3})
    assert await applications.replace(project, "admin", bigger, "t") == bigger
    assert (await applications.get(project, "admin")).model_dump()["replicas"] == 3
    with pytest.raises(Invalid, match="must match the one in the path"):
        await applications.replace(project, "web", bigger, "t")
    with pytest.raises(NotFound):
        await applications.replace(project, "ghost", bigger.model_copy(
            update={"name": "ghost"}), "t")

    # The store keeps the project a valid blueprint: references are checked.
    with pytest.raises(Conflict, match="'admin' depends on 'cache'"):
        await databases.delete(project, "cache", "t")
    with pytest.raises(Invalid, match="depends on 'nowhere'"):
        await applications.create(
            project, Application(name="x", image="i", depends_on=["nowhere"]), "t")
    with pytest.raises(Invalid, match="cycle: admin -> admin"):
        await applications.replace(project, "admin", admin.model_copy(
            update={"depends_on": ["admin"]}), "t")
    await applications.delete(project, "admin", "t")
    await databases.delete(project, "cache", "t")
    with pytest.raises(NotFound):
        await applications.delete(project, "admin", "t")
    with pytest.raises(NotFound, match="project 'nope' not found"):
        await applications.list("nope")


# ---------------------------------------------------------------------------- blueprint collections


def test_collections_declare_every_element_list_of_the_blueprint() -> None:
    """COLLECTIONS and Blueprint agree: each entry is a list field of its own model, and
    every list of named elements a blueprint holds has an entry."""
    lists = {name: get_args(field.annotation)[0] for name, field in Blueprint.model_fields.items()
             if get_origin(field.annotation) is list}
    named = {name: model for name, model in lists.items() if issubclass(model, Named)}
    assert named == {kind.field: kind.model for kind in COLLECTIONS}
    for attribute in ("field", "label", "path", "table"):
        assert len({getattr(kind, attribute) for kind in COLLECTIONS}) == len(COLLECTIONS)


@pytest.mark.parametrize("kind", COLLECTIONS, ids=lambda kind: kind.field)
def test_element_names_are_unique_within_each_collection(kind: BlueprintCollection) -> None:
    blueprint = example()
    items = kind.items(blueprint)
    assert items, f"examples/preview.yaml has no {kind.label}: the tests copy one from there"
    twice = [item.model_dump() for item in [*items, items[0]]]
    with pytest.raises(ValidationError, match=f"duplicate {kind.label} names: {items[0].name}"):
        Blueprint.model_validate({**blueprint.model_dump(), kind.field: twice})


async def test_every_collection_has_its_table_and_round_trips(
    store: Store, project: str
) -> None:
    """The store serves each entry of COLLECTIONS from its own table (the layout every
    element table shares), and import then export gives each collection back in order."""
    layout = ("SELECT column_name, data_type, is_nullable, column_default FROM "
              "information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position")
    shared = await store.pool.fetch(layout, "environments")
    blueprint = await store.export_blueprint(project)
    for kind in COLLECTIONS:
        assert await store.pool.fetch(layout, kind.table) == shared, kind.table
        collection = store.collections[kind.field]
        assert (collection.table, collection.model, collection.label) == (
            kind.table, kind.model, kind.label)
        listed = await collection.list(project, limit=500)
        assert listed.items == kind.items(blueprint) == kind.items(example()), kind.field
    # Reversed, every collection's order survives import and export (its `position`).
    reversed_ = blueprint.model_copy(update={kind.field: kind.items(blueprint)[::-1]
                                             for kind in COLLECTIONS})
    result = await store.import_blueprint(reversed_, "t")
    assert all(getattr(result, kind.field) == len(kind.items(reversed_)) for kind in COLLECTIONS)
    assert await store.export_blueprint(project) == reversed_


# ---------------------------------------------------------------------------- variables


async def test_variable_crud_and_identity(store: Store, project: str) -> None:
    var = ScopedVariable(key="FEATURE", value="on", scope=VariableScope.environment)
    created = await store.create_variable(project, var, "t")
    assert created.environment == "production"  # defaults to the source environment
    with pytest.raises(Conflict, match="already exists"):
        await store.create_variable(project, var, "t")
    ref = VariableRef(key="FEATURE", scope=VariableScope.environment)
    assert (await store.get_variable(project, ref)).value == "on"

    stored, was_created = await store.set_variable(project, var.model_copy(
        update={"value": "off"}), "t")
    assert (stored.value, was_created) == ("off", False)
    _, was_created = await store.set_variable(project, ScopedVariable(
        key="FEATURE", value="x", applies_to=AppliesTo.previews), "t")
    assert was_created
    page = await store.list_variables(project, key="FEATURE")
    assert page.total == 2 and {v.value for v in page.items} == {"off", "x"}

    with pytest.raises(Invalid, match="unknown application or job 'ghost'"):
        await store.create_variable(project, ScopedVariable(
            key="X", scope=VariableScope.application, application="ghost"), "t")
    with pytest.raises(Invalid, match="unknown environment 'staging'"):
        await store.create_variable(project, ScopedVariable(
            key="X", scope=VariableScope.environment, environment="staging"), "t")

    await store.delete_variable(project, ref, "t")
    with pytest.raises(NotFound, match="variable FEATURE"):
        await store.get_variable(project, ref)
    with pytest.raises(NotFound):
        await store.delete_variable(project, ref, "t")


async def test_alias_rules(store: Store, project: str) -> None:
    with pytest.raises(Invalid, match="LOOP_A is an alias of LOOP_B, which is not set"):
        await store.create_variable(project, ScopedVariable(
            key="LOOP_A", value="LOOP_B", kind=VariableKind.alias), "t")
    await store.create_variable(project, ScopedVariable(key="LOOP_B", value="b"), "t")
    await store.create_variable(project, ScopedVariable(
        key="LOOP_A", value="LOOP_B", kind=VariableKind.alias), "t")
    with pytest.raises(Invalid, match=r"cycle: (LOOP_A -> LOOP_B -> LOOP_A|"
                                      r"LOOP_B -> LOOP_A -> LOOP_B)"):
        await store.set_variable(project, ScopedVariable(
            key="LOOP_B", value="LOOP_A", kind=VariableKind.alias), "t")
    with pytest.raises(Conflict, match="LOOP_A is an alias of LOOP_B"):
        await store.delete_variable(project, VariableRef(key="LOOP_B"), "t")


# ---------------------------------------------------------------------------- secrets


async def test_secrets_are_sealed_versioned_and_never_stored_or_logged_in_clear(
    store: Store, project: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    metadata, created = await store.put_secret(
        project, "SESSION_SECRET", SECRET, VariableScope.application, "web",
        AppliesTo.both, "alice")
    assert created and metadata.version == 1 and metadata.key_id == "old"
    assert metadata.updated_by == "alice" and metadata.application == "web"
    metadata, created = await store.put_secret(
        project, "SESSION_SECRET", SECRET + "-2", VariableScope.application, "web",
        AppliesTo.both, "bob")
    assert not created and metadata.version == 2 and metadata.updated_by == "bob"
    await store.put_secret(project, "DB_PASSWORD", SECRET, actor="alice")

    sealed_json = await store.pool.fetchval(
        "SELECT s.sealed::text FROM secrets s JOIN projects p ON p.id = s.project_id "
        "WHERE p.name = $1 AND key = 'SESSION_SECRET'", project)
    assert SEALER.unseal(SealedValue.model_validate_json(sealed_json)) == SECRET + "-2"

    everything = await dump_everything(store.pool)
    assert SECRET not in everything
    assert base64.b64encode(SECRET.encode()).decode()[:12] not in everything
    assert SECRET not in caplog.text
    actions = [(e.actor, e.action, e.object)
               for e in (await store.audit_entries(project=project)).items]
    assert ("bob", "secret.update",
            "secret SESSION_SECRET (scope=application, application=web, applies_to=both)"
            ) in actions
    page = await store.secret_metadata(project)
    assert [m.key for m in page.items] == ["DB_PASSWORD", "SESSION_SECRET"]
    assert SECRET not in page.model_dump_json()

    # A secret and a plain variable never share a key at the same place.
    with pytest.raises(Conflict, match="plain variable"):
        await store.put_secret(project, "NODE_ENV", SECRET, actor="t")
    with pytest.raises(Conflict, match="is a secret"):
        await store.create_variable(project, ScopedVariable(key="DB_PASSWORD", value="x"), "t")
    with pytest.raises(Invalid, match="unknown application or job 'ghost'"):
        await store.put_secret(project, "K", SECRET, VariableScope.application, "ghost")
    with pytest.raises(Invalid, match="scope application needs `application`"):
        await store.put_secret(project, "K", SECRET, VariableScope.application, None)
    with pytest.raises(NotFound):
        await store.put_secret("no-such-project", "K", SECRET)

    await store.delete_secret(project, VariableRef(key="DB_PASSWORD"), "alice")
    with pytest.raises(NotFound, match="secret DB_PASSWORD"):
        await store.get_secret_metadata(project, VariableRef(key="DB_PASSWORD"))


async def test_master_key_rotation_rewraps_without_changing_values(
    store: Store, project: str
) -> None:
    await store.put_secret(project, "ROTATE_ME", SECRET, actor="t")
    rotated = Sealer(Keyring.parse(f"old:{key(1)},new:{key(2)}"))
    count = await store.rewrap_secrets(rotated, batch=1)
    assert count >= 1
    assert await store.pool.fetchval("SELECT count(*) FROM secrets WHERE key_id <> 'new'") == 0
    assert await store.rewrap_secrets(rotated) == 0  # converged
    only_new = Sealer(Keyring.parse(f"new:{key(2)}"))
    source = await store.source_environment(
        (await store.get_project(project)).repository)
    assert source is not None
    (secret,) = [s for s in source.secrets if s.key == "ROTATE_ME"]
    assert only_new.unseal(secret.sealed) == SECRET
    meta = await store.get_secret_metadata(project, VariableRef(key="ROTATE_ME"))
    assert meta.key_id == "new" and meta.version == 1
    # Rotate back, so later tests' SEALER (key "old" only) can read every secret.
    await store.rewrap_secrets(Sealer(Keyring.parse(f"new:{key(2)},old:{key(1)}")))


# ---------------------------------------------------------------------------- tokens, deliveries


async def test_tokens_are_stored_as_hashes(store: Store, project: str) -> None:
    token, record = await store.create_token("ci", project, "admin")
    assert record.project == project and not record.admin and token.startswith("pvt_")
    assert token not in await dump_everything(store.pool)
    assert await store.pool.fetchval(
        "SELECT count(*) FROM api_tokens WHERE token_sha256 = $1", token_hash(token)) == 1
    found = await store.authenticate(token)
    assert found is not None and found.id == record.id and found.last_used_at is not None
    assert await store.authenticate(token + "x") is None
    admin_token, admin = await store.create_token("ops", None, "admin")
    assert admin.admin and admin.project is None
    await store.delete_token(admin.id, "admin")
    assert await store.authenticate(admin_token) is None
    with pytest.raises(NotFound):
        await store.delete_token(admin.id, "admin")
    with pytest.raises(NotFound):
        await store.create_token("x", "no-such-project", "admin")
    # Deleting the project revokes its tokens.
    await store.delete_project(project, "admin")
    assert await store.authenticate(token) is None


async def test_a_delivery_is_recorded_once_even_under_concurrency(store: Store) -> None:
    delivery = str(uuid.uuid4())
    results = await asyncio.gather(*(store.record_delivery(delivery, "pull_request")
                                     for _ in range(20)))
    assert results.count(True) == 1
    assert await store.record_delivery(delivery, "pull_request") is False
    await store.set_delivery_outcome(delivery, "signalled")
    assert await store.pool.fetchval(
        "SELECT outcome FROM webhook_deliveries WHERE delivery_id = $1", delivery) == "signalled"
    await store.forget_delivery(delivery)
    assert await store.record_delivery(delivery, "pull_request") is True


# ---------------------------------------------------------------------------- blueprints


async def test_an_imported_blueprint_exports_back_equal(store: Store, project: str) -> None:
    exported = await store.export_blueprint(project)
    imported = example()
    assert exported == imported.model_copy(update={"project": exported.project})
    # Importing the export again changes nothing.
    before = await store.pool.fetch(
        "SELECT a.name, a.document, a.updated_at FROM applications a JOIN projects p "
        "ON p.id = a.project_id WHERE p.name = $1 ORDER BY a.name", project)
    result = await store.import_blueprint(exported, "t")
    assert not result.created
    assert await store.export_blueprint(project) == exported
    after = await store.pool.fetch(
        "SELECT a.name, a.document, a.updated_at FROM applications a JOIN projects p "
        "ON p.id = a.project_id WHERE p.name = $1 ORDER BY a.name", project)
    assert before == after


async def test_reimport_removes_what_the_blueprint_dropped(store: Store, project: str) -> None:
    await store.put_secret(project, "WORKER_KEY", SECRET, VariableScope.application, "worker")
    await store.put_secret(project, "SESSION_SECRET", SECRET, VariableScope.application, "web")
    blueprint = await store.export_blueprint(project)
    smaller = blueprint.model_copy(update={
        "applications": [a for a in blueprint.applications if a.name != "worker"],
        "variables": [v for v in blueprint.variables if v.application != "worker"],
    })
    await store.import_blueprint(smaller, "t")
    assert await store.export_blueprint(project) == smaller
    keys = {m.key for m in (await store.secret_metadata(project)).items}
    assert keys == {"SESSION_SECRET"}  # the worker's secret went with the worker
    audit = [e.object for e in (await store.audit_entries(project=project)).items]
    assert any("application 'worker'" in o and "not in the imported blueprint" in o
               for o in audit)


async def test_variables_and_secrets_scoped_to_a_job_live_and_go_with_it(
        store: Store, project: str) -> None:
    """The example's jobs are elements like its applications: a variable or a secret
    may be scoped to one (checked by the store and by the database itself), and goes
    when the job goes (a reimport without it, or its deletion)."""
    blueprint = await store.export_blueprint(project)
    assert [j.name for j in blueprint.jobs] == ["migrate", "seed", "farewell"]
    await store.create_variable(project, ScopedVariable(
        key="LOCK_TIMEOUT", value="5s", scope=VariableScope.application,
        application="migrate"), "t")
    await store.put_secret(project, "SEED_TOKEN", SECRET, VariableScope.application, "seed")
    repository = (await store.get_project(project)).repository
    source = await store.source_environment(repository)
    assert source is not None
    scoped = resolve_variables(source.blueprint.variables, source.secrets,
                               target=Target.preview, application="migrate")
    assert scoped["LOCK_TIMEOUT"] == "5s"
    assert [s.key for s in source.secrets] == ["SEED_TOKEN"]
    # The database refuses a row scoped to nothing, whoever writes it.
    async with store.pool.acquire() as conn:
        with pytest.raises(asyncpg.ForeignKeyViolationError, match="no application or job"):
            await conn.execute(
                "INSERT INTO variables (project_id, key, scope, application, value, kind,"
                " applies_to) SELECT id, 'X', 'application', 'ghost', '', 'value', 'both'"
                " FROM projects WHERE name = $1", project)
    await store.collections["jobs"].delete(project, "seed", "t")
    keys = {m.key for m in (await store.secret_metadata(project)).items}
    assert "SEED_TOKEN" not in keys
    smaller = (await store.export_blueprint(project)).model_copy(update={
        "jobs": [], "variables": blueprint.variables})
    await store.import_blueprint(smaller, "t")
    assert (await store.list_variables(project, key="LOCK_TIMEOUT")).total == 0


async def test_import_refusals(store: Store, project: str) -> None:
    blueprint = await store.export_blueprint(project)
    thief = blueprint.model_copy(update={"project": blueprint.project.model_copy(
        update={"name": "thief"})})
    with pytest.raises(Conflict, match=f"already registered by project '{project}'"):
        await store.import_blueprint(thief, "t")
    twice = blueprint.model_copy(update={"variables": [*blueprint.variables,
                                                        blueprint.variables[0]]})
    with pytest.raises(Invalid, match=r"variables\[8\]: NODE_ENV .* is defined twice"):
        await store.import_blueprint(twice, "t")
    bad_repo = blueprint.model_copy(update={"project": blueprint.project.model_copy(
        update={"repository": "not a repository"})})
    with pytest.raises(Invalid, match="repository"):
        await store.import_blueprint(bad_repo, "t")
    # A refused import changed nothing.
    assert await store.export_blueprint(project) == blueprint


async def test_export_of_an_incomplete_project_says_what_is_missing(store: Store) -> None:
    name = f"empty-{uuid.uuid4().hex[:6]}"
    await store.create_project(ProjectSpec(name=name, repository=f"acme/{name}"), "t")
    with pytest.raises(Conflict, match="add its source environment 'production' first"):
        await store.export_blueprint(name)
    await store.environments.create(name, Environment(), "t")
    with pytest.raises(Conflict, match="add an application first"):
        await store.export_blueprint(name)
    await store.delete_project(name, "t")


# ---------------------------------------------------------------------------- source + activity


async def test_source_environment_and_resolution_of_the_example(
    store: Store, project: str
) -> None:
    await store.put_secret(project, "SESSION_SECRET", SECRET, VariableScope.application, "web")
    repository = (await store.get_project(project)).repository
    source = await store.source_environment(repository.upper())  # case does not matter
    assert source is not None and source.blueprint.project.name == project
    assert [s.key for s in source.secrets] == ["SESSION_SECRET"]
    assert await store.source_environment("nobody/nothing") is None

    blueprint = source.blueprint
    for app in blueprint.applications:
        env = {t: resolve_variables(blueprint.variables, source.secrets, target=t,
                                    application=app.name) for t in Target}
        # A project-scoped variable reaches every application in every target.
        assert env[Target.production]["API_URL"] == env[Target.preview]["API_URL"]
        # One override: production in production, development in a preview.
        assert env[Target.production]["NODE_ENV"] == "production"
        assert env[Target.preview]["NODE_ENV"] == "development"
    web = resolve_variables(blueprint.variables, source.secrets, target=Target.preview,
                            application="web")
    assert web["PUBLIC_API"] == "http://api:8080"
    assert isinstance(web["SESSION_SECRET"], SealedValue)
    assert SEALER.unseal(web["SESSION_SECRET"]) == SECRET


async def test_load_source_environment_activity(store: Store, project: str) -> None:
    activities = StoreSourceActivities(store)
    env = ActivityEnvironment()
    repository = (await store.get_project(project)).repository
    source = await env.run(activities.load_source_environment,
                           LoadSourceRequest(repository=repository))
    assert isinstance(source, SourceEnvironment) and source.blueprint.project.name == project
    with pytest.raises(ApplicationError) as raised:
        await env.run(activities.load_source_environment,
                      LoadSourceRequest(repository="someone/unknown"))
    error = raised.value
    assert error.type == "UnknownRepository" and error.non_retryable
    assert "someone/unknown" in error.message and "preview blueprint import" in error.message


async def test_sweep_targets_come_from_every_projects_source_environment(
    store: Store, project: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    tenant = Environment(isolation=Isolation.cluster, cluster=ClusterRef(name=f"t-{suffix}"))
    await store.environments.create(project, tenant.model_copy(update={"name": "isolated"}),
                                    "t")
    activities = StoreSourceActivities(store)
    run = ActivityEnvironment().run
    # Only the source environment's targets count: previews are copies of it alone.
    before = await run(activities.list_sweep_targets)
    assert isinstance(before, SweepTargets)
    assert f"t-{suffix}" not in before.dedicated_clusters and "default" in before.clusters

    record = await store.get_project(project)
    spec = ProjectSpec(**record.model_dump(exclude={"created_at", "updated_at"}))
    await store.update_project(project, spec.model_copy(
        update={"source_environment": "isolated"}), "t")
    after = await run(activities.list_sweep_targets)
    assert f"t-{suffix}" in after.dedicated_clusters
    assert f"t-{suffix}" not in after.clusters
    await store.delete_project(project, "t")
    assert f"t-{suffix}" not in (await run(activities.list_sweep_targets)).dedicated_clusters


# ---------------------------------------------------------------------------- clusters

KUBECONFIG = """
apiVersion: v1
kind: Config
clusters:
- name: hipaa
  cluster: {server: "https://127.0.0.1:6443", certificate-authority-data: Q0FDRVJU}
users:
- name: ops
  user: {client-key-data: S0VZLXRvcC1zZWNyZXQtOTE3Mw==, client-certificate-data: Q0VSVA==}
contexts:
- name: hipaa-ops
  context: {cluster: hipaa, user: ops}
current-context: hipaa-ops
"""
KEY_DATA = "S0VZLXRvcC1zZWNyZXQtOTE3Mw=="


async def test_cluster_kubeconfigs_are_sealed_checked_and_never_shown(store: Store) -> None:
    name = f"hipaa-{uuid.uuid4().hex[:6]}"
    metadata, created = await store.put_cluster(name, KUBECONFIG, None, "ops")
    assert created and metadata.name == name and metadata.version == 1
    assert metadata.key_id == "old" and KEY_DATA not in metadata.model_dump_json()
    again, created = await store.put_cluster(name, KUBECONFIG, "hipaa-ops", "ops")
    assert not created and again.version == 2 and again.context == "hipaa-ops"
    credentials = await store.cluster_credentials(name)
    assert credentials is not None and SEALER.unseal(credentials.sealed) == KUBECONFIG
    assert name in [c.name for c in (await store.list_clusters(limit=500)).items]
    # Nothing in the database shows it in clear: not the table, not the audit log.
    assert KEY_DATA not in await dump_everything(store.pool)
    assert KEY_DATA not in str([dict(r) for r in await store.pool.fetch(
        "SELECT * FROM clusters")])

    refusals = [
        ("default", KUBECONFIG, None, "other than 'default'"),
        ("Not_A_Label", KUBECONFIG, None, "DNS label"),
        (name, "clusters: [", None, "not valid YAML at line"),
        (name, "just text", None, "YAML mapping"),
        (name, KUBECONFIG, "nope", "context 'nope' is not in the kubeconfig"),
        (name, KUBECONFIG.replace("cluster: hipaa,", "cluster: gone,"), None,
         "names a cluster the kubeconfig lacks"),
        (name, KUBECONFIG.replace("current-context: hipaa-ops", "current-context: [a]"), None,
         "no current-context"),
        # Nothing that runs a command or reads a file on the worker.
        (name, KUBECONFIG.replace("user: {client-key-data:",
                                  "user: {exec: {command: sh}, client-key-data:"), None,
         "user 'ops' uses exec"),
        (name, KUBECONFIG.replace("user: {client-key-data:",
                                  "user: {tokenFile: /var/run/token, client-key-data:"), None,
         "uses tokenFile"),
        (name, KUBECONFIG.replace("certificate-authority-data: Q0FDRVJU",
                                  "certificate-authority: /etc/ca.crt"), None,
         "cluster 'hipaa' uses certificate-authority:"),
    ]
    for bad_name, text, context, message in refusals:
        with pytest.raises(Invalid, match=message) as refused:
            await store.put_cluster(bad_name, text, context, "ops")
        assert KEY_DATA not in refused.value.message
    assert (await store.cluster_credentials(name)) is not None  # refusals changed nothing

    # A master-key rotation re-wraps cluster kubeconfigs too.
    rotated = Sealer(Keyring.parse(f"old:{key(1)},new:{key(2)}"))
    assert await store.rewrap_secrets(rotated) >= 1
    moved = await store.cluster_credentials(name)
    assert moved is not None and moved.sealed.key_id == "new"
    assert Sealer(Keyring.parse(f"new:{key(2)}")).unseal(moved.sealed) == KUBECONFIG
    await store.rewrap_secrets(Sealer(Keyring.parse(f"new:{key(2)},old:{key(1)}")))

    await store.delete_cluster(name, "ops")
    assert await store.cluster_credentials(name) is None
    with pytest.raises(NotFound):
        await store.delete_cluster(name, "ops")
    actions = [r["action"] for r in await store.pool.fetch(
        "SELECT action FROM audit_log WHERE object = $1 ORDER BY id", f"cluster {name!r}")]
    assert actions == ["cluster.create", "cluster.update", "cluster.delete"]
