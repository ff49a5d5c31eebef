"""The planner: a blueprint plus a pull request becomes a DAG of steps.

Each step is one resource: its spec says which activity makes it present and which
makes it absent. The planner is a list of rules; a new kind of resource adds a rule
here and an activity pair in activities/, and the workflow does not change.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence

from pydantic import BaseModel, Field

from domain.blueprint import (
    Application,
    Blueprint,
    Database,
    DatabaseMode,
    DataPolicy,
    Environment,
    Isolation,
    TlsMode,
    collection,
)
from domain.feedback import RepositoryFolder
from domain.masking import golden_dump_uri
from domain.naming import (
    Ownership,
    environment_id,
    hostname,
    object_name,
    pg_identifier,
    rds_identifier,
    stable_hash,
)
from domain.plan_elements import (
    chart_steps,
    destroy_jobs_first,
    image_tag,
    job_steps,
    jobs_before,
    settings_steps,
    url_check,
)
from domain.pull_request import PullRequest
from domain.resources import (
    ApplicationSpec,
    AuroraCloneSpec,
    AwsTarget,
    CacheSpec,
    CertificateSpec,
    ContainerDatabaseSpec,
    DnsRecordsSpec,
    ImageSpec,
    IngressHost,
    IngressSpec,
    NamespaceSpec,
    PostgresCloneSpec,
    PreviewSlotSpec,
    RdsCloneSpec,
    ResourceSpec,
    SweepTargets,
    UrlCheck,
    VpcSpec,
)
from domain.source import SourceEnvironment
from domain.steps import Plan, PlanContext, PlanError, PlanOptions, Rule, Step, aws_target
from domain.variables import SecretVariable

# What other modules take from here (the planner's vocabulary lives in domain/steps.py).
__all__ = ["Plan", "PlanError", "PlanOptions", "PlanRequest", "Step", "aws_target",
           "plan_preview", "sweep_targets", "topological", "vpc_cidr"]


class PlanRequest(BaseModel):
    """The planning activity's input; its deployment facts come from the worker."""

    source: SourceEnvironment
    pull_request: PullRequest
    changed_files: list[str] | None = Field(
        None, description="Files the PR changes, when the blueprint filters by path")
    compose: str | None = Field(
        None, description="The blueprint's Compose file at the PR's head commit, when it "
                          "names one (merged in before planning)")
    chart_folders: dict[str, RepositoryFolder] = Field(
        default_factory=dict, description="Chart name → its folder of the PR's repository "
                                          "at the head commit, for charts given by `path`")


def sweep_targets(environments: Iterable[Environment]) -> SweepTargets:
    """Every cluster and AWS target previews of these source environments may leave
    resources in, each once, in first-seen order: what the orphan sweeper looks at."""
    clusters: dict[str, None] = {}
    dedicated: dict[str, None] = {}
    targets: dict[AwsTarget, None] = {}
    for env in environments:
        if env.isolation == Isolation.cluster:
            dedicated.setdefault(env.cluster.name)
        else:
            clusters.setdefault(env.cluster.name)
        targets.setdefault(aws_target(env))
    return SweepTargets(clusters=list(clusters), dedicated_clusters=list(dedicated),
                        aws_targets=list(targets))



def _namespace(ctx: PlanContext) -> list[Step]:
    policy = ctx.blueprint.policy
    spec = NamespaceSpec(
        owner=ctx.owner,
        cluster=ctx.blueprint.environment.cluster.name,
        name=ctx.namespace,
        cpu_quota=policy.cpu_quota,
        memory_quota=policy.memory_quota,
        pod_security=policy.pod_security.value,
        ingress_namespace=ctx.options.ingress_namespace,
        ingress_cidrs=list(ctx.options.ingress_cidrs),
        dns_cidrs=list(ctx.options.dns_cidrs),
        egress=[*ctx.options.egress, *ctx.blueprint.network.egress],
    )
    summary = f"namespace {ctx.namespace}"
    if policy.pod_security_reason:
        summary += f", pod security {policy.pod_security.value}: {policy.pod_security_reason}"
    return [ctx.step("namespace", spec, summary)]


