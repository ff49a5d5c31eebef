"""The teardown receipt: after a preview's teardown, list every system it used, from
outside, with the orphan sweeper's own listings, and report what still carries the
environment's marks. Pure: the workflow runs the listings these checks name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from domain.contract import (
    LIST_AWS_ENVIRONMENTS,
    LIST_KUBE_ENVIRONMENTS,
    LIST_PREVIEW_DATABASES,
    ActivityContract,
)
from domain.plan import Step
from domain.resources import (
    AwsSpec,
    AwsSweepInput,
    KubeSpec,
    KubeSweepInput,
    PostgresCloneSpec,
    PreviewDatabase,
)


@dataclass(frozen=True)
class Check:
    system: str  # as the sweeper names it: "kubernetes:default", "aws:default:eu-west-1"
    activity: ActivityContract
    argument: BaseModel | None
    task_queue: str | None  # a tenant's system is listed by that tenant's worker


def checks_for(steps: Sequence[Step]) -> list[Check]:
    """One listing per cluster, AWS target and database server the steps used."""
    found: dict[str, Check] = {}
    for step in steps:
        spec = step.spec
        if isinstance(spec, KubeSpec):
            found.setdefault(f"kubernetes:{spec.cluster}", Check(
                f"kubernetes:{spec.cluster}", LIST_KUBE_ENVIRONMENTS,
                KubeSweepInput(cluster=spec.cluster), step.task_queue))
        elif isinstance(spec, AwsSpec):
            name = f"aws:{spec.target.account_id or 'default'}:{spec.target.region}"
            found.setdefault(name, Check(name, LIST_AWS_ENVIRONMENTS,
                                         AwsSweepInput(target=spec.target), step.task_queue))
        elif isinstance(spec, PostgresCloneSpec):
            found.setdefault("postgres", Check("postgres", LIST_PREVIEW_DATABASES, None, None))
    return list(found.values())


def leftovers(check: Check, listed: Any, environment: str) -> list[str]:
    """What a listing still holds of this environment, one '<system>: <what>' each."""
    if check.activity is LIST_PREVIEW_DATABASES:
        return [f"{check.system}: database {db.database}" for db in listed
                if isinstance(db, PreviewDatabase) and db.environment == environment]
    return [f"{check.system}: {item}" for item in dict(listed).get(environment, [])]
