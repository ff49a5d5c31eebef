"""The planner: a blueprint plus a pull request becomes a DAG of steps.

Each step is one resource: its spec says which activity makes it present and which
makes it absent. The planner is a list of rules; a new kind of resource adds a rule
here and an activity pair in activities/, and the workflow does not change.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from domain.blueprint import (
    COLLECTIONS,
    Application,
    Blueprint,
    Database,
    DatabaseMode,
    DataPolicy,
    EgressRule,
    Environment,
    ForkBehaviour,
    Isolation,
    Job,
    JobPhase,
    TlsMode,
    collection,
    connection_urls,
)
from domain.links import connection_of, with_urls
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
from domain.paths import touched
from domain.pull_request import PullRequest
from domain.resources import (
    ApplicationSpec,
    AuroraCloneSpec,
    AwsTarget,
    CacheSpec,
    CertificateSpec,
    ConfigMapSpec,
    ContainerDatabaseSpec,
    DnsRecordsSpec,
    ImageSpec,
    IngressHost,
    IngressSpec,
    JobSpec,
    NamespaceSpec,
    PostgresCloneSpec,
    PreviewSlotSpec,
    RdsCloneSpec,
    ResourceSpec,
    SecretSpec,
    SweepTargets,
    UpstreamRef,
    UrlCheck,
    VpcSpec,
    WatchedDatabase,
)
from domain.secrets import SealedValue
from domain.source import SourceEnvironment
from domain.systems import task_queue_for
from domain.variables import SecretVariable, Target, resolve_variables


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


class PlanRequest(BaseModel):
    """The planning activity's input; its deployment facts come from the worker."""

    source: SourceEnvironment
    pull_request: PullRequest
    changed_files: list[str] | None = Field(
        None, description="Files the PR changes, when the blueprint filters by path")


class _Context(BaseModel):
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


Rule = Callable[[_Context], list[Step]]


def _namespace(ctx: _Context) -> list[Step]:
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


def _network(ctx: _Context) -> list[Step]:
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


def _database(ctx: _Context, db: Database) -> Step:
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


def _golden_dump(ctx: _Context, db: Database) -> str | None:
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


def _databases(ctx: _Context) -> list[Step]:
    return [_database(ctx, db) for db in ctx.blueprint.databases]


def _caches(ctx: _Context) -> list[Step]:
    kind = collection("caches")
    return [ctx.step(kind.step_key(cache.name), CacheSpec(
        owner=ctx.owner, cluster=ctx.blueprint.environment.cluster.name,
        namespace=ctx.namespace, name=object_name(f"cache-{cache.name}"), image=cache.image,
        memory=cache.memory, cpu=cache.cpu,
    ), f"Redis cache {cache.name}", ("namespace",)) for cache in ctx.blueprint.caches]


def _connections(ctx: _Context, app: Application | Job,
                 ) -> tuple[dict[str, UpstreamRef], tuple[str, ...]]:
    """Connection URLs of what an application names in depends_on (databases, caches, any
    kind that COLLECTIONS declares with a url_variable), as secret values from those steps."""
    upstream = {variable: UpstreamRef(step=step, output="url")
                for variable, (step, _) in connection_urls(ctx.blueprint, app).items()}
    return upstream, tuple(dict.fromkeys(ref.step for ref in upstream.values()))


def _builtins(ctx: _Context, app: Application | Job) -> dict[str, str]:
    builtins = {
        "PREVIEW": "true",
        "PR_NUMBER": str(ctx.pr.number),
        "HEAD_SHA": ctx.pr.head_sha,
        "BRANCH": ctx.pr.branch,
        "ENVIRONMENT_ID": ctx.env_id,
    }
    for name, url in ctx.urls.items():
        builtins[f"PREVIEW_URL_{name.upper().replace('-', '_')}"] = url
    if app.name in ctx.urls:
        builtins["PREVIEW_URL"] = ctx.urls[app.name]
    return builtins


