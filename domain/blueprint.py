"""What a source environment is: the blueprint a preview is copied from."""

from __future__ import annotations

import ipaddress
import string
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from domain.base import DnsName, Model, Named, Resources
from domain.charts import Chart, chart_strings
from domain.jobs import Job
from domain.links import check_links
from domain.migration import MigrationLimits
from domain.naming import HOSTNAME


def _hostname(value: str) -> str:
    if not HOSTNAME.match(value.lower()):
        raise ValueError(f"{value!r} is not a valid DNS host name")
    return value.lower()


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"port {value} is out of range 1-65535")
    return value


Port = Annotated[int, Field(strict=True, json_schema_extra={"minimum": 1, "maximum": 65535}),
                 AfterValidator(_port)]
HostName = Annotated[str, AfterValidator(_hostname)]
VariableKey = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)]


class EnvironmentKind(StrEnum):
    production = "production"
    staging = "staging"
    preview = "preview"


class Isolation(StrEnum):
    namespace = "namespace"  # a namespace of the shared cluster
    vpc = "vpc"  # plus a dedicated VPC for its cloud resources
    cluster = "cluster"  # a dedicated Kubernetes cluster
    account = "account"  # a dedicated cloud account


class Project(Model):
    name: DnsName
    repository: str = Field(description="owner/name on the Git host")


class ClusterRef(Model):
    name: str = Field("default", description="Cluster name from settings.kube_contexts")


