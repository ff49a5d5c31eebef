"""The planner over blueprints of several shapes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from domain.blueprint import Blueprint, EgressRule, Environment, connections_by_application
from domain.blueprint_file import parse_blueprint
from domain.masking import golden_dump_uri
from domain.plan import (
    Plan,
    PlanError,
    PlanOptions,
    Step,
    plan_preview,
    sweep_targets,
    topological,
)
from domain.pull_request import PullRequest
from domain.resources import (
    ApplicationSpec,
    AwsSpec,
    AwsTarget,
    CacheSpec,
    ConfigMapSpec,
    ContainerDatabaseSpec,
    DnsRecordsSpec,
    ImageSpec,
    IngressSpec,
    KubeSpec,
    NamespaceSpec,
    PostgresCloneSpec,
    RdsCloneSpec,
    SecretSpec,
    UrlCheck,
    VpcSpec,
)
from domain.secrets import SealedValue
from domain.systems import tenant_queue
from domain.variables import SecretVariable

ROOT = Path(__file__).parents[2]

PR = PullRequest(repository="acme/shop", number=7, head_sha="abcdef1234567", branch="feat/x")


def blueprint(**extra: Any) -> Blueprint:
    data: dict[str, Any] = {
        "project": {"name": "shop", "repository": "acme/shop"},
        "applications": [{"name": "web", "image": "r/web"}],
    }
    data.update(extra)
    return Blueprint.model_validate(data)


def kinds(plan: Plan) -> list[str]:
    return [s.spec.kind for s in plan.steps]


def assert_valid_order(plan: Plan) -> None:
    seen: set[str] = set()
    for step in plan.steps:
        assert set(step.depends_on) <= seen, f"{step.key} before its dependencies"
        seen.add(step.key)


def test_apps_only() -> None:
    plan = plan_preview(blueprint(), PR)
    assert_valid_order(plan)
    assert plan.keys() == ["slot", "namespace", "image/web", "config/web", "secret/web",
                           "app/web", "ingress/web"]
    image = plan.step("image/web").spec
    assert isinstance(image, ImageSpec) and (image.repository, image.tag) == (
        "r/web", "abcdef1234567")
    assert plan.step("image/web").wait_seconds == 30 * 60
    assert "image/web" in plan.step("app/web").depends_on
    without = plan_preview(blueprint(), PR, options=PlanOptions(check_images=False))
    assert "image/web" not in [s.key for s in without.steps]
    assert plan.step("namespace").depends_on == ("slot",)
    app = plan.step("app/web").spec
    assert isinstance(app, ApplicationSpec) and app.image == "r/web:abcdef1234567"
    assert plan.urls == {"web": "http://web-pr-7.preview.localhost"}
    ns = plan.step("namespace").spec
    assert isinstance(ns, NamespaceSpec) and ns.name == plan.environment_id
    assert all(s.spec.owner.environment == plan.environment_id for s in plan.steps)


def test_apps_with_container_database() -> None:
    plan = plan_preview(blueprint(
        applications=[{"name": "web", "image": "r/web", "depends_on": ["main"]}],
        databases=[{"name": "main", "mode": "container"}]), PR)
    assert_valid_order(plan)
    db = plan.step("database/main")
    assert db.spec.kind == "container_database" and db.depends_on == ("namespace",)
    secret = plan.step("secret/web").spec
    assert isinstance(secret, SecretSpec)
    assert secret.upstream["DATABASE_URL"].step == "database/main"


def test_a_cloned_container_database_restores_the_published_golden_dump() -> None:
    rule = {"table": "customers", "column": "email", "method": "hash"}
    cloned = blueprint(databases=[{"name": "main", "mode": "container", "source": "shop",
                                   "data_policy": "masked_clone", "masking": [rule]}])
    plan = plan_preview(cloned, PR, options=PlanOptions(golden_dump_bucket="goldens"))
    spec = plan.step("database/main").spec
    assert isinstance(spec, ContainerDatabaseSpec)
    assert spec.golden_dump_s3_uri == "s3://goldens/golden/shop/current.json"
    assert spec.golden_dump_s3_uri == golden_dump_uri("goldens", "shop")  # where it's published
    # The rules travel with it: the restore refuses a dump masked with fewer.
    assert [r.model_dump(mode="json", include=set(rule)) for r in spec.masking] == [rule]
    # Without a bucket the plan says what to configure instead of failing in the cluster.
    with pytest.raises(PlanError, match=r"'main'.*PREVIEW_GOLDEN_DUMP_BUCKET"):
        plan_preview(cloned, PR)
    empty = plan_preview(blueprint(databases=[{"name": "main", "mode": "container"}]), PR,
                         options=PlanOptions(golden_dump_bucket="goldens"))
    spec = empty.step("database/main").spec
    assert isinstance(spec, ContainerDatabaseSpec) and spec.golden_dump_s3_uri is None


def test_apps_with_rds_clone_in_a_dedicated_vpc() -> None:
    bp = blueprint(
        applications=[{"name": "web", "image": "r/web", "depends_on": ["main"]}],
        environment={"isolation": "vpc"},
        databases=[{"name": "main", "mode": "rds", "source": "prod-db",
                    "data_policy": "clone"}],
        network={"base_domain": "preview.example.com", "hosted_zone_id": "Z1",
                 "tls": "per_host", "cluster_vpc_id": "vpc-123"},
    )
    plan = plan_preview(bp, PR)
    assert_valid_order(plan)
    assert {"vpc", "database/main", "certificate", "dns"} <= set(plan.keys())
    vpc = plan.step("vpc").spec
    assert isinstance(vpc, VpcSpec) and vpc.peer_vpc_id == "vpc-123"
    rds = plan.step("database/main")
    assert isinstance(rds.spec, RdsCloneSpec) and rds.depends_on == ("vpc",)
    assert rds.spec.vpc_step == "vpc" and rds.spec.source_instance == "prod-db"
    assert plan.step("secret/web").depends_on == ("namespace", "database/main")


def test_shared_database_and_variables_reach_the_application() -> None:
    sealed = SealedValue(key_id="k", wrapped_key="w", nonce="n", ciphertext="c")
    bp = blueprint(
        databases=[{"name": "main", "mode": "shared"}],
        variables=[
            {"key": "NODE_ENV", "value": "production"},
            {"key": "NODE_ENV", "value": "development", "applies_to": "previews",
             "kind": "override"},
        ],
    )
    plan = plan_preview(bp, PR, [SecretVariable(key="STRIPE_KEY", sealed=sealed)])
    config = plan.step("config/web").spec
    assert isinstance(config, ConfigMapSpec)
    assert config.data["NODE_ENV"] == "development"
    assert config.data["PR_NUMBER"] == "7" and config.data["HEAD_SHA"] == PR.head_sha
    assert config.data["PREVIEW_URL"] == "http://web-pr-7.preview.localhost"
    assert "STRIPE_KEY" not in config.data  # secrets never in a ConfigMap
    secret = plan.step("secret/web").spec
    assert isinstance(secret, SecretSpec) and secret.data["STRIPE_KEY"] == sealed
    assert isinstance(plan.step("database/main").spec, PostgresCloneSpec)


def test_fork_pull_requests_get_no_secrets_by_default() -> None:
    sealed = SealedValue(key_id="k", wrapped_key="w", nonce="n", ciphertext="c")
    fork = PR.model_copy(update={"is_fork": True})
    secrets = [SecretVariable(key="STRIPE_KEY", sealed=sealed)]
    spec = plan_preview(blueprint(), fork, secrets).step("secret/web").spec
    assert isinstance(spec, SecretSpec) and spec.data == {}
    allowed = blueprint(policy={"forks": "allow_secrets"})
    spec = plan_preview(allowed, fork, secrets).step("secret/web").spec
    assert isinstance(spec, SecretSpec) and "STRIPE_KEY" in spec.data


def test_plan_is_deterministic_and_changes_only_with_the_commit() -> None:
    bp = blueprint(applications=[{"name": "web", "image": "r/web"},
                                 {"name": "api", "image": "r/api", "public": False}])
    assert plan_preview(bp, PR) == plan_preview(bp, PR)
    newer = plan_preview(bp, PR.model_copy(update={"head_sha": "1234567abcdef"}))
    changed = {s.key for s in newer.steps if s != plan_preview(bp, PR).step(s.key)}
    assert changed == {"config/web", "config/api", "image/web", "image/api", "app/web",
                       "app/api"}


def test_isolated_targets_get_their_own_task_queues() -> None:
    bp = blueprint(environment={"isolation": "cluster", "cluster": {"name": "hipaa"}})
    plan = plan_preview(bp, PR)
    kube = [s for s in plan.steps if isinstance(s.spec, KubeSpec)]
    assert kube and {s.task_queue for s in kube} == {"previews-cluster-hipaa"}
    # The control plane's and the registry's steps stay on the lifecycle worker.
    others = [s for s in plan.steps if not isinstance(s.spec, KubeSpec)]
    assert {s.key for s in others} == {"slot", "image/web"}
    assert {s.task_queue for s in others} == {None}
    assert all(getattr(s.spec, "cluster", "hipaa") == "hipaa" for s in plan.steps)


def test_topological_rejects_cycles_and_unknown_dependencies() -> None:
    ns = plan_preview(blueprint(), PR).step("namespace")
    a = Step(key="a", spec=ns.spec, depends_on=("b",))
    b = Step(key="b", spec=ns.spec, depends_on=("a",))
    with pytest.raises(PlanError, match="cycle"):
        topological([a, b])
    with pytest.raises(PlanError, match="unknown step 'zzz'"):
        topological([Step(key="a", spec=ns.spec, depends_on=("zzz",))])


@pytest.mark.parametrize("bad, message", [
    ({"applications": [{"name": "Bad_Name", "image": "x"}]}, "not a DNS-safe name"),
    ({"applications": [{"name": "a", "image": "x", "depends_on": ["b"]},
                       {"name": "b", "image": "x", "depends_on": ["a"]}]}, "cycle: a -> b -> a"),
    ({"applications": [{"name": "a", "image": "x", "colour": "red"}]}, "colour"),
    ({"applications": [{"name": "a", "image": "x", "depends_on": ["nope"]}]}, "'nope'"),
    ({"databases": [{"name": "d", "data_policy": "clone"}]}, "needs source"),
])
def test_invalid_blueprints_say_what_is_wrong(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        blueprint(**bad)


def test_vpc_ranges_differ_per_preview_and_stay_inside_the_pool() -> None:
    import ipaddress

    from domain.plan import vpc_cidr

    pool = ipaddress.ip_network("10.64.0.0/12")
    ranges = {vpc_cidr(str(pool), f"env-{i}") for i in range(50)}
    assert all(ipaddress.ip_network(r).subnet_of(pool) for r in ranges)  # type: ignore[arg-type]
    assert len(ranges) >= 48  # 1024 blocks: collisions are rare, and refused when they happen
    assert vpc_cidr(str(pool), "env-1") == vpc_cidr(str(pool), "env-1")


def test_sweep_targets_name_each_cluster_and_account_once_with_its_routing() -> None:
    account = {"account_id": "222222222222", "role_arn": "arn:aws:iam::222222222222:role/p",
               "external_id": "ext-id"}
    environments = [Environment.model_validate(e) for e in (
        {},
        {"region": "us-east-1"},
        {"isolation": "cluster", "cluster": {"name": "hipaa"}},
        {"isolation": "cluster", "cluster": {"name": "hipaa"}, "region": "us-east-1"},
        {"isolation": "vpc", "cluster": {"name": "eu-2"}},
        {"isolation": "account", "cloud_account": account},
        # An account named without account isolation is not a tenant's: the shared one acts.
        {"cloud_account": account},
    )]
    targets = sweep_targets(environments)
    assert targets.clusters == ["default", "eu-2"]
    assert targets.dedicated_clusters == ["hipaa"]
    assert targets.aws_targets == [
        AwsTarget(region="eu-west-1"),
        AwsTarget(region="us-east-1"),
        AwsTarget(region="eu-west-1", account_id="222222222222",
                  role_arn=account["role_arn"], external_id="ext-id"),
    ]
    # The planner's own routing agrees: an isolated account's steps carry its target.
    plan = plan_preview(blueprint(
        environment={"isolation": "account", "cloud_account": account},
        databases=[{"name": "main", "mode": "rds", "source": "prod-db",
                    "data_policy": "clone"}],
        network={"base_domain": "preview.example.com", "hosted_zone_id": "Z1",
                 "tls": "per_host", "cluster_vpc_id": "vpc-123"}), PR)
    aws_steps = [s for s in plan.steps if isinstance(s.spec, AwsSpec)]
    assert aws_steps and {s.spec.target for s in aws_steps
                          if isinstance(s.spec, AwsSpec)} == {targets.aws_targets[2]}
    assert {s.task_queue for s in aws_steps} == {tenant_queue("previews", "account",
                                                              "222222222222")}


def test_a_dedicated_cluster_must_be_named() -> None:
    with pytest.raises(ValidationError, match=r"needs environment\.cluster\.name"):
        blueprint(environment={"isolation": "cluster"})


def test_urls_follow_tls_and_the_domain_defaults_to_the_engines() -> None:
    options = PlanOptions(base_domain="previews.acme.dev", ingress_hostname="lb.example.net")
    plain = plan_preview(blueprint(), PR, options=options)
    assert plain.urls == {"web": "http://web-pr-7.previews.acme.dev"}
    custom = plan_preview(blueprint(network={
        "base_domain": "shop.example.org", "tls": "per_host", "hosted_zone_id": "Z9"}),
        PR, options=options)
    assert custom.urls == {"web": "https://web-pr-7.shop.example.org"}
    dns = custom.step("dns").spec
    assert isinstance(dns, DnsRecordsSpec) and dns.points_to == "lb.example.net"
    assert dns.hosts == ["web-pr-7.shop.example.org"]
    wildcard = plan_preview(blueprint(network={
        "tls": "wildcard", "wildcard_certificate_arn": "arn:aws:acm:eu-west-1:1:certificate/w"}),
        PR, options=options)
    assert wildcard.urls["web"].startswith("https://")


def test_connection_urls_follow_the_collections_declaration() -> None:
    """Every kind with a url_variable wires its elements into the apps that use them."""
    plan = plan_preview(blueprint(
        applications=[{"name": "web", "image": "r/web", "depends_on": ["orders"]},
                      {"name": "jobs", "image": "r/jobs", "public": False}],
        databases=[{"name": "main", "mode": "shared"}, {"name": "orders", "mode": "shared"}]),
        PR)
    web, jobs = plan.step("secret/web").spec, plan.step("secret/jobs").spec
    assert isinstance(web, SecretSpec) and isinstance(jobs, SecretSpec)
    # web names one database: only that one; jobs names none: no database's credentials.
    assert {k: r.step for k, r in web.upstream.items()} == {
        "DATABASE_URL": "database/orders", "DATABASE_URL_ORDERS": "database/orders"}
    assert jobs.upstream == {}
    assert plan.step("secret/web").depends_on == ("namespace", "database/orders")
    assert plan.step("secret/jobs").depends_on == ("namespace",)
    both = blueprint(
        applications=[{"name": "web", "image": "r/web", "depends_on": ["orders", "main"]},
                      {"name": "jobs", "image": "r/jobs", "public": False}],
        databases=[{"name": "main", "mode": "shared"}, {"name": "orders", "mode": "shared"}])
    assert connections_by_application(both) == {
        "web": ["DATABASE_URL", "DATABASE_URL_MAIN", "DATABASE_URL_ORDERS"], "jobs": []}
    # The first one named in the blueprint's order is DATABASE_URL.
    first = plan_preview(both, PR).step("secret/web").spec
    assert isinstance(first, SecretSpec) and first.upstream["DATABASE_URL"].step == "database/main"


def test_the_example_front_end_holds_no_database_credentials() -> None:
    """examples/preview.yaml: web names only the api, so it gets no DATABASE_URL; the api
    gets its database's and its cache's; the worker its database's only."""
    example = parse_blueprint((ROOT / "examples" / "preview.yaml").read_text(),
                              "examples/preview.yaml")
    assert connections_by_application(example) == {
        "web": [],
        "api": ["DATABASE_URL", "DATABASE_URL_MAIN", "REDIS_URL", "REDIS_URL_SESSIONS"],
        "worker": ["DATABASE_URL", "DATABASE_URL_MAIN"]}
    plan = plan_preview(example, PR)
    web = plan.step("secret/web").spec
    assert isinstance(web, SecretSpec) and not set(web.upstream) & {"DATABASE_URL",
                                                                     "REDIS_URL"}