def _settings(ctx: _Context, element: Application | Job,
              outputs_of: tuple[str, ...] = ()) -> list[Step]:
    """The ConfigMap and the Secret an application's or a job's containers read their
    variables from: plain values in the first, sealed ones and connection URLs in the
    second (with every secret output of the steps `outputs_of`)."""
    bp = ctx.blueprint
    cluster = bp.environment.cluster.name
    resolved = resolve_variables(
        bp.variables,
        ctx.secrets,
        target=Target.preview,
        application=element.name,
        builtins=_builtins(ctx, element),
    )
    plain = {k: v for k, v in resolved.items() if isinstance(v, str)}
    sealed: dict[str, SealedValue] = {
        k: v for k, v in resolved.items() if isinstance(v, SealedValue)
    }
    if ctx.pr.is_fork and bp.policy.forks != ForkBehaviour.allow_secrets:
        sealed = {}  # forks get no secrets unless the project allows it

    upstream, connected = _connections(ctx, element)
    for key, value in list(plain.items()):
        if (name := connection_of(value)) is not None:
            # A connection URL holds a password: from the Secret, never the ConfigMap.
            del plain[key]
            kind = next(k for k in COLLECTIONS if k.url_variable
                        and name in {item.name for item in k.items(bp)})
            upstream[key] = UpstreamRef(step=kind.step_key(name), output="url")
            connected = tuple(dict.fromkeys((*connected, kind.step_key(name))))
        else:
            plain[key] = with_urls(value, ctx.urls)

    return [
        ctx.step(f"config/{element.name}", ConfigMapSpec(
            owner=ctx.owner, cluster=cluster, namespace=ctx.namespace,
            name=object_name(f"{element.name}-config"), data=plain,
        ), f"variables of {element.name}", ("namespace",)),
        ctx.step(f"secret/{element.name}", SecretSpec(
            owner=ctx.owner, cluster=cluster, namespace=ctx.namespace,
            name=object_name(f"{element.name}-secrets"), data=sealed, upstream=upstream,
            outputs_of=list(outputs_of),
        ), f"secrets of {element.name}", ("namespace", *connected, *outputs_of)),
    ]


def _jobs_before(bp: Blueprint) -> tuple[str, ...]:
    """The steps of the jobs every application waits for (and whose outputs it gets)."""
    return tuple(f"job/{j.name}" for j in bp.jobs if j.when != JobPhase.destroy)


def _application(ctx: _Context, app: Application) -> list[Step]:
    bp = ctx.blueprint
    cluster = bp.environment.cluster.name
    config = object_name(f"{app.name}-config")
    secret = object_name(f"{app.name}-secrets")
    jobs = _jobs_before(bp)
    steps = _settings(ctx, app, jobs)
    app_deps = [f"app/{d}" for d in app.depends_on if d in {a.name for a in bp.applications}]
    app_deps += jobs
    tag, built_from = _image_tag(ctx, app)
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


def _url_check(app: Application, ctx: _Context) -> UrlCheck | None:
    """Its health path through the route when it has one, else `/`. Not for a tenant's
    own cluster: its worker reaches that cluster's ingress, not the one the setting
    names (the check's address is one setting of the worker that plans)."""
    options = ctx.options
    if not options.url_check or ctx.blueprint.environment.isolation == Isolation.cluster:
        return None
    health = app.health_check
    return UrlCheck(path=health.path if health else "/", health=health is not None,
                    connect_to=options.url_connect_to)


def _image_tag(ctx: _Context, app: Application) -> tuple[str, str]:
    """The tag an application runs, and where it comes from in words: the PR's commit,
    or the base branch's image when the PR touches none of the application's paths."""
    pr = ctx.pr
    if app.paths and ctx.changed_files is not None and not touched(ctx.changed_files,
                                                                    app.paths):
        known = {"base_sha": pr.base_sha, "base_branch": pr.base_branch}
        try:
            tag = app.base_image_tag.format_map({k: v for k, v in known.items() if v})
        except KeyError:
            tag = ""  # the event did not say (older deliveries): build from the PR
        if tag:
            return tag, f"from the base image {tag[:12]} (the PR changes none of its paths)"
    return pr.head_sha, f"at {pr.head_sha[:7]} (the PR's code)"


def _applications(ctx: _Context) -> list[Step]:
    return [step for app in ctx.blueprint.applications for step in _application(ctx, app)]