def _needs_vpc(bp: Blueprint) -> bool:
    return bp.environment.isolation in (Isolation.vpc, Isolation.account) and any(
        d.mode in (DatabaseMode.rds, DatabaseMode.aurora) for d in bp.databases
    )


def _network(ctx: PlanContext) -> list[Step]:
    if not _needs_vpc(ctx.blueprint):
        return []
    net = ctx.blueprint.network
    cidr = vpc_cidr(net.vpc_cidr_pool, ctx.env_id)
    spec = VpcSpec(
        owner=ctx.owner, target=ctx.aws, name=ctx.env_id, cidr=cidr, peer_vpc_id=net.cluster_vpc_id
    )
    return [ctx.step("vpc", spec, f"dedicated VPC {cidr}")]


def vpc_cidr(pool: str, env_id: str, prefix: int = 22) -> str:
    """A /22 of the pool chosen by the environment's hash: previews peered to one cluster
    VPC need distinct ranges. Two previews that draw the same block are refused by the
    network activity (the route exists, owned by the other), never silently merged."""
    network = ipaddress.ip_network(pool)
    blocks = 2 ** (prefix - network.prefixlen)
    index = int(stable_hash(env_id, 8), 16) % blocks
    start = int(network.network_address) + index * 2 ** (32 - prefix)
    return str(ipaddress.ip_network((start, prefix)))


def _database(ctx: PlanContext, db: Database) -> Step:
    key = collection("databases").step_key(db.name)
    vpc_step = "vpc" if _needs_vpc(ctx.blueprint) else None
    deps: tuple[str, ...] = (vpc_step,) if vpc_step else ()
    spec: ResourceSpec
    if db.mode == DatabaseMode.shared:
        spec = PostgresCloneSpec(
            owner=ctx.owner,
            database=pg_identifier(ctx.env_id, db.name),
            role=pg_identifier(ctx.env_id, db.name, "app"),
            source=db.source,
            data_policy=db.data_policy,
            seed_sql=db.seed_sql,
            masking=db.masking,
        )
        summary = f"PostgreSQL clone of {db.source or 'an empty database'}"
    elif db.mode == DatabaseMode.rds:
        spec = RdsCloneSpec(
            owner=ctx.owner,
            target=ctx.aws,
            identifier=rds_identifier(ctx.env_id, db.name),
            source_instance=db.source,
            snapshot_max_age_hours=db.snapshot_max_age_hours,
            instance_class=db.instance_class,
            vpc_step=vpc_step,
        )
        summary = f"RDS restore of {db.source}"
    elif db.mode == DatabaseMode.aurora:
        spec = AuroraCloneSpec(
            owner=ctx.owner,
            target=ctx.aws,
            identifier=rds_identifier(ctx.env_id, db.name),
            source_cluster=db.source,
            instance_class=db.instance_class,
            vpc_step=vpc_step,
        )
        summary = f"Aurora copy-on-write clone of {db.source}"
    else:
        spec = ContainerDatabaseSpec(
            owner=ctx.owner,
            cluster=ctx.blueprint.environment.cluster.name,
            namespace=ctx.namespace,
            name=object_name(f"db-{db.name}"),
            database=pg_identifier(db.name),
            storage_class=ctx.options.storage_class,
            data_policy=db.data_policy,
            seed_sql=db.seed_sql,
            golden_dump_s3_uri=_golden_dump(ctx, db),
            masking=db.masking if db.data_policy == DataPolicy.masked_clone else [],
        )
        deps = ("namespace",)
        summary = f"container PostgreSQL {db.name}"
    return ctx.step(key, spec, summary, deps)


def _golden_dump(ctx: PlanContext, db: Database) -> str | None:
    """A cloned container database restores its source's published golden dump."""
    if db.data_policy not in (DataPolicy.clone, DataPolicy.masked_clone):
        return None
    if not ctx.options.golden_dump_bucket:
        raise PlanError(
            f"database {db.name!r}: a container database with data_policy "
            f"{db.data_policy.value} restores the golden copy of {db.source!r} from S3, "
            "and no bucket is configured: set PREVIEW_GOLDEN_DUMP_BUCKET (and publish the "
            "golden copy there: GoldenRefreshRequest.dump_bucket)")
    return golden_dump_uri(ctx.options.golden_dump_bucket, db.source)