def test_hardened_by_default_and_opt_outs_need_a_reason_and_a_lower_level() -> None:
    plan = plan_preview(blueprint(), PR)
    namespace, app = plan.step("namespace").spec, plan.step("app/web").spec
    assert isinstance(namespace, NamespaceSpec) and namespace.pod_security == "restricted"
    assert isinstance(app, ApplicationSpec) and app.run_as_non_root
    rooted = {"name": "web", "image": "r/web", "run_as_root": {"reason": "vendor image"}}
    with pytest.raises(ValidationError, match="restricted pod security level refuses"):
        blueprint(applications=[rooted])
    with pytest.raises(ValidationError, match="needs pod_security_reason"):
        blueprint(applications=[rooted], policy={"pod_security": "baseline"})
    lowered = plan_preview(blueprint(applications=[rooted], policy={
        "pod_security": "baseline", "pod_security_reason": "legacy web image"}), PR)
    namespace, app = lowered.step("namespace").spec, lowered.step("app/web").spec
    assert isinstance(namespace, NamespaceSpec) and namespace.pod_security == "baseline"
    assert isinstance(app, ApplicationSpec) and not app.run_as_non_root
    # Reviewers see both on the pull request (step summaries are its resource list).
    assert "may run as root: vendor image" in lowered.step("app/web").summary
    assert "pod security baseline: legacy web image" in lowered.step("namespace").summary