class CloudAccount(Model):
    account_id: str = Field(pattern=r"^\d{12}$")
    role_arn: str | None = Field(None, pattern=r"^arn:aws[\w-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
    external_id: str | None = Field(None, min_length=2, max_length=1224,
                                    pattern=r"^[\w+=,.@:/-]+$")


class HealthCheck(Model):
    path: str = "/healthz"
    port: int | None = None
    initial_delay_seconds: int = Field(0, ge=0)


PathGlob = Annotated[str, Field(min_length=1, max_length=300, pattern=r"^[^\s]+$")]


class RunAsRoot(Model):
    """An application whose image needs uid 0: it runs without runAsNonRoot, in a
    namespace whose pod security the policy lowers to baseline. Shown on the PR."""

    reason: str = Field(min_length=3, max_length=200, description="Why, for reviewers")


class Application(Named):
    image: str = Field(description="Image repository; previews run the PR's commit as tag")
    ports: list[Port] = Field(default_factory=lambda: [8080], min_length=1)
    replicas: int = Field(1, ge=0, le=20)
    resources: Resources = Resources()
    health_check: HealthCheck | None = None
    command: list[str] | None = None
    public: bool = True
    custom_domains: list[HostName] = Field(
        default_factory=list, description="Production host names; a preview never takes "
        "them: it is served at <app>-pr-<n>.<network.base_domain>")
    depends_on: list[str] = Field(
        default_factory=list,
        description="Applications it starts after, and the databases and caches it uses: it "
                    "gets the connection URL of each one named (DATABASE_URL_<NAME>, the first "
                    "also as DATABASE_URL; REDIS_URL likewise) and of no other")
    run_as_root: RunAsRoot | None = Field(
        None, description="Opt out of runAsNonRoot (needs policy.pod_security baseline)")
    paths: list[PathGlob] = Field(
        default_factory=list, max_length=100, description="Files this application is built "
        "from (globs); a PR that touches none of them runs base_image_tag instead")
    base_image_tag: str = Field(
        "{base_sha}", max_length=128, description="Tag of the base branch's image, for a PR "
        "that does not touch `paths`: {base_sha} and {base_branch} are replaced")

    @field_validator("base_image_tag")
    @classmethod
    def _tag_placeholders(cls, value: str) -> str:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        if names - {"base_sha", "base_branch"}:
            raise ValueError(f"base_image_tag {value!r}: only {{base_sha}} and {{base_branch}} "
                             "are replaced")
        return value


class Cache(Named):
    """A Redis server of the preview's own, in its namespace, empty at start. Applications
    that name it in depends_on get REDIS_URL (and REDIS_URL_<NAME>)."""

    image: str = Field("redis:7.4-alpine", description="Redis image, with its tag")
    memory: str = Field("256Mi", pattern=r"^[1-9][0-9]{0,5}(Mi|Gi)$",
                        description="Memory of the server; maxmemory is 90% of it")
    cpu: str = "250m"


class DatabaseMode(StrEnum):
    container = "container"  # a StatefulSet in the preview's namespace
    shared = "shared"  # a database on the shared preview PostgreSQL server
    rds = "rds"  # an RDS instance restored from a snapshot
    aurora = "aurora"  # an Aurora copy-on-write clone


class DataPolicy(StrEnum):
    empty = "empty"
    seed = "seed"
    clone = "clone"
    masked_clone = "masked_clone"


class MaskingMethod(StrEnum):
    fake = "fake"
    hash = "hash"  # keyed hash: equal inputs give equal outputs, so joins still work
    null = "null"
    keep_first = "keep_first"
    keep_last = "keep_last"
    constant = "constant"


class MaskingRule(Model):
    table: str
    column: str
    method: MaskingMethod
    keep: int = Field(0, ge=0, description="Characters kept for keep_first/keep_last")
    value: str | None = Field(None, description="The constant for method=constant")


class Database(Named):
    """A database of the preview's own. Applications that name it in depends_on get
    DATABASE_URL (and DATABASE_URL_<NAME>); no other application holds its credentials."""

    engine: Literal["postgres"] = "postgres"
    mode: DatabaseMode = DatabaseMode.shared
    source: str = Field("", description="Source database name, RDS instance or Aurora cluster")
    data_policy: DataPolicy = DataPolicy.empty
    seed_sql: str | None = None
    masking: list[MaskingRule] = Field(default_factory=list)
    snapshot_max_age_hours: int = Field(24, ge=0)
    instance_class: str = "db.t4g.micro"

    @model_validator(mode="after")
    def _policy(self) -> Database:
        if self.data_policy == DataPolicy.seed and not self.seed_sql:
            raise ValueError(f"database {self.name!r}: data_policy seed needs seed_sql")
        if self.data_policy in (DataPolicy.clone, DataPolicy.masked_clone) and not self.source:
            raise ValueError(f"database {self.name!r}: data_policy {self.data_policy} needs source")
        return self


class TlsMode(StrEnum):
    none = "none"
    wildcard = "wildcard"
    per_host = "per_host"


class EgressRule(Model):
    """An address outside the cluster that a preview's pods may open connections to."""

    cidr: str = Field(description="IPv4 range, e.g. 203.0.113.0/24 (0.0.0.0/0: anywhere; the "
                                  "cloud metadata address 169.254.169.254 stays closed)")
    ports: list[int] = Field(default_factory=list,
                             description="TCP ports; none: every port")

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            network = ipaddress.ip_network(value)
        except ValueError as error:
            raise ValueError(f"egress cidr {value!r}: {error}") from None
        if network.version != 4:
            raise ValueError(f"egress cidr {value!r}: only IPv4 ranges")
        if network.prefixlen == 32 and str(network.network_address) == "169.254.169.254":
            raise ValueError("egress cidr 169.254.169.254/32: the cloud metadata address hands "
                             "out the node's credentials and is never opened to previews")
        return str(network)

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: list[int]) -> list[int]:
        bad = [p for p in value if not 1 <= p <= 65535]
        if bad:
            raise ValueError(f"egress ports {bad}: a port is 1-65535")
        return value


class Network(Model):
    base_domain: HostName | None = Field(
        None, description="Domain of this project's previews (a custom domain); unset: the "
                          "engine's PREVIEW_BASE_DOMAIN")
    tls: TlsMode = TlsMode.none
    wildcard_certificate_arn: str | None = None
    hosted_zone_id: str | None = Field(None, description="Route53 zone; no DNS records if unset")
    basic_auth: bool = Field(False, description="Protect preview URLs with basic auth")
    cluster_vpc_id: str | None = Field(None, description="VPC of the cluster, for peering")
    vpc_cidr_pool: str = Field(
        "10.64.0.0/12", description="Each preview's VPC gets a /22 of this range"
    )
    egress: list[EgressRule] = Field(
        default_factory=list,
        description="What previews may reach outside the cluster besides their own namespace, "
                    "cluster DNS and the engine's database servers; nothing else by default")

    @field_validator("vpc_cidr_pool")
    @classmethod
    def _pool(cls, value: str) -> str:
        try:
            pool = ipaddress.ip_network(value)
        except ValueError as error:
            raise ValueError(f"vpc_cidr_pool: {error}") from None
        if pool.version != 4 or pool.prefixlen > 22:
            raise ValueError("vpc_cidr_pool must be an IPv4 range of /22 or larger")
        return value


class VariableScope(StrEnum):
    project = "project"
    environment = "environment"
    application = "application"


