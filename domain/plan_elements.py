"""Planner rules of what runs code in the preview's namespace besides its applications,
and what applications share with them: the variables of an application or a job (its
ConfigMap and Secret), the image tag a PR runs, lifecycle jobs (domain.blueprint.Job)
and Helm charts (domain.blueprint.Chart). Pure, like the rest of the planner."""

from __future__ import annotations

from typing import Any

from domain.blueprint import (
    COLLECTIONS,
    Application,
    Blueprint,
    DatabaseMode,
    ForkBehaviour,
    Isolation,
    connection_urls,
)
from domain.charts import Chart, chart_source
from domain.feedback import RepositoryFolder
from domain.jobs import Job, JobPhase
from domain.links import connection_of, with_urls
from domain.naming import hostname, object_name, pg_identifier
from domain.paths import touched
from domain.resources import (
    ChartSpec,
    ConfigMapSpec,
    JobSpec,
    SecretSpec,
    UpstreamRef,
    UrlCheck,
    WatchedDatabase,
)
from domain.secrets import SealedValue
from domain.steps import PlanContext, PlanError, Step
from domain.variables import Target, resolve_variables


def connection_variables(ctx: PlanContext, app: Application | Job,
                 ) -> tuple[dict[str, UpstreamRef], tuple[str, ...]]:
    """Connection URLs of what an application names in depends_on (databases, caches, any
    kind that COLLECTIONS declares with a url_variable), as secret values from those steps."""
    upstream = {variable: UpstreamRef(step=step, output="url")
                for variable, (step, _) in connection_urls(ctx.blueprint, app).items()}
    return upstream, tuple(dict.fromkeys(ref.step for ref in upstream.values()))


def builtins(ctx: PlanContext, app: Application | Job) -> dict[str, str]:
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


def settings_steps(ctx: PlanContext, element: Application | Job,
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
        builtins=builtins(ctx, element),
    )
    plain = {k: v for k, v in resolved.items() if isinstance(v, str)}
    sealed: dict[str, SealedValue] = {
        k: v for k, v in resolved.items() if isinstance(v, SealedValue)
    }
    if ctx.pr.is_fork and bp.policy.forks != ForkBehaviour.allow_secrets:
        sealed = {}  # forks get no secrets unless the project allows it

    upstream, connected = connection_variables(ctx, element)
    for key, value in list(plain.items()):
        if (name := connection_of(value)) is not None:
            # A connection URL holds a password: from the Secret, never the ConfigMap.
            del plain[key]
            upstream[key] = UpstreamRef(step=connection_step(bp, name), output="url")
            connected = tuple(dict.fromkeys((*connected, connection_step(bp, name))))
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


def jobs_before(bp: Blueprint) -> tuple[str, ...]:
    """The steps of the jobs every application waits for (and whose outputs it gets)."""
    return tuple(f"job/{j.name}" for j in bp.jobs if j.when != JobPhase.destroy)


def image_tag(ctx: PlanContext, app: Application) -> tuple[str, str]:
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


def job_steps(ctx: PlanContext) -> list[Step]:
    """Deploy jobs one after another in blueprint order (two migrations at once would
    fight, and each one's report would count the other's work), then first_deploy jobs
    (a seed needs the migrated schema); destroy jobs: destroy_jobs_first."""
    steps: list[Step] = []
    bp = ctx.blueprint
    apps = {a.name: a for a in bp.applications}
    deploys = [f"job/{j.name}" for j in bp.jobs if j.when == JobPhase.deploy]
    for job in bp.jobs:
        steps += settings_steps(ctx, job)
        deps = [f"config/{job.name}", f"secret/{job.name}"]
        key = f"job/{job.name}"
        if job.when == JobPhase.deploy:
            deps += deploys[:deploys.index(key)][-1:]
        elif job.when == JobPhase.first_deploy:
            deps += deploys
        run_as_non_root = True
        if job.application is not None:
            app = apps[job.application]
            tag, _ = image_tag(ctx, app)
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


