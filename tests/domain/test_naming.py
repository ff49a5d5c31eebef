"""Names valid for every target, stable, and collision-resistant for any input."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from domain.naming import (
    DNS_LABEL,
    HOSTNAME,
    PG_IDENTIFIER,
    RDS_IDENTIFIER,
    dns_label,
    environment_id,
    hostname,
    pg_identifier,
    rds_identifier,
    resource_name,
    workflow_id,
)

any_text = st.text(min_size=1, max_size=300)
repos = st.tuples(any_text, any_text).map(lambda t: f"{t[0]}/{t[1]}")
numbers = st.integers(min_value=1, max_value=10**7)


@given(repos, numbers, any_text)
def test_every_name_is_valid_for_its_target(repo: str, number: int, key: str) -> None:
    env = environment_id(repo, number)
    assert DNS_LABEL.match(env) and len(env) <= 63
    assert DNS_LABEL.match(resource_name(env, key))
    assert DNS_LABEL.match(dns_label(key))
    rds = rds_identifier(env, key)
    assert RDS_IDENTIFIER.match(rds), rds
    pg = pg_identifier(env, key)
    assert PG_IDENTIFIER.match(pg) and len(pg.encode()) <= 63
    host = hostname(key, number, "preview.example.com")
    assert HOSTNAME.match(host)


@given(repos, numbers)
def test_names_are_stable(repo: str, number: int) -> None:
    assert environment_id(repo, number) == environment_id(repo, number)
    assert workflow_id(repo, number) == workflow_id(repo, number)


@given(repos, repos, numbers)
def test_distinct_repositories_get_distinct_environments(a: str, b: str, number: int) -> None:
    if a.lower() != b.lower():
        assert environment_id(a, number) != environment_id(b, number)


def test_slug_collisions_are_separated_by_the_hash() -> None:
    assert environment_id("acme/shop", 1) != environment_id("acme-shop/shop", 1)
    assert dns_label("Feature/Login") != dns_label("feature-login")
    assert pg_identifier("a-b") != pg_identifier("a_b")


def test_long_branch_names_are_truncated_with_a_stable_suffix() -> None:
    long = "feature/" + "x" * 300
    name = dns_label(long)
    assert len(name) == 63 and name == dns_label(long)
    assert dns_label(long + "y") != name


def test_readable_names() -> None:
    assert environment_id("Codertocat/Hello-World", 2).startswith("hello-world-pr-2-")
    assert hostname("web", 42, "preview.example.com") == "web-pr-42.preview.example.com"
