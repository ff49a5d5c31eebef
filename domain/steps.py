"""What a plan is made of (steps, the plan, the planner's options and errors) and the
context every planner rule reads. domain/plan.py holds the rules."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from domain.blueprint import Blueprint, EgressRule, Environment, Isolation
from domain.feedback import RepositoryFolder
from domain.naming import Ownership
from domain.pull_request import PullRequest
from domain.resources import AwsTarget, ResourceSpec
from domain.systems import task_queue_for
from domain.variables import SecretVariable


class PlanError(ValueError):
    pass


class Step(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str
    spec: ResourceSpec
    depends_on: tuple[str, ...] = ()
    task_queue: str | None = Field(None, description="None: the workflow's own task queue")
    summary: str = ""
    wait_seconds: int = Field(0, ge=0, description="How long the saga keeps asking again "
                              "while the step's activity answers 'not yet' (StepOutput.waiting)")

    @property
    def present(self) -> str:
        return type(self.spec).present

    @property
    def absent(self) -> str | None:
        return type(self.spec).absent


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True)

    environment_id: str
    steps: tuple[Step, ...]
    urls: dict[str, str] = Field(default_factory=dict)

    def step(self, key: str) -> Step:
        for step in self.steps:
            if step.key == key:
                return step
        raise KeyError(key)

    def keys(self) -> list[str]:
        return [s.key for s in self.steps]


class PlanOptions(BaseModel):
    """Deployment facts the planner needs but a blueprint does not hold."""

    model_config = ConfigDict(frozen=True)

    task_queue: str = "previews"
    ingress_namespace: str = "ingress-nginx"
    ingress_cidrs: tuple[str, ...] = Field(
        (), description="Ingress controllers outside that namespace's pods (host network)")
    url_port: int | None = Field(
        None, description="Port of the previews' URLs when the ingress is not on 80/443")
    ingress_wait_for_address: bool = Field(
        False, description="An Ingress is ready once its controller publishes an address")
    url_check: bool = Field(
        False, description="An Ingress is ready once each URL answers from its application")
    url_connect_to: str | None = Field(
        None, description="host:port the worker reaches the ingress at, for that check")
    dns_cidrs: tuple[str, ...] = Field(
        (), description="Cluster DNS servers that are not kube-dns pods (a node-local one)")
    egress: tuple[EgressRule, ...] = Field(
        (), description="Addresses every preview may reach (the preview database server)")
    storage_class: str = "standard"
    ingress_hostname: str = Field(
        "ingress.preview.localhost", description="Load balancer host that DNS records point to"
    )
    base_domain: str = Field(
        "preview.localhost", description="Where previews live when the blueprint names no domain")
    check_images: bool = Field(
        True, description="Wait until the registry has each application's image before its "
                          "rollout (off where images are not pulled, e.g. fake nodes)")
    golden_dump_bucket: str | None = Field(
        None, description="S3 bucket of published golden copies (container databases' clones)")


class PlanContext(BaseModel):
    """What every planner rule reads: the blueprint, the pull request, the deployment
    facts, and the names and URLs the plan gives this preview."""

    model_config = ConfigDict(frozen=True)
    blueprint: Blueprint
    secrets: tuple[SecretVariable, ...]
    pr: PullRequest
    options: PlanOptions
    env_id: str
    owner: Ownership
    namespace: str
    urls: dict[str, str]
    changed_files: tuple[str, ...] | None = None
    chart_folders: dict[str, RepositoryFolder] = Field(default_factory=dict)

    @property
    def base_domain(self) -> str:
        return self.blueprint.network.base_domain or self.options.base_domain

    @property
    def aws(self) -> AwsTarget:
        return aws_target(self.blueprint.environment)

    def step(self, key: str, spec: ResourceSpec, summary: str,
             depends_on: tuple[str, ...] = (), wait_seconds: int = 0) -> Step:
        """A step on the task queue its spec's system has for this environment."""
        queue = task_queue_for(type(spec).system, self.blueprint.environment,
                               self.options.task_queue)
        return Step(key=key, spec=spec, depends_on=depends_on, task_queue=queue,
                    summary=summary, wait_seconds=wait_seconds)


def aws_target(env: Environment) -> AwsTarget:
    """Where an environment's AWS resources live: its region, in its own account when
    isolated by account (reached through the tenant's role)."""
    account = env.cloud_account
    if env.isolation == Isolation.account and account is not None:
        return AwsTarget(
            region=env.region,
            account_id=account.account_id,
            role_arn=account.role_arn,
            external_id=account.external_id,
        )
    return AwsTarget(region=env.region)


Rule = Callable[[PlanContext], list[Step]]