def _jobs(ctx: _Context) -> list[Step]:
    """Deploy jobs one after another in blueprint order (two migrations at once would
    fight, and each one's report would count the other's work), then first_deploy jobs
    (a seed needs the migrated schema); destroy jobs: _destroy_jobs_first."""
    steps: list[Step] = []
    bp = ctx.blueprint
    apps = {a.name: a for a in bp.applications}
    deploys = [f"job/{j.name}" for j in bp.jobs if j.when == JobPhase.deploy]
    for job in bp.jobs:
        steps += _settings(ctx, job)
        deps = [f"config/{job.name}", f"secret/{job.name}"]
        key = f"job/{job.name}"
        if job.when == JobPhase.deploy:
            deps += deploys[:deploys.index(key)][-1:]
        elif job.when == JobPhase.first_deploy:
            deps += deploys
        run_as_non_root = True
        if job.application is not None:
            app = apps[job.application]
            tag, _ = _image_tag(ctx, app)
            image = f"{app.image}:{tag}"
            run_as_non_root = app.run_as_root is None
            if ctx.options.check_images:
                deps.append(f"image/{app.name}")
        else:
            assert job.image is not None  # the model holds one of the two
            image = job.image
        # What the migration report watches: the deploy job's databases on the preview
        # server (a container, RDS or Aurora database is not watched).
        watch = [WatchedDatabase(name=db.name, database=pg_identifier(ctx.env_id, db.name))
                 for db in bp.databases if job.when == JobPhase.deploy
                 and db.name in job.depends_on and db.mode == DatabaseMode.shared]
        steps.append(ctx.step(key, JobSpec(
            owner=ctx.owner, cluster=bp.environment.cluster.name, namespace=ctx.namespace,
            name=job.name, when=job.when, image=image, command=job.command,
            resources=job.resources, config_map=object_name(f"{job.name}-config"),
            secret=object_name(f"{job.name}-secrets"), timeout_seconds=job.timeout_minutes * 60,
            run_as_non_root=run_as_non_root, watch=watch, limits=bp.policy.migrations,
        ), f"{job.when.value.replace('_', ' ')} job {job.name} ({image.rsplit('/', 1)[-1]})",
            tuple(deps)))
    return steps


def _destroy_jobs_first(steps: list[Step]) -> list[Step]:
    """A destroy job depends on every other step, so teardown (dependents first) runs it
    before anything is removed."""
    def is_destroy_job(step: Step) -> bool:
        return isinstance(step.spec, JobSpec) and step.spec.when == JobPhase.destroy

    others = tuple(s.key for s in steps if not is_destroy_job(s))
    return [s.model_copy(update={"depends_on": tuple(dict.fromkeys((*s.depends_on, *others)))})
            if is_destroy_job(s) else s for s in steps]


def _public_hosts(ctx: _Context) -> list[str]:
    bp = ctx.blueprint
    return [
        hostname(a.name, ctx.pr.number, ctx.base_domain) for a in bp.applications if a.public
    ]


def _tls(ctx: _Context) -> list[Step]:
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


def _dns(ctx: _Context) -> list[Step]:
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


def _slot(ctx: _Context) -> list[Step]:
    spec = PreviewSlotSpec(owner=ctx.owner, repository=ctx.pr.repository.lower(),
                           max_live=ctx.blueprint.policy.max_live_previews)
    return [ctx.step("slot", spec, f"preview slot of {ctx.pr.repository}")]


def _after_slot(steps: list[Step]) -> list[Step]:
    """Everything waits for the slot, so a refused quota builds nothing and it is freed last."""
    return [s if s.key == "slot" or s.depends_on
            else s.model_copy(update={"depends_on": ("slot",)}) for s in steps]


RULES: Sequence[Rule] = (_slot, _namespace, _network, _databases, _caches, _jobs, _applications,
                         _tls, _dns)


def plan_preview(
    blueprint: Blueprint,
    pr: PullRequest,
    secrets: Sequence[SecretVariable] = (),
    options: PlanOptions | None = None,
    changed_files: Sequence[str] | None = None,
) -> Plan:
    """The steps that make a preview of `blueprint` for `pr`, in a valid order."""
    options = options or PlanOptions()
    env_id = environment_id(pr.repository, pr.number)
    domain = blueprint.network.base_domain or options.base_domain
    # Served over TLS whenever the blueprint asks for certificates.
    scheme = "http" if blueprint.network.tls == TlsMode.none else "https"
    port = f":{options.url_port}" if options.url_port else ""
    urls = {
        a.name: f"{scheme}://{hostname(a.name, pr.number, domain)}{port}"
        for a in blueprint.applications
        if a.public
    }
    ctx = _Context(
        blueprint=blueprint,
        secrets=tuple(secrets),
        pr=pr,
        options=options,
        env_id=env_id,
        owner=Ownership(environment=env_id, repository=pr.repository, pr_number=pr.number),
        namespace=env_id,
        urls=urls,
        changed_files=None if changed_files is None else tuple(changed_files),
    )
    steps = _destroy_jobs_first(_after_slot([step for rule in RULES for step in rule(ctx)]))
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
