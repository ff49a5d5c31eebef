"""The deployment facts the worker gives the planner: what previews may reach."""

from __future__ import annotations

from activities.control_plane.planning import database_egress, plan_options
from domain.blueprint import EgressRule
from engine.settings import Settings


def test_previews_may_reach_the_database_server_at_the_address_they_use() -> None:
    settings = Settings(preview_database_url="postgresql://preview@127.0.0.1:5432/postgres",
                        preview_database_app_address="10.88.0.1:5432")
    assert database_egress(settings) == [EgressRule(cidr="10.88.0.1/32", ports=[5432])]
    # The admin URL's address when the apps use it too; loopback means nothing to a pod.
    direct = Settings(preview_database_url="postgresql://preview@10.1.2.3:6432/postgres")
    assert database_egress(direct) == [EgressRule(cidr="10.1.2.3/32", ports=[6432])]
    assert database_egress(Settings(
        preview_database_url="postgresql://preview@127.0.0.1:5432/postgres")) == []


def test_a_server_known_by_name_needs_the_setting() -> None:
    settings = Settings(
        preview_database_url="postgresql://preview@db.abc.eu-west-1.rds.amazonaws.com/postgres",
        preview_egress=[EgressRule(cidr="10.20.0.0/16", ports=[5432])])
    assert database_egress(settings) == []
    assert plan_options(settings).egress == (EgressRule(cidr="10.20.0.0/16", ports=[5432]),)