def test_a_cache_is_a_step_of_its_own_wired_only_into_the_apps_that_name_it() -> None:
    plan = plan_preview(blueprint(
        applications=[{"name": "web", "image": "r/web", "depends_on": ["sessions"]},
                      {"name": "jobs", "image": "r/jobs", "public": False}],
        caches=[{"name": "sessions"}]), PR)
    cache = plan.step("cache/sessions")
    assert isinstance(cache.spec, CacheSpec) and cache.depends_on == ("namespace",)
    assert cache.spec.namespace == plan.environment_id and cache.spec.name == "cache-sessions"
    web, jobs = plan.step("secret/web").spec, plan.step("secret/jobs").spec
    assert isinstance(web, SecretSpec) and isinstance(jobs, SecretSpec)
    assert {k: r.step for k, r in web.upstream.items()} == {
        "REDIS_URL": "cache/sessions", "REDIS_URL_SESSIONS": "cache/sessions"}
    assert jobs.upstream == {}
    assert "cache/sessions" in plan.step("secret/web").depends_on
    with pytest.raises(ValidationError, match="duplicate cache names"):
        blueprint(caches=[{"name": "a"}, {"name": "a"}])
    with pytest.raises(ValidationError, match="memory"):
        blueprint(caches=[{"name": "a", "memory": "lots"}])


