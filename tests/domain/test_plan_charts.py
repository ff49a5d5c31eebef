"""The planner's Helm charts (domain.charts.Chart): values made final for the preview,
connection URLs kept out of them, and what a blueprint may not say about a chart."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from domain.blueprint import Blueprint
from domain.feedback import RepositoryFolder
from domain.plan import PlanError, PlanOptions, plan_preview
from domain.plan_elements import set_value
from domain.pull_request import PullRequest
from domain.resources import ChartSpec, ConfigMapSpec, UpstreamRef, UrlCheck

PR = PullRequest(repository="acme/shop", number=7, head_sha="abcdef1234567", branch="feat/x")
SHOP = {"name": "shop", "chart": "oci://registry.local/charts/shop", "version": "1.2.0",
        "public": True, "depends_on": ["main"], "image_tag_values": ["image.tag"],
        "values": {
            "ingress": {"host": "{{ hosts.shop }}"},
            "api": "{{ urls.api }}/v1",
            "database": {"secretName": "{{ connections.main }}"},
            "labels": ["pr-{{ pr.number }}", "{{ pr.head_sha }}"],
            "replicas": 2, "image": {"repository": "r/shop"},
        }}


def blueprint(charts: list[dict[str, Any]], **extra: Any) -> Blueprint:
    data: dict[str, Any] = {
        "project": {"name": "shop", "repository": "acme/shop"},
        "applications": [{"name": "api", "image": "r/api", "depends_on": ["main"]},
                         {"name": "web", "image": "r/web", "depends_on": ["shop"]}],
        "databases": [{"name": "main"}], "caches": [{"name": "sessions"}],
        "charts": charts,
    }
    return Blueprint.model_validate(data | extra)


def test_a_charts_values_are_made_final_for_the_preview() -> None:
    plan = plan_preview(blueprint([SHOP]), PR)
    step = plan.step("chart/shop")
    spec = step.spec
    assert isinstance(spec, ChartSpec)
    assert (spec.chart, spec.version, spec.namespace) == (
        "oci://registry.local/charts/shop", "1.2.0", plan.environment_id)
    assert spec.values == {
        "ingress": {"host": "shop-pr-7.preview.localhost"},
        "api": "http://api-pr-7.preview.localhost/v1",
        # The name of a Secret the step makes, never the URL (it holds a password).
        "database": {"secretName": "chart-shop-main"},
        "labels": ["pr-7", "abcdef1234567"],
        "replicas": 2, "image": {"repository": "r/shop", "tag": "abcdef1234567"},
    }
    assert spec.connections == {"chart-shop-main": UpstreamRef(step="database/main",
                                                                output="url")}
    assert set(step.depends_on) == {"namespace", "database/main"}
    # Public: it has a URL on the PR, and an application can link to it and wait for it.
    assert plan.urls["shop"] == spec.url == "http://shop-pr-7.preview.localhost"
    assert "chart/shop" in plan.step("app/web").depends_on
    assert spec.url_check is None  # the worker checks no route unless told where


def test_a_public_charts_route_is_checked_where_the_worker_reaches_the_ingress() -> None:
    options = PlanOptions(url_check=True, url_connect_to="127.0.0.1:8081")
    spec = plan_preview(blueprint([SHOP]), PR, options=options).step("chart/shop").spec
    assert isinstance(spec, ChartSpec)
    assert spec.url_check == UrlCheck(path="/", connect_to="127.0.0.1:8081")
    private = plan_preview(blueprint([{**SHOP, "public": False, "values": {}}]), PR,
                           options=options).step("chart/shop").spec
    assert isinstance(private, ChartSpec) and (private.url, private.url_check) == (None, None)


def test_an_application_links_to_a_public_charts_url() -> None:
    bp = blueprint([SHOP], variables=[{"key": "SHOP_URL", "value": "{{ urls.shop }}/cart"}])
    config = plan_preview(bp, PR).step("config/web").spec
    assert isinstance(config, ConfigMapSpec)
    assert config.data["SHOP_URL"] == "http://shop-pr-7.preview.localhost/cart"


@pytest.mark.parametrize(("chart", "message"), [
    ({"chart": "https://charts.example.com/shop-1.0.tgz"}, "give oci://host/path/name"),
    ({"chart": "shop"}, "neither an oci:// reference nor a name in a `repository`"),
    ({"chart": "shop", "repository": "ftp://x"}, "repository"),
    ({"depends_on": ["api"]}, "chart 'shop' depends on 'api', which is not a database"),
    ({"values": {"a": {"b": "{{ urls.nowhere }}"}}},
     r"chart shop value a\.b: \{\{ urls\.nowhere \}\} names no public application or chart"),
    ({"values": {"x": "{{ hosts.api }}"}}, "names no public chart"),
    ({"values": {"x": "{{ pr.title }}"}}, "pr.number, pr.head_sha"),
    ({"values": {"x": "postgres://{{ connections.main }}"}}, "must be the whole value"),
    ({"image_tag_values": ["image..tag"]}, "image_tag_values"),
    ({"chart": None, "version": None}, "say where the chart is: `chart`"),
    ({"path": "deploy/chart"}, "give it without `chart`, `repository` or `version`"),
    ({"chart": None, "version": None, "path": "deploy/../secrets"}, "without . or .."),
    ({"chart": None, "version": None, "path": "/etc/chart"}, "path"),
])
def test_what_a_blueprint_may_not_say_about_a_chart(chart: dict[str, Any],
                                                     message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        blueprint([{**SHOP, **chart}])


def test_a_chart_and_an_application_may_not_share_a_name() -> None:
    with pytest.raises(ValidationError, match="elements of different kinds share the name"):
        blueprint([{**SHOP, "name": "api"}])


FOLDER = RepositoryFolder(path="deploy/chart", archive="H4sI", digest="0" * 64, files=4,
                          size=900)


def test_a_chart_of_the_repository_is_planned_with_its_folder_as_read() -> None:
    shop = {**SHOP, "chart": None, "version": None, "path": "deploy/chart"}
    step = plan_preview(blueprint([shop]), PR, chart_folders={"shop": FOLDER}).step("chart/shop")
    assert isinstance(step.spec, ChartSpec)
    assert (step.spec.chart, step.spec.folder) == (None, FOLDER)
    assert step.summary == "chart deploy/chart of the repository"
    assert step.spec.values["image"]["tag"] == PR.head_sha  # as for any chart
    # The workflow reads every chart folder before planning: one missing is a bug, named.
    with pytest.raises(PlanError, match="chart shop: its folder deploy/chart was not read"):
        plan_preview(blueprint([shop]), PR)
    with pytest.raises(PlanError, match="was not read"):
        plan_preview(blueprint([shop]), PR, chart_folders={
            "shop": FOLDER.model_copy(update={"path": "other"})})
    # Folders each under their cap, but too much together for the preview's history.
    big = FOLDER.model_copy(update={"archive": "A" * (280 << 10)})  # 215040 bytes packed
    more = {"name": "more", "path": "deploy/more"}
    with pytest.raises(PlanError, match=r"chart folders pack to 430080 bytes together, past "
                                        r"the 393216"):
        plan_preview(blueprint([shop, more]), PR, chart_folders={
            "shop": big, "more": big.model_copy(update={"path": "deploy/more"})})
    # A registry's chart carries no folder.
    registry = plan_preview(blueprint([SHOP]), PR, chart_folders={"shop": FOLDER})
    spec = registry.step("chart/shop").spec
    assert isinstance(spec, ChartSpec) and spec.folder is None


keys = st.text(alphabet="abcxyz_-0", min_size=1, max_size=4)


@given(st.dictionaries(keys, st.one_of(st.integers(), keys)), st.lists(keys, min_size=1,
                                                                        max_size=4))
def test_set_value_puts_the_value_at_its_path_and_keeps_the_rest(
        values: dict[str, Any], path: list[str]) -> None:
    before = {k: v for k, v in values.items() if k != path[0]}
    set_value(values, ".".join(path), "sha")
    node: Any = values
    for key in path:
        node = node[key]
    assert node == "sha"
    assert {k: v for k, v in values.items() if k != path[0]} == before
