"""Specs of every resource a preview is made of: the inputs of the activity pairs.

Each spec names its activity pair (`ensure_*` makes it present, `remove_*` absent) and
the system that serves it. A new kind of resource is one spec here, one activity pair
and one planner rule; the worker then refuses to start until it serves the pair.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from domain.blueprint import (
    DataPolicy,
    EgressRule,
    HealthCheck,
    MaskingRule,
    Resources,
)
from domain.charts import chart_source
from domain.feedback import RepositoryFolder
from domain.jobs import JobPhase
from domain.migration import MigrationLimits
from domain.naming import Ownership
from domain.secrets import SealedValue
from domain.systems import System


class Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    system: ClassVar[System]  # who serves its activities (domain/systems.py)
    present: ClassVar[str]
    absent: ClassVar[str | None]
    sleep: ClassVar[str | None] = None  # scales the resource to zero
    wake: ClassVar[str | None] = None
    # Asks whether the resource is still there (→ "" or why not, one line): a ready
    # preview checks now and then that nobody removed it behind its back. A kind that
    # learns to be checked after previews ran names a patch (as scale_patch), so their
    # histories replay without that call; the first kinds came with "resource-check".
    check: ClassVar[str | None] = None
    check_patch: ClassVar[str | None] = None
    # A kind that learnt to sleep after previews were running names a patch: a history
    # recorded before it replays without those calls (workflow.patched).
    scale_patch: ClassVar[str | None] = None
    # A step's heartbeat timeout: how soon the server notices a dead worker and hands
    # the step to another (+1 s retry backoff). Activities heartbeat every 2 s or less
    # while they wait, between short calls: a kind needs longer only if one of its calls
    # may block past this with no side task heartbeating.
    heartbeat_seconds: ClassVar[float] = 7.0

    owner: Ownership


class UpstreamRef(BaseModel):
    """A value produced by an earlier step (e.g. a clone's connection URL)."""

    model_config = ConfigDict(frozen=True)
    step: str
    output: str


# --- Kubernetes -------------------------------------------------------------------


class KubeSpec(Spec):
    system: ClassVar[System] = System.kubernetes
    cluster: str = "default"


class NamespaceSpec(KubeSpec):
    kind: Literal["namespace"] = "namespace"
    present: ClassVar[str] = "ensure_namespace"
    absent: ClassVar[str | None] = "remove_namespace"
    check: ClassVar[str | None] = "check_namespace"
    name: str
    cpu_quota: str = "4"
    memory_quota: str = "8Gi"
    ingress_namespace: str = "ingress-nginx"
    ingress_cidrs: list[str] = Field(
        default_factory=list, description="Ingress controllers that are not pods")
    dns_namespace: str = "kube-system"
    dns_cidrs: list[str] = Field(
        default_factory=list, description="Cluster DNS servers that are not kube-dns pods")
    egress: list[EgressRule] = Field(
        default_factory=list, description="Addresses outside the cluster pods may reach")
    # The Pod Security Standard the namespace enforces; lower only with the blueprint's
    # stated reason (shown on the PR).
    pod_security: Literal["restricted", "baseline", "privileged"] = "restricted"


class ConfigMapSpec(KubeSpec):
    kind: Literal["config_map"] = "config_map"
    present: ClassVar[str] = "ensure_config_map"
    absent: ClassVar[str | None] = "remove_config_map"
    namespace: str
    name: str
    data: dict[str, str] = Field(default_factory=dict)
    upstream: dict[str, UpstreamRef] = Field(default_factory=dict)


class SecretSpec(KubeSpec):
    """Values stay sealed until the worker writes them into the cluster."""

    kind: Literal["secret"] = "secret"
    present: ClassVar[str] = "ensure_secret"
    absent: ClassVar[str | None] = "remove_secret"
    namespace: str
    name: str
    data: dict[str, SealedValue] = Field(default_factory=dict)
    upstream: dict[str, UpstreamRef] = Field(default_factory=dict)
    outputs_of: list[str] = Field(
        default_factory=list, description="Steps (jobs) whose every secret output becomes a "
        "key of this Secret; keys it sets itself win")


class ApplicationSpec(KubeSpec):
    """A Deployment and its Service; ensure waits until the rollout is Ready."""

    kind: Literal["application"] = "application"
    present: ClassVar[str] = "ensure_application"
    absent: ClassVar[str | None] = "remove_application"
    sleep: ClassVar[str | None] = "sleep_application"
    wake: ClassVar[str | None] = "wake_application"
    namespace: str
    name: str
    image: str
    ports: list[int]
    replicas: int = 1
    resources: Resources = Resources()
    health_check: HealthCheck | None = None
    command: list[str] | None = None
    config_map: str | None = None
    secret: str | None = None
    rollout_timeout_seconds: int = 600
    # False only where the blueprint opts the application out (with a reason): its pods
    # then need a namespace below `restricted`.
    run_as_non_root: bool = True
    run_as_user: int | None = Field(
        None, description="uid the containers run as; needed for images whose USER is a name")


class WatchedDatabase(BaseModel):
    """A preview database a deploy job reaches, watched around it for the migration report."""

    model_config = ConfigDict(frozen=True)
    name: str = Field(description="The blueprint's name for it")
    database: str = Field(description="Its name on the preview server")


class JobSpec(KubeSpec):
    """A command run to completion as a Kubernetes Job (domain.blueprint.Job).

    deploy and first_deploy jobs run when made present; the Job of a commit that already
    completed is not run again, and a first_deploy job runs once in the namespace's life.
    A destroy job is made present as nothing: it runs when it is made absent, which the
    planner orders before every other removal. Output `values["report"]`: the migration
    report (JSON) of a deploy job with watched databases; `secrets`: what it wrote to
    $PREVIEW_OUTPUT, sealed."""

    kind: Literal["job"] = "job"
    present: ClassVar[str] = "run_job"
    absent: ClassVar[str | None] = "remove_job"
    namespace: str
    name: str
    when: JobPhase = JobPhase.deploy
    image: str
    command: list[str]
    resources: Resources = Resources()
    config_map: str | None = None
    secret: str | None = None
    timeout_seconds: int = 600
    run_as_non_root: bool = True
    watch: list[WatchedDatabase] = Field(default_factory=list)
    limits: MigrationLimits = MigrationLimits()


class IngressHost(BaseModel):
    model_config = ConfigDict(frozen=True)
    host: str
    service: str
    port: int


class UrlCheck(BaseModel):
    """How a route is shown to answer from its application, not from the controller
    (its 404 for an unknown host, a 502 without upstream) or the engine's default backend."""

    model_config = ConfigDict(frozen=True)
    path: str = "/"
    health: bool = Field(False, description="path is the application's health check: "
                                            "only 2xx/3xx counts")
    connect_to: str | None = Field(
        None, description="host:port to connect to instead of resolving the URL's host")


class IngressSpec(KubeSpec):
    kind: Literal["ingress"] = "ingress"
    present: ClassVar[str] = "ensure_ingress"
    absent: ClassVar[str | None] = "remove_ingress"
    namespace: str
    name: str
    hosts: list[IngressHost]
    tls_secret: str | None = None
    basic_auth_secret: str | None = None
    url_port: int | None = None  # the ingress's port in URLs, when not 80/443
    wait_for_address: bool = False  # ready once the controller publishes an address
    url_check: UrlCheck | None = None  # ready once each URL answers from the application


class ChartSpec(KubeSpec):
    """A Helm chart's render, applied by the engine object by object in the preview's
    namespace (domain.blueprint.Chart). `values` are final (links resolved); each entry
    of `connections` is a Secret the activity makes first (key `url`), whose name the
    values already hold. Output `values["objects"]`: how many objects it applied."""

    kind: Literal["chart"] = "chart"
    present: ClassVar[str] = "ensure_chart"
    absent: ClassVar[str | None] = "remove_chart"
    heartbeat_seconds: ClassVar[float] = 20.0  # `helm template` of a remote chart runs whole
    namespace: str
    name: str = Field(description="The release name: the chart element's name")
    chart: str | None = Field(None, description="oci:// or a name in `repository`; None: "
                              "`folder` holds the chart")
    folder: RepositoryFolder | None = Field(
        None, description="The chart's folder of the PR's repository at its head, packed")
    repository: str | None = None
    version: str | None = None
    values: dict[str, Any] = Field(default_factory=dict)
    connections: dict[str, UpstreamRef] = Field(
        default_factory=dict, description="Secret name → the connection URL it holds (key url)")
    rollout_timeout_seconds: int = 600
    url: str | None = Field(None, description="A public chart's preview URL (its Ingress)")
    url_check: UrlCheck | None = None  # ready once the URL answers from the chart's pods

    @property
    def source(self) -> str:
        """Where the chart comes from, for messages (without its version)."""
        return chart_source(self.folder.path if self.folder else None, self.chart)


class ContainerDatabaseSpec(KubeSpec):
    """A PostgreSQL StatefulSet with its claim, credentials and data-loading Job."""

    kind: Literal["container_database"] = "container_database"
    present: ClassVar[str] = "ensure_container_database"
    absent: ClassVar[str | None] = "remove_container_database"
    namespace: str
    name: str
    database: str
    storage_class: str = "standard"
    storage: str = "1Gi"
    data_policy: DataPolicy = DataPolicy.empty
    seed_sql: str | None = None
    golden_dump_s3_uri: str | None = None
    masking: list[MaskingRule] = Field(
        default_factory=list, description="masked_clone: rules the golden dump must have had")


class CacheSpec(KubeSpec):
    """A Redis Deployment and Service with a generated password; output `url`, sealed."""

    kind: Literal["cache"] = "cache"
    sleep: ClassVar[str | None] = "sleep_cache"  # a sleeping preview runs no pod at all
    wake: ClassVar[str | None] = "wake_cache"
    scale_patch: ClassVar[str | None] = "sleep-caches"
    present: ClassVar[str] = "ensure_cache"
    absent: ClassVar[str | None] = "remove_cache"
    namespace: str
    name: str
    image: str
    memory: str = "256Mi"
    cpu: str = "250m"


# --- AWS --------------------------------------------------------------------------


class AwsTarget(BaseModel):
    """Where an AWS activity acts: a region and, for isolated tenants, an assumed role."""

    model_config = ConfigDict(frozen=True)
    region: str
    account_id: str | None = None
    role_arn: str | None = None
    external_id: str | None = None


class AwsSpec(Spec):
    system: ClassVar[System] = System.aws
    target: AwsTarget


class VpcSpec(AwsSpec):
    kind: Literal["vpc"] = "vpc"
    present: ClassVar[str] = "ensure_vpc"
    absent: ClassVar[str | None] = "remove_vpc"
    name: str
    cidr: str = "10.100.0.0/16"
    peer_vpc_id: str | None = None


class DnsRecordsSpec(AwsSpec):
    kind: Literal["dns_records"] = "dns_records"
    present: ClassVar[str] = "ensure_dns_records"
    absent: ClassVar[str | None] = "remove_dns_records"
    zone_id: str
    hosts: list[str]
    points_to: str = Field(description="CNAME target: the ingress load balancer's host name")


class CertificateSpec(AwsSpec):
    kind: Literal["certificate"] = "certificate"
    present: ClassVar[str] = "ensure_certificate"
    absent: ClassVar[str | None] = "remove_certificate"
    hosts: list[str]
    zone_id: str | None = None
    wildcard_certificate_arn: str | None = None


class RdsCloneSpec(AwsSpec):
    kind: Literal["rds_clone"] = "rds_clone"
    present: ClassVar[str] = "ensure_rds_clone"
    absent: ClassVar[str | None] = "remove_rds_clone"
    identifier: str
    source_instance: str
    snapshot_max_age_hours: int = 24
    instance_class: str = "db.t4g.micro"
    vpc_step: str | None = Field(None, description="Step whose outputs hold subnets/SG")


class AuroraCloneSpec(AwsSpec):
    kind: Literal["aurora_clone"] = "aurora_clone"
    present: ClassVar[str] = "ensure_aurora_clone"
    absent: ClassVar[str | None] = "remove_aurora_clone"
    identifier: str
    source_cluster: str
    instance_class: str = "db.r6g.large"
    vpc_step: str | None = None


# --- control plane ----------------------------------------------------------------


class PreviewSlotSpec(Spec):
    """One of the repository's `max_live_previews` slots, claimed before anything else."""

    kind: Literal["preview_slot"] = "preview_slot"
    system: ClassVar[System] = System.control_plane
    present: ClassVar[str] = "claim_preview_slot"
    absent: ClassVar[str | None] = "release_preview_slot"
    repository: str
    max_live: int


# --- container registries ---------------------------------------------------------


class ImageSpec(Spec):
    """An image an application needs: present once the registry has the tag. Nothing
    to remove: the engine never pushes images, CI does."""

    kind: Literal["image"] = "image"
    system: ClassVar[System] = System.registry
    present: ClassVar[str] = "ensure_image"
    absent: ClassVar[str | None] = None
    repository: str = Field(description="registry host/path, as in the application's image")
    tag: str


# --- PostgreSQL -------------------------------------------------------------------


class PostgresCloneSpec(Spec):
    """A database on the shared preview server, from the current golden copy."""

    kind: Literal["postgres_clone"] = "postgres_clone"
    system: ClassVar[System] = System.postgres
    present: ClassVar[str] = "ensure_database_clone"
    absent: ClassVar[str | None] = "remove_database_clone"
    check: ClassVar[str | None] = "check_database_clone"
    database: str
    role: str
    source: str = ""
    data_policy: DataPolicy = DataPolicy.empty
    seed_sql: str | None = None
    masking: list[MaskingRule] = Field(default_factory=list)
    connection_limit: int = 20


ResourceSpec = Annotated[
    NamespaceSpec
    | ConfigMapSpec
    | SecretSpec
    | ApplicationSpec
    | JobSpec
    | ChartSpec
    | IngressSpec
    | ContainerDatabaseSpec
    | CacheSpec
    | VpcSpec
    | DnsRecordsSpec
    | CertificateSpec
    | RdsCloneSpec
    | AuroraCloneSpec
    | PostgresCloneSpec
    | PreviewSlotSpec
    | ImageSpec,
    Field(discriminator="kind"),
]


SpecT = TypeVar("SpecT", bound=Spec)


class StepOutput(BaseModel):
    """What a step made: plain values (ids, hosts, URLs) and sealed secrets."""

    values: dict[str, str] = Field(default_factory=dict)
    secrets: dict[str, SealedValue] = Field(default_factory=dict)
    urls: dict[str, str] = Field(default_factory=dict)
    detail: str = Field("", description="How it was made, for people (status, PR comment): "
                                        "never a secret")
    waiting: str | None = Field(None, description="Not there yet, and why (e.g. an image "
                                "CI has not pushed): the saga asks again, within the step's "
                                "wait_seconds")


class StepInput(BaseModel):
    """The single argument of every resource activity."""

    spec: ResourceSpec
    upstream: dict[str, StepOutput] = Field(default_factory=dict)

    def spec_as(self, kind: type[SpecT]) -> SpecT:
        if not isinstance(self.spec, kind):
            raise TypeError(f"expected a {kind.__name__}, got {type(self.spec).__name__}")
        return self.spec

    def resolve(self, ref: UpstreamRef) -> str | SealedValue:
        output = self.upstream.get(ref.step)
        if output is None:
            raise KeyError(f"step {ref.step!r} has no output for this step")
        if ref.output in output.secrets:
            return output.secrets[ref.output]
        if ref.output in output.values:
            return output.values[ref.output]
        raise KeyError(f"step {ref.step!r} has no output named {ref.output!r}")


# --- sweeper inputs ---------------------------------------------------------------


class KubeSweepInput(BaseModel):
    """Which cluster the orphan sweeper lists."""

    cluster: str = "default"


class KubeEnvironmentInput(BaseModel):
    """One environment whose namespaces the sweeper removes from one cluster."""

    cluster: str = "default"
    environment: str


class AwsSweepInput(BaseModel):
    """Which AWS target (region, and account for isolated tenants) the sweeper lists."""

    model_config = ConfigDict(frozen=True)
    target: AwsTarget


class AwsEnvironmentInput(BaseModel):
    """One environment whose AWS resources the sweeper removes from one target."""

    model_config = ConfigDict(frozen=True)
    target: AwsTarget
    environment: str


class PreviewDatabase(BaseModel):
    """A preview database as the orphan sweeper sees it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    database: str
    environment: str
    role: str | None = None
    state: str = ""
    exists: bool = True


class SweepTargets(BaseModel):
    """Every cluster and AWS target the registered projects' previews may use."""

    model_config = ConfigDict(frozen=True)
    clusters: list[str] = Field(default_factory=list, description="Reached by the lifecycle worker")
    dedicated_clusters: list[str] = Field(default_factory=list,
                                          description="`isolation: cluster`: their own worker")
    aws_targets: list[AwsTarget] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list,
                               description="Projects whose environment could not be read")
    repositories: list[str] = Field(
        default_factory=list, description="Every project's repository: the sweeper asks for "
        "each orphan's preview workflow by id (preview_workflows)")