def test_the_namespace_carries_what_previews_may_reach_and_the_urls_their_port() -> None:
    options = PlanOptions(url_port=8443, ingress_cidrs=("10.87.0.1/32",),
                          dns_cidrs=("10.88.0.1/32",),
                          egress=(EgressRule(cidr="10.88.0.1/32", ports=[5432]),))
    plan = plan_preview(blueprint(
        applications=[{"name": "web", "image": "r/web", "public": True}],
        network={"egress": [{"cidr": "0.0.0.0/0", "ports": [443]}]}), PR, options=options)
    spec = plan.step("namespace").spec
    assert isinstance(spec, NamespaceSpec)
    assert spec.ingress_cidrs == ["10.87.0.1/32"] and spec.dns_cidrs == ["10.88.0.1/32"]
    # The engine's allowances first, then the blueprint's.
    assert [(r.cidr, r.ports) for r in spec.egress] == [("10.88.0.1/32", [5432]),
                                                        ("0.0.0.0/0", [443])]
    assert plan.urls == {"web": "http://web-pr-7.preview.localhost:8443"}
    ingress = plan.step("ingress/web").spec
    assert isinstance(ingress, IngressSpec) and ingress.url_port == 8443


@pytest.mark.parametrize(("cidr", "why"), [
    ("169.254.169.254/32", "cloud metadata address"),
    ("10.0.0.300/32", "egress cidr"),
    ("fd00::/64", "only IPv4"),
])
def test_a_blueprint_cannot_open_the_metadata_address_or_give_a_bad_range(
        cidr: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        blueprint(network={"egress": [{"cidr": cidr}]})


def test_links_between_elements_resolve_and_a_missing_one_is_named() -> None:
    """`{{ urls.api }}` is the api's preview URL anywhere in a value; `{{ connections.main }}`
    the database's connection URL, delivered through the Secret."""
    apps = [{"name": "web", "image": "r/web"}, {"name": "api", "image": "r/api"},
            {"name": "jobs", "image": "r/jobs", "public": False}]
    plan = plan_preview(blueprint(
        applications=apps, databases=[{"name": "main", "mode": "shared"}],
        variables=[
            {"key": "API_BASE", "value": "{{ urls.api }}/v1", "scope": "application",
             "application": "web"},
            {"key": "ANALYTICS_DB", "value": "{{ connections.main }}", "scope": "application",
             "application": "jobs"}]), PR)
    web = plan.step("config/web").spec
    assert isinstance(web, ConfigMapSpec)
    assert web.data["API_BASE"] == "http://api-pr-7.preview.localhost/v1"
    jobs_config, jobs_secret = plan.step("config/jobs").spec, plan.step("secret/jobs").spec
    assert isinstance(jobs_config, ConfigMapSpec) and isinstance(jobs_secret, SecretSpec)
    assert "ANALYTICS_DB" not in jobs_config.data
    assert jobs_secret.upstream["ANALYTICS_DB"].step == "database/main"
    assert "database/main" in plan.step("secret/jobs").depends_on

    for value, says in (("{{ urls.jobs }}", "{{ urls.jobs }} names no public application"),
                        ("{{ connections.cache }}", "names no database or cache"),
                        ("postgres://{{ connections.main }}", "must be the whole value"),
                        ("{{ secrets.main }}", "links are urls.<application>")):
        with pytest.raises(ValidationError, match=re.escape(says)):
            blueprint(applications=apps, databases=[{"name": "main"}],
                      variables=[{"key": "X", "value": value}])


def test_each_route_is_checked_through_the_ingress_where_the_worker_reaches_it() -> None:
    """PREVIEW_PREVIEW_URL_CHECK: the health path when the application has one (only 2xx
    or 3xx counts), else `/`; not for a tenant's own cluster, whose ingress the planning
    worker's setting does not name."""
    options = PlanOptions(url_check=True, url_connect_to="127.0.0.1:8443")
    apps = [{"name": "web", "image": "r/web"},
            {"name": "api", "image": "r/api", "health_check": {"path": "/health"}}]
    plan = plan_preview(blueprint(applications=apps), PR, options=options)
    web, api = plan.step("ingress/web").spec, plan.step("ingress/api").spec
    assert isinstance(web, IngressSpec) and isinstance(api, IngressSpec)
    assert web.url_check == UrlCheck(path="/", health=False, connect_to="127.0.0.1:8443")
    assert api.url_check == UrlCheck(path="/health", health=True, connect_to="127.0.0.1:8443")
    tenant = plan_preview(blueprint(applications=apps, environment={
        "isolation": "cluster", "cluster": {"name": "hipaa"}}), PR, options=options)
    ingress = tenant.step("ingress/web").spec
    assert isinstance(ingress, IngressSpec) and ingress.url_check is None
    off = plan_preview(blueprint(applications=apps), PR).step("ingress/web").spec
    assert isinstance(off, IngressSpec) and off.url_check is None