def chart_steps(ctx: PlanContext) -> list[Step]:
    """One step per Helm chart, its values final: links resolved, each connection URL
    replaced by the name of a Secret the step makes (key `url`), the PR's commit set
    where the chart takes its image tag."""
    bp = ctx.blueprint
    more = {"hosts": {c.name: hostname(c.name, ctx.pr.number, ctx.base_domain)
                      for c in bp.charts if c.public},
            "pr": {"number": str(ctx.pr.number), "head_sha": ctx.pr.head_sha}}
    steps = []
    for chart in bp.charts:
        connections: dict[str, UpstreamRef] = {}

        def resolve(value: Any, chart: Chart = chart,
                    connections: dict[str, UpstreamRef] = connections) -> Any:
            if isinstance(value, dict):
                return {k: resolve(v) for k, v in value.items()}
            if isinstance(value, list):
                return [resolve(v) for v in value]
            if not isinstance(value, str):
                return value
            if (name := connection_of(value)) is not None:
                secret = object_name(f"chart-{chart.name}-{name}")
                connections[secret] = UpstreamRef(step=connection_step(bp, name), output="url")
                return secret
            return with_urls(value, ctx.urls, more)

        values = resolve(chart.values)
        for path in chart.image_tag_values:
            set_value(values, path, ctx.pr.head_sha)
        uses = tuple(connection_step(bp, name) for name in chart.depends_on)
        steps.append(ctx.step(f"chart/{chart.name}", ChartSpec(
            owner=ctx.owner, cluster=bp.environment.cluster.name, namespace=ctx.namespace,
            name=chart.name, chart=chart.chart, folder=chart_folder(ctx, chart),
            repository=chart.repository,
            version=chart.version, values=values, connections=connections,
            rollout_timeout_seconds=chart.rollout_timeout_seconds,
            url=ctx.urls.get(chart.name), url_check=url_check(ctx) if chart.public else None,
        ), f"chart {chart_source(chart.path, chart.chart, chart.version)}",
            tuple(dict.fromkeys(("namespace", *uses, *(r.step for r in connections.values()))))))
    return steps


# Every chart folder is in the plan, the steps' inputs and the ledger: kept well below
# Temporal's 2 MB per payload, whatever else the plan holds.
MAX_CHART_FOLDERS_BYTES = 384 << 10


def chart_folder(ctx: PlanContext, chart: Chart) -> RepositoryFolder | None:
    """The folder of a chart in the PR's repository, read at the head commit before
    planning (the workflow reads every `path` of the blueprint's charts)."""
    if chart.path is None:
        return None
    total = sum(f.packed_size for f in ctx.chart_folders.values())
    if total > MAX_CHART_FOLDERS_BYTES:  # each is capped when read; together, here
        raise PlanError(f"the blueprint's chart folders pack to {total} bytes together, past "
                        f"the {MAX_CHART_FOLDERS_BYTES} a preview carries in its history: "
                        "publish some to a chart registry and name them by reference")
    folder = ctx.chart_folders.get(chart.name)
    if folder is None or folder.path != chart.path:
        raise PlanError(f"chart {chart.name}: its folder {chart.path} was not read from the "
                        "repository")
    return folder


def connection_step(bp: Blueprint, name: str) -> str:
    """The step of the database or cache `name` (the blueprint's checks found it)."""
    kind = next(k for k in COLLECTIONS if k.url_variable
                and name in {item.name for item in k.items(bp)})
    return kind.step_key(name)


def set_value(values: dict[str, Any], path: str, value: str) -> None:
    """values[a][b] = value for path "a.b", making the maps on the way."""
    *parents, last = path.split(".")
    for key in parents:
        child = values.get(key)
        if not isinstance(child, dict):
            child = values[key] = {}
        values = child
    values[last] = value


def destroy_jobs_first(steps: list[Step]) -> list[Step]:
    """A destroy job depends on every other step, so teardown (dependents first) runs it
    before anything is removed."""
    def is_destroy_job(step: Step) -> bool:
        return isinstance(step.spec, JobSpec) and step.spec.when == JobPhase.destroy

    others = tuple(s.key for s in steps if not is_destroy_job(s))
    return [s.model_copy(update={"depends_on": tuple(dict.fromkeys((*s.depends_on, *others)))})
            if is_destroy_job(s) else s for s in steps]


def url_check(ctx: PlanContext, path: str = "/", health: bool = False) -> UrlCheck | None:
    """How a route is shown to answer from its pods, where the worker checks routes. Not
    for a tenant with a cluster of its own: its worker reaches that cluster's ingress,
    not the one the setting names (the check's address is one setting of the worker
    that plans)."""
    options = ctx.options
    if not options.url_check or ctx.blueprint.environment.isolation == Isolation.cluster:
        return None
    return UrlCheck(path=path, health=health, connect_to=options.url_connect_to)