class VariableKind(StrEnum):
    value = "value"
    alias = "alias"  # value is the key of another variable
    override = "override"  # wins over every other value in its target
    secret = "secret"  # value lives sealed in the store, never here


class AppliesTo(StrEnum):
    production = "production"
    previews = "previews"
    both = "both"


class Variable(Model):
    key: VariableKey
    value: str = Field(
        "", description="The value; `{{ urls.<application> }}` in it is that application's "
        "preview URL, and a whole value `{{ connections.<database or cache> }}` its "
        "connection URL (delivered as a Secret)")
    scope: VariableScope = VariableScope.project
    application: str | None = None
    kind: VariableKind = VariableKind.value
    applies_to: AppliesTo = AppliesTo.both

    @model_validator(mode="after")
    def _scope(self) -> Variable:
        if (self.scope == VariableScope.application) != (self.application is not None):
            raise ValueError(
                f"variable {self.key}: scope application needs `application`, other scopes must not"
            )
        if self.kind == VariableKind.secret and self.value:
            raise ValueError(
                f"variable {self.key}: secrets are write-only; set them through the API, "
                "not in the blueprint"
            )
        return self


class DraftBehaviour(StrEnum):
    skip = "skip"
    build = "build"


class ForkBehaviour(StrEnum):
    skip = "skip"
    build_without_secrets = "build_without_secrets"
    allow_secrets = "allow_secrets"


class PodSecurityLevel(StrEnum):
    restricted = "restricted"
    baseline = "baseline"
    privileged = "privileged"


class PreviewPolicy(Model):
    ttl_hours: int = Field(72, ge=1)
    inactivity_hours: int = Field(24, ge=1)
    sleep_after_idle_hours: int | None = Field(None, ge=1)
    max_live_previews: int = Field(20, ge=1)
    opt_in_label: str | None = None
    opt_out_label: str | None = "no-preview"
    draft: DraftBehaviour = DraftBehaviour.skip
    forks: ForkBehaviour = ForkBehaviour.build_without_secrets
    cpu_quota: str = "4"
    memory_quota: str = "8Gi"
    pod_security: PodSecurityLevel = Field(
        PodSecurityLevel.restricted, description="Pod Security Standard the preview "
        "namespace enforces; lower than restricted needs pod_security_reason")
    pod_security_reason: str | None = Field(None, max_length=200)
    paths: list[PathGlob] = Field(
        default_factory=list, max_length=100,
        description="A PR gets a preview only when it changes a file under these globs")
    ignore_paths: list[PathGlob] = Field(
        default_factory=list, max_length=100,
        description="Changes to these files alone never make a preview (e.g. docs/, *.md)")
    image_wait_minutes: int = Field(
        30, ge=1, le=24 * 60, description="How long a preview waits for CI to push an "
        "application's image before it fails (and is undone)")
    migrations: MigrationLimits = Field(
        MigrationLimits(), description="Fail the preview when a deploy job's migration holds "
        "a lock that blocks writes, or rewrites a table, past these limits")

    @model_validator(mode="after")
    def _lowered_with_reason(self) -> PreviewPolicy:
        if self.pod_security != PodSecurityLevel.restricted and not self.pod_security_reason:
            raise ValueError(f"pod_security {self.pod_security.value} needs "
                             "pod_security_reason: say why previews may run with fewer "
                             "protections")
        return self


class Environment(Named):
    name: DnsName = "production"
    kind: EnvironmentKind = EnvironmentKind.production
    cluster: ClusterRef = ClusterRef()
    cloud_account: CloudAccount | None = None
    region: str = "eu-west-1"
    isolation: Isolation = Isolation.namespace

    @model_validator(mode="after")
    def _dedicated_cluster_is_named(self) -> Environment:
        if self.isolation == Isolation.cluster and self.cluster.name == "default":
            raise ValueError("isolation cluster needs environment.cluster.name: the tenant's "
                             "own cluster, not 'default' (the shared one)")
        return self


