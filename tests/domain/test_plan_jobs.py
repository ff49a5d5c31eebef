"""The planner's lifecycle jobs (domain.blueprint.Job): where each kind of job sits in the
DAG, what it is given, and what a blueprint may not say about jobs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from domain.blueprint import Blueprint
from domain.jobs import JobPhase
from domain.migration import MigrationLimits
from domain.plan import Plan, plan_preview
from domain.pull_request import PullRequest
from domain.resources import ApplicationSpec, JobSpec, SecretSpec, WatchedDatabase

PR = PullRequest(repository="acme/shop", number=7, head_sha="abcdef1234567", branch="feat/x")


def blueprint(jobs: list[dict[str, Any]], **extra: Any) -> Blueprint:
    data: dict[str, Any] = {
        "project": {"name": "shop", "repository": "acme/shop"},
        "applications": [
            {"name": "web", "image": "r/web", "depends_on": ["api"]},
            {"name": "api", "image": "r/api", "depends_on": ["main"]},
        ],
        "databases": [{"name": "main", "source": "shop"},
                      {"name": "events", "mode": "container"}],
        "caches": [{"name": "sessions"}],
        "jobs": jobs,
    }
    data.update(extra)
    return Blueprint.model_validate(data)


MIGRATE = {"name": "migrate", "application": "api", "command": ["/app", "migrate"],
           "depends_on": ["main", "events", "sessions"]}
SEED = {"name": "seed", "when": "first_deploy", "image": "r/tools:1.2",
        "command": ["seed"], "depends_on": ["main"]}
FAREWELL = {"name": "farewell", "when": "destroy", "application": "api",
            "command": ["/app", "farewell"], "depends_on": ["main"]}


def job(plan: Plan, name: str) -> JobSpec:
    spec = plan.step(f"job/{name}").spec
    assert isinstance(spec, JobSpec)
    return spec


def test_applications_roll_out_after_the_deploy_and_first_deploy_jobs_and_get_their_outputs(
) -> None:
    bp = blueprint([MIGRATE, SEED, FAREWELL],
                   policy={"migrations": {"max_write_lock_seconds": 2}})
    plan = plan_preview(bp, PR)
    for app in ("web", "api"):
        step = plan.step(f"app/{app}")
        assert {"job/migrate", "job/seed"} <= set(step.depends_on)
        assert "job/farewell" not in step.depends_on
        secret = plan.step(f"secret/{app}")
        assert isinstance(secret.spec, SecretSpec)
        assert secret.spec.outputs_of == ["job/migrate", "job/seed"]
        assert {"job/migrate", "job/seed"} <= set(secret.depends_on)
    migrate = job(plan, "migrate")
    # The api's image at the PR's commit, and after that image is pushed.
    assert migrate.image == "r/api:abcdef1234567"
    assert "image/api" in plan.step("job/migrate").depends_on
    assert migrate.limits == MigrationLimits(max_write_lock_seconds=2)
    # Only the shared PostgreSQL database is watched (not the container one).
    assert migrate.watch == [WatchedDatabase(name="main", database=migrate.watch[0].database)]
    assert job(plan, "seed").image == "r/tools:1.2"
    assert job(plan, "seed").watch == []  # a seed is not a migration
    assert job(plan, "farewell").watch == []


def test_deploy_jobs_run_one_after_another_and_first_deploy_jobs_after_them() -> None:
    second = {**MIGRATE, "name": "migrate-search", "depends_on": ["main"]}
    plan = plan_preview(blueprint([SEED, MIGRATE, FAREWELL, second]), PR)
    assert "job/migrate" in plan.step("job/migrate-search").depends_on
    assert not any(d.startswith("job/") for d in plan.step("job/migrate").depends_on)
    assert {"job/migrate", "job/migrate-search"} <= set(plan.step("job/seed").depends_on)
    keys = plan.keys()
    assert keys.index("job/migrate") < keys.index("job/migrate-search") < keys.index("job/seed")


def test_a_job_gets_the_connection_urls_it_names_and_its_own_variables_only() -> None:
    bp = blueprint([MIGRATE, SEED], variables=[
        {"key": "MIGRATION_LOCK_TIMEOUT", "value": "5s", "scope": "application",
         "application": "migrate"},
        {"key": "API_ONLY", "value": "1", "scope": "application", "application": "api"},
    ])
    plan = plan_preview(bp, PR)
    secret = plan.step("secret/seed").spec
    assert isinstance(secret, SecretSpec)
    assert sorted(secret.upstream) == ["DATABASE_URL", "DATABASE_URL_MAIN"]
    migrate_secret = plan.step("secret/migrate").spec
    assert isinstance(migrate_secret, SecretSpec)
    assert sorted(migrate_secret.upstream) == [
        "DATABASE_URL", "DATABASE_URL_EVENTS", "DATABASE_URL_MAIN", "REDIS_URL",
        "REDIS_URL_SESSIONS"]
    assert migrate_secret.outputs_of == []  # a job does not read another's outputs
    config = plan.step("config/migrate").spec
    assert config.data["MIGRATION_LOCK_TIMEOUT"] == "5s"  # type: ignore[union-attr]
    assert "API_ONLY" not in config.data  # type: ignore[union-attr]


def test_a_destroy_job_depends_on_everything_so_teardown_runs_it_first() -> None:
    plan = plan_preview(blueprint([MIGRATE, SEED, FAREWELL]), PR)
    farewell = plan.step("job/farewell")
    others = {s.key for s in plan.steps} - {"job/farewell"}
    assert set(farewell.depends_on) == others
    # Made last, so a failed deploy undoes it first; the saga removes dependents before
    # what they depend on, so teardown removes (runs) it before anything else.
    assert plan.keys()[-1] == "job/farewell"


@given(st.lists(st.sampled_from([JobPhase.deploy, JobPhase.first_deploy, JobPhase.destroy]),
                min_size=1, max_size=5))
def test_any_mix_of_jobs_makes_a_valid_dag_with_destroy_jobs_last(phases: list[JobPhase]) -> None:
    jobs = [{"name": f"job{i}", "when": phase.value, "application": "api",
             "command": ["x"], "depends_on": ["main"]} for i, phase in enumerate(phases)]
    plan = plan_preview(blueprint(jobs), PR)
    seen: set[str] = set()
    for step in plan.steps:
        assert set(step.depends_on) <= seen
        seen.add(step.key)
    destroy = [f"job/job{i}" for i, p in enumerate(phases) if p == JobPhase.destroy]
    before = [f"job/job{i}" for i, p in enumerate(phases) if p != JobPhase.destroy]
    for key in destroy:
        # Every non-destroy step (and no other destroy job) comes before it.
        assert set(plan.step(key).depends_on) == {
            s.key for s in plan.steps if s.key not in destroy}
    api = plan.step("app/api").spec
    assert isinstance(api, ApplicationSpec)
    assert set(before) <= set(plan.step("app/api").depends_on)


@pytest.mark.parametrize(("jobs", "message"), [
    ([{"name": "m", "command": ["x"]}], "name either `application`"),
    ([{"name": "m", "application": "api", "image": "r/x:1", "command": ["x"]}],
     "not both or neither"),
    ([{"name": "m", "application": "nope", "command": ["x"]}],
     "job 'm' runs the image of 'nope', which is not an application"),
    ([{"name": "m", "application": "api", "command": ["x"], "depends_on": ["web"]}],
     "job 'm' depends on 'web', which is not a database or a cache"),
    ([{"name": "api", "application": "api", "command": ["x"]}],
     "elements of different kinds share the name 'api'"),
    ([{"name": "m", "application": "api", "command": []}], "command"),
    ([{"name": "Bad_Name", "application": "api", "command": ["x"]}], "DNS-safe"),
    ([{"name": "m", "application": "api", "command": ["x"], "when": "sometimes"}], "when"),
])
def test_what_a_blueprint_may_not_say_about_jobs(jobs: list[dict[str, Any]],
                                                  message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        blueprint(jobs)


def test_an_application_cannot_wait_for_a_job_by_name() -> None:
    with pytest.raises(ValidationError, match="depends on 'migrate', which is not an "
                                              "application or a database or a cache"):
        blueprint([MIGRATE], applications=[
            {"name": "api", "image": "r/api", "depends_on": ["migrate"]}])


def test_a_blueprint_without_jobs_plans_as_before() -> None:
    """Previews made before jobs existed keep equal specs: nothing re-runs."""
    plan = plan_preview(blueprint([]), PR)
    keys = plan.keys()
    assert not any(k.startswith("job/") for k in keys)
    secret = plan.step("secret/api").spec
    assert isinstance(secret, SecretSpec) and secret.outputs_of == []
    assert "outputs_of" not in secret.model_dump(exclude_defaults=True)