def _databases(ctx: PlanContext) -> list[Step]:
    return [_database(ctx, db) for db in ctx.blueprint.databases]


def _caches(ctx: PlanContext) -> list[Step]:
    kind = collection("caches")
    return [ctx.step(kind.step_key(cache.name), CacheSpec(
        owner=ctx.owner, cluster=ctx.blueprint.environment.cluster.name,
        namespace=ctx.namespace, name=object_name(f"cache-{cache.name}"), image=cache.image,
        memory=cache.memory, cpu=cache.cpu,
    ), f"Redis cache {cache.name}", ("namespace",)) for cache in ctx.blueprint.caches]


def _application(ctx: PlanContext, app: Application) -> list[Step]:
    bp = ctx.blueprint
    cluster = bp.environment.cluster.name
    config = object_name(f"{app.name}-config")
    secret = object_name(f"{app.name}-secrets")
    jobs = jobs_before(bp)
    steps = settings_steps(ctx, app, jobs)
    app_deps = [f"app/{d}" for d in app.depends_on if d in {a.name for a in bp.applications}]
    app_deps += [f"chart/{d}" for d in app.depends_on if d in {c.name for c in bp.charts}]
    app_deps += jobs
    tag, built_from = image_tag(ctx, app)
    if ctx.options.check_images:
        steps.append(ctx.step(f"image/{app.name}", ImageSpec(
            owner=ctx.owner, repository=app.image, tag=tag,
        ), f"image {app.image}:{tag[:12]}", wait_seconds=bp.policy.image_wait_minutes * 60))
        app_deps.append(f"image/{app.name}")
    steps.append(ctx.step(f"app/{app.name}", ApplicationSpec(
        owner=ctx.owner,
        cluster=cluster,
        namespace=ctx.namespace,
        name=app.name,
        image=f"{app.image}:{tag}",
        ports=app.ports,
        replicas=app.replicas,
        resources=app.resources,
        health_check=app.health_check,
        command=app.command,
        config_map=config,
        secret=secret,
        run_as_non_root=app.run_as_root is None,
    ), f"application {app.name} {built_from}" + (
        f", may run as root: {app.run_as_root.reason}" if app.run_as_root else ""),
        (f"config/{app.name}", f"secret/{app.name}", *app_deps)))
    if app.public:
        hosts = [hostname(app.name, ctx.pr.number, ctx.base_domain)]
        tls = None if bp.network.tls == TlsMode.none else object_name("tls")
        steps.append(ctx.step(f"ingress/{app.name}", IngressSpec(
            owner=ctx.owner,
            cluster=cluster,
            namespace=ctx.namespace,
            name=app.name,
            tls_secret=tls,
            basic_auth_secret=object_name("basic-auth") if bp.network.basic_auth else None,
            url_port=ctx.options.url_port,
            wait_for_address=ctx.options.ingress_wait_for_address,
            url_check=_url_check(app, ctx),
            hosts=[IngressHost(host=h, service=app.name, port=app.ports[0]) for h in hosts],
        ), f"route {hosts[0]}", (f"app/{app.name}",)))
    return steps


def _url_check(app: Application, ctx: PlanContext) -> UrlCheck | None:
    """Its health path through the route when it has one, else `/`."""
    health = app.health_check
    return url_check(ctx, health.path if health else "/", health is not None)


def _applications(ctx: PlanContext) -> list[Step]:
    return [step for app in ctx.blueprint.applications for step in _application(ctx, app)]


def public_elements(bp: Blueprint) -> list[str]:
    """What has a preview URL: public applications, and public charts (their Ingress)."""
    return [a.name for a in bp.applications if a.public] + [
        c.name for c in bp.charts if c.public]


def _public_hosts(ctx: PlanContext) -> list[str]:
    return [hostname(name, ctx.pr.number, ctx.base_domain)
            for name in public_elements(ctx.blueprint)]