class ComposeSource(Model):
    """A Compose file of the repository as (part of) the description: read at every
    deploy from the pull request's head commit, so a PR that changes it previews the
    change. Its services become applications, databases and caches (domain/compose.py);
    the blueprint's own entries of the same name replace them."""

    path: str = Field(pattern=r"^[^\s]+$", max_length=300,
                      description="Path in the repository, e.g. docker-compose.yml")

    @field_validator("path")
    @classmethod
    def _in_the_repository(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError(f"compose path {value!r}: a path inside the repository, such as "
                             "docker-compose.yml or deploy/compose.yaml")
        return value


class Blueprint(Model):
    """One source environment and how its previews are made."""

    project: Project
    environment: Environment = Environment()
    compose: ComposeSource | None = None
    applications: list[Application] = Field(
        default_factory=list, validate_default=True,
        description="At least one, unless `compose` names a file")
    databases: list[Database] = Field(default_factory=list)
    caches: list[Cache] = Field(default_factory=list)
    jobs: list[Job] = Field(default_factory=list)
    charts: list[Chart] = Field(default_factory=list)
    network: Network = Network()
    variables: list[Variable] = Field(default_factory=list)
    policy: PreviewPolicy = PreviewPolicy()

    @field_validator("applications")
    @classmethod
    def _some_application(cls, value: list[Application],
                          info: ValidationInfo) -> list[Application]:
        if not value and info.data.get("compose") is None:
            raise ValueError("a blueprint needs at least one application (or a compose file "
                             "whose services become applications)")
        return value

    @model_validator(mode="after")
    def _references(self) -> Blueprint:
        everything: list[str] = []
        for collection in COLLECTIONS:
            names = [item.name for item in collection.items(self)]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {collection.label} names: {', '.join(dupes)}")
            everything += names
        # One name, one element: a job's variables, Secret and steps are known by its name.
        shared = sorted({n for n in everything if everything.count(n) > 1})
        if shared:
            raise ValueError(f"elements of different kinds share the name {shared[0]!r}")
        if self.compose is None:
            # With a Compose file, names may be its services': checked once merged with
            # it, at each deploy (domain.compose.merged_blueprint).
            _check_links_between(self)
        rooted = [a.name for a in self.applications if a.run_as_root]
        if rooted and self.policy.pod_security == PodSecurityLevel.restricted:
            raise ValueError(
                f"application {rooted[0]!r} opts out of runAsNonRoot, which the restricted "
                "pod security level refuses: set policy.pod_security to baseline (with "
                "policy.pod_security_reason), or make the image run as a non-root user")
        _check_aliases(self)
        if (
            self.environment.isolation == Isolation.account
            and self.environment.cloud_account is None
        ):
            raise ValueError("isolation account needs environment.cloud_account")
        return self


def _check_links_between(blueprint: Blueprint) -> None:
    """Every name an element gives (depends_on, a job's application, a variable's
    scope, a link in a value) is an element of the right kind."""
    elements = {item.name for kind in COLLECTIONS if kind.dependable
                for item in kind.items(blueprint)}
    apps = {a.name for a in blueprint.applications}
    for app in blueprint.applications:
        for dep in app.depends_on:
            if dep not in elements:
                kinds = " or ".join(c.indefinite for c in COLLECTIONS if c.dependable)
                raise ValueError(
                    f"application {app.name!r} depends on {dep!r}, which is not {kinds}"
                )
    connectable = {item.name for kind in COLLECTIONS if kind.url_variable
                   for item in kind.items(blueprint)}
    public = {a.name for a in blueprint.applications if a.public} | {
        c.name for c in blueprint.charts if c.public}
    for chart in blueprint.charts:
        for dep in chart.depends_on:
            if dep not in connectable:
                raise ValueError(f"chart {chart.name!r} depends on {dep!r}, which is not "
                                 "a database or a cache")
        for path, text in chart_strings(chart.values):
            check_links(path, text, urls=public, connections=connectable,
                        hosts={c.name for c in blueprint.charts if c.public},
                        where=f"chart {chart.name} value {path}")
    for job in blueprint.jobs:
        if job.application is not None and job.application not in apps:
            raise ValueError(f"job {job.name!r} runs the image of {job.application!r}, "
                             "which is not an application")
        for dep in job.depends_on:
            if dep not in connectable:
                raise ValueError(f"job {job.name!r} depends on {dep!r}, which is not a "
                                 "database or a cache")
    cycle = _find_cycle(
        {a.name: [d for d in a.depends_on if d in apps] for a in blueprint.applications}
    )
    if cycle:
        raise ValueError(f"applications depend on each other in a cycle: {' -> '.join(cycle)}")
    for var in blueprint.variables:
        if var.application is not None and var.application not in (
                apps | {j.name for j in blueprint.jobs}):
            raise ValueError(
                f"variable {var.key} names unknown application or job {var.application!r}"
            )
        if var.kind == VariableKind.value:
            check_links(var.key, var.value, urls=public, connections=connectable)


@dataclass(frozen=True)
class BlueprintCollection:
    """One kind of element a blueprint holds a list of, each element named.

    Declared once, in COLLECTIONS: the reference check above, the store (a table and a
    collection per kind, blueprint import and export) and the API (list, get, create,
    replace and delete routes) all derive from it. A new kind is a Named model, a list
    field of Blueprint, an entry here, and a migration creating its table with the
    layout every element table shares (store/migrations/README.md).
    """

    field: str  # the Blueprint attribute: "applications"
    model: type[Named]  # Application
    label: str  # one element, in messages: "application"
    path: str  # the API path segment: "applications"
    table: str  # the store's table: "applications"
    # Elements applications connect to: the planner makes one step per element, keyed
    # `<step_prefix>/<name>`, whose output `url` each application that uses it receives
    # as `<url_variable>_<NAME>` (and the first one as `<url_variable>`).
    step_prefix: str | None = None
    url_variable: str | None = None
    dependable: bool = True  # an application may name one in depends_on (not a job)
    required: bool = False  # a blueprint needs one (unless a Compose file gives them)

    def items(self, blueprint: Blueprint) -> list[Named]:
        items: list[Named] = getattr(blueprint, self.field)
        return items

    def step_key(self, name: str) -> str:
        return f"{self.step_prefix}/{name}"

    def used_by(self, blueprint: Blueprint, app: Application | Job) -> list[Named]:
        """The elements of this kind an application connects to, in blueprint order: only
        what it names in depends_on (an application that names no database gets no
        database's credentials)."""
        return [item for item in self.items(blueprint) if item.name in app.depends_on]

    @property
    def indefinite(self) -> str:
        """'an application', 'a database': one element, in a sentence."""
        return f"{'an' if self.label[0] in 'aeiou' else 'a'} {self.label}"


COLLECTIONS: tuple[BlueprintCollection, ...] = (
    BlueprintCollection(field="applications", model=Application, label="application",
                        path="applications", table="applications", required=True),
    BlueprintCollection(field="databases", model=Database, label="database",
                        path="databases", table="databases", step_prefix="database",
                        url_variable="DATABASE_URL"),
    BlueprintCollection(field="caches", model=Cache, label="cache", path="caches",
                        table="caches", step_prefix="cache", url_variable="REDIS_URL"),
    BlueprintCollection(field="jobs", model=Job, label="job", path="jobs", table="jobs",
                        step_prefix="job", dependable=False),
    BlueprintCollection(field="charts", model=Chart, label="chart", path="charts",
                        table="charts", step_prefix="chart"),
)


def connection_urls(blueprint: Blueprint, app: Application | Job) -> dict[str, tuple[str, str]]:
    """The connection URL variables an application gets → (step key, element name): for
    each element it names in depends_on, `<URL_VARIABLE>_<NAME>`, and the first one of
    each kind also as `<URL_VARIABLE>`."""
    variables: dict[str, tuple[str, str]] = {}
    for kind in COLLECTIONS:
        if kind.url_variable is None:
            continue
        for i, item in enumerate(kind.used_by(blueprint, app)):
            where = (kind.step_key(item.name), item.name)
            if i == 0:
                variables[kind.url_variable] = where
            variables[f"{kind.url_variable}_{item.name.upper().replace('-', '_')}"] = where
    return variables


def connections_by_application(blueprint: Blueprint) -> dict[str, list[str]]:
    """Application → the connection URL variables it gets, for the import's answer: a
    team sees which application holds which credentials."""
    return {app.name: sorted(connection_urls(blueprint, app)) for app in blueprint.applications}


def collection(field: str) -> BlueprintCollection:
    """The declaration of one kind of element, by its Blueprint field."""
    return next(kind for kind in COLLECTIONS if kind.field == field)


def _check_aliases(blueprint: Blueprint) -> None:
    """Resolve every application's variables in both targets, so an alias cycle is refused
    now rather than when a preview is planned. (An alias of a key set elsewhere — a
    built-in, a secret in the store — is fine here.)"""
    from domain.variables import AliasCycleError, Target, VariableError, resolve_variables

    for app in blueprint.applications:
        for target in Target:
            try:
                resolve_variables(blueprint.variables, target=target, application=app.name)
            except AliasCycleError as error:
                raise ValueError(f"{error} (application {app.name}, {target})") from None
            except VariableError:
                pass  # the alias's target comes from the store or the built-ins


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """Return one cycle of a dependency graph as a path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None
