"""Every worker target serves every activity a workflow or a plan can send to it.

The worker derives what it must serve from domain/contract.py and refuses to start
when something is missing; these tests build each real target (lifecycle, cluster
tenant, account tenant) in each blueprint-source mode and check that every step of
plans of every shape, and every activity the workflows call, lands on a worker that
registered it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from domain.blueprint import Blueprint
from domain.contract import CONTRACT, spec_activities, spec_types
from domain.plan import Plan, PlanOptions, plan_preview
from domain.pull_request import PullRequest
from domain.systems import System, tenant_queue
from engine.settings import Settings
from stack.postgres import PostgresServer
from worker import (
    MissingActivities,
    Resources,
    Target,
    activity_name,
    build_activities,
    build_worker,
)

PR = PullRequest(repository="acme/shop", number=7, head_sha="abcdef1234567", branch="feat/x")
ACCOUNT = {"account_id": "222222222222", "role_arn": "arn:aws:iam::222222222222:role/p",
           "external_id": "ext-id"}
NETWORK = {"base_domain": "preview.example.com", "hosted_zone_id": "Z1", "tls": "per_host",
           "cluster_vpc_id": "vpc-123"}
DATABASES = [
    {"name": "shared", "mode": "shared", "source": "prod", "data_policy": "clone"},
    {"name": "box", "mode": "container", "data_policy": "masked_clone", "source": "prod"},
    {"name": "rds", "mode": "rds", "source": "prod-db", "data_policy": "clone"},
    {"name": "aurora", "mode": "aurora", "source": "prod-cluster", "data_policy": "clone"},
]
# One blueprint per placement, each with every kind of resource the planner knows.
ENVIRONMENTS: dict[str, dict[str, Any]] = {
    "namespace": {},
    "vpc": {"isolation": "vpc"},
    "cluster": {"isolation": "cluster", "cluster": {"name": "hipaa"}},
    "account": {"isolation": "account", "cloud_account": ACCOUNT},
}


def plans() -> Iterator[Plan]:
    options = PlanOptions(golden_dump_bucket="goldens")
    for environment in ENVIRONMENTS.values():
        for network in ({}, NETWORK, {**NETWORK, "tls": "wildcard",
                                      "wildcard_certificate_arn": "arn:aws:acm:x:1:certificate/w"}):
            blueprint = Blueprint.model_validate({
                "project": {"name": "shop", "repository": "acme/shop"},
                "environment": environment,
                "applications": [{"name": "web", "image": "r/web"},
                                 {"name": "jobs", "image": "r/jobs", "public": False}],
                "databases": DATABASES,
                "caches": [{"name": "sessions"}],
                "jobs": [{"name": "migrate", "application": "web", "command": ["migrate"],
                          "depends_on": ["shared"]}],
                "charts": [{"name": "shop", "chart": "oci://r/charts/shop", "public": True}],
                "network": network,
            })
            yield plan_preview(blueprint, PR, options=options)


def test_the_plans_cover_every_kind_of_resource() -> None:
    planned = {type(step.spec) for plan in plans() for step in plan.steps}
    assert planned == set(spec_types()), "a kind no plan here makes is not checked below"


def target_of(queue: str | None, base: str) -> Target:
    """Which worker polls a step's task queue."""
    if queue is None:
        return Target()
    for kind, name in (("cluster", "hipaa"), ("account", ACCOUNT["account_id"])):
        if queue == tenant_queue(base, kind, name):  # type: ignore[arg-type]
            return Target(kind, name)
    raise AssertionError(f"no worker polls {queue!r}")


@pytest.fixture(params=["store", "files"])
def settings(request: pytest.FixtureRequest, postgres_server: PostgresServer,
             tmp_path: Path) -> Settings:
    return Settings(
        blueprint_source=request.param, blueprint_dir=str(tmp_path),
        database_url=postgres_server.url("postgres"),
        kubeconfig=str(tmp_path / "kubeconfig"),
        kube_contexts={"hipaa": str(tmp_path / "hipaa-kubeconfig")},
    )


async def served_by(settings: Settings) -> dict[Target, set[str]]:
    served: dict[Target, set[str]] = {}
    for target in (Target(), Target("cluster", "hipaa"),
                   Target("account", ACCOUNT["account_id"])):
        resources = Resources()
        try:
            functions = await build_activities(settings, target, resources)
        finally:
            await resources.close()
        served[target] = {activity_name(f) for f in functions}
    return served


async def test_every_step_of_every_plan_lands_on_a_worker_that_serves_it(
    settings: Settings,
) -> None:
    served = await served_by(settings)
    for plan in plans():
        for step in plan.steps:
            target = target_of(step.task_queue, settings.task_queue)
            for name in spec_activities(type(step.spec)):
                assert name in served[target], (
                    f"{settings.blueprint_source} mode: step {step.key} needs {name} "
                    f"on {target.describe()}, which serves only {sorted(served[target])}")


async def test_every_activity_a_workflow_calls_is_served(settings: Settings) -> None:
    served = await served_by(settings)
    for activity in CONTRACT:
        # The sweeper calls a tenant's system on that tenant's queue, anything else on ours.
        homes = [t for t in served if activity.system in t.systems]
        assert homes, activity.name
        for target in homes:
            assert activity.name in served[target], f"{target.describe()}: {activity.name}"


async def test_a_tenant_worker_serves_its_own_system_only(settings: Settings) -> None:
    served = await served_by(settings)
    kube_only = served[Target("cluster", "hipaa")]
    assert "ensure_namespace" in kube_only and "ensure_vpc" not in kube_only
    assert "load_source_environment" not in kube_only and "publish_feedback" not in kube_only
    aws_only = served[Target("account", ACCOUNT["account_id"])]
    assert "ensure_vpc" in aws_only and "ensure_namespace" not in aws_only


async def test_a_worker_missing_an_activity_refuses_to_start(
    settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Drop one registration (as a forgotten wiring would) and the worker names it."""
    import worker

    real: Callable[..., list[Callable[..., Any]]] = worker.activities_of

    def without_slot_claims(*objects: object) -> list[Callable[..., Any]]:
        return [f for f in real(*objects) if activity_name(f) != "claim_preview_slot"]

    monkeypatch.setattr(worker, "activities_of", without_slot_claims)
    with pytest.raises(MissingActivities, match="lifecycle worker does not serve "
                                                "claim_preview_slot"):
        await build_activities(settings, Target(), Resources())
    # A tenant's worker is not asked for the control plane's activities.
    await build_activities(settings, Target("account", "1"), Resources())


def test_each_system_is_served_by_exactly_the_targets_that_hold_its_credentials() -> None:
    assert Target().systems == frozenset(System)
    assert Target("cluster", "x").systems == {System.kubernetes}
    assert Target("account", "1").systems == {System.aws}


async def test_the_sticky_timeout_comes_from_the_settings(
    settings: Settings, temporal_client: Client,
) -> None:
    """How long a killed worker holds its previews' next workflow task (bench/
    crash_recovery.py measures what it costs): the setting, not the SDK's 10 s."""
    resources = Resources()
    # A queue of its own: the client allows one worker per queue, and this one must be
    # run and shut down to give its registration back.
    tuned = settings.model_copy(update={"sticky_timeout_seconds": 2.5,
                                        "task_queue": f"sticky-{uuid.uuid4().hex[:8]}"})
    try:
        built = await build_worker(temporal_client, tuned, Target(), resources)
        async with built:
            assert built.config()["sticky_queue_schedule_to_start_timeout"] == timedelta(
                seconds=2.5)
    finally:
        await resources.close()