def _tls(ctx: PlanContext) -> list[Step]:
    net = ctx.blueprint.network
    if net.tls == TlsMode.none or not _public_hosts(ctx):
        return []
    spec = CertificateSpec(
        owner=ctx.owner,
        target=ctx.aws,
        hosts=_public_hosts(ctx),
        zone_id=net.hosted_zone_id,
        wildcard_certificate_arn=net.wildcard_certificate_arn
        if net.tls == TlsMode.wildcard
        else None,
    )
    return [ctx.step("certificate", spec, "TLS certificate")]


def _dns(ctx: PlanContext) -> list[Step]:
    net = ctx.blueprint.network
    if not net.hosted_zone_id or not _public_hosts(ctx):
        return []
    spec = DnsRecordsSpec(
        owner=ctx.owner,
        target=ctx.aws,
        zone_id=net.hosted_zone_id,
        hosts=_public_hosts(ctx),
        points_to=ctx.options.ingress_hostname,
    )
    return [ctx.step("dns", spec, "DNS records")]


def _slot(ctx: PlanContext) -> list[Step]:
    spec = PreviewSlotSpec(owner=ctx.owner, repository=ctx.pr.repository.lower(),
                           max_live=ctx.blueprint.policy.max_live_previews)
    return [ctx.step("slot", spec, f"preview slot of {ctx.pr.repository}")]


def _after_slot(steps: list[Step]) -> list[Step]:
    """Everything waits for the slot, so a refused quota builds nothing and it is freed last."""
    return [s if s.key == "slot" or s.depends_on
            else s.model_copy(update={"depends_on": ("slot",)}) for s in steps]


RULES: Sequence[Rule] = (_slot, _namespace, _network, _databases, _caches, job_steps, chart_steps,
                         _applications, _tls, _dns)


def plan_preview(
    blueprint: Blueprint,
    pr: PullRequest,
    secrets: Sequence[SecretVariable] = (),
    options: PlanOptions | None = None,
    changed_files: Sequence[str] | None = None,
    chart_folders: Mapping[str, RepositoryFolder] | None = None,
) -> Plan:
    """The steps that make a preview of `blueprint` for `pr`, in a valid order;
    `chart_folders`: each chart of the PR's repository, read at its head commit."""
    options = options or PlanOptions()
    env_id = environment_id(pr.repository, pr.number)
    domain = blueprint.network.base_domain or options.base_domain
    # Served over TLS whenever the blueprint asks for certificates.
    scheme = "http" if blueprint.network.tls == TlsMode.none else "https"
    port = f":{options.url_port}" if options.url_port else ""
    urls = {name: f"{scheme}://{hostname(name, pr.number, domain)}{port}"
            for name in public_elements(blueprint)}
    ctx = PlanContext(
        blueprint=blueprint,
        secrets=tuple(secrets),
        pr=pr,
        options=options,
        env_id=env_id,
        owner=Ownership(environment=env_id, repository=pr.repository, pr_number=pr.number),
        namespace=env_id,
        urls=urls,
        changed_files=None if changed_files is None else tuple(changed_files),
        chart_folders=dict(chart_folders or {}),
    )
    steps = destroy_jobs_first(_after_slot([step for rule in RULES for step in rule(ctx)]))
    return Plan(environment_id=env_id, steps=tuple(topological(steps)), urls=urls)


def topological(steps: Sequence[Step]) -> list[Step]:
    """Steps ordered so each comes after its dependencies; stable for equal inputs."""
    by_key: dict[str, Step] = {}
    for step in steps:
        if step.key in by_key:
            raise PlanError(f"two steps share the key {step.key!r}")
        by_key[step.key] = step
    for step in steps:
        for dep in step.depends_on:
            if dep not in by_key:
                raise PlanError(f"step {step.key!r} depends on unknown step {dep!r}")
    ordered: list[Step] = []
    placed: set[str] = set()
    remaining = list(steps)
    while remaining:
        ready = [s for s in remaining if all(d in placed for d in s.depends_on)]
        if not ready:
            raise PlanError(
                "steps depend on each other in a cycle: " + ", ".join(s.key for s in remaining)
            )
        for step in ready:
            ordered.append(step)
            placed.add(step.key)
        remaining = [s for s in remaining if s.key not in placed]
    return ordered
