"""The pull request comment and commit status a preview publishes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from domain.feedback import (
    DESCRIPTION_MAX,
    LIST_MAX,
    Feedback,
    TeardownReceipt,
    comment_marker,
    commit_state,
    deployment_environment,
    deployment_state,
    is_our_comment,
    render_comment,
)

SHA = "0123456789abcdef0123456789abcdef01234567"


def feedback(**overrides: Any) -> Feedback:
    values: dict[str, Any] = {
        "provider": "github",
        "repository": "acme/shop",
        "pr_number": 42,
        "head_sha": SHA,
        "state": "ready",
        "urls": {"web": "https://web.pr-42.preview.example.com", "api": "https://api.pr-42.x"},
        "environment_id": "shop-pr-42-abc123",
    }
    return Feedback(**(values | overrides))


def table_rows(body: str) -> list[str]:
    return [line for line in body.splitlines() if line.startswith("| ") and "---" not in line]


def test_marker_is_the_first_line_and_identifies_the_environment() -> None:
    body = render_comment(feedback())
    assert body.splitlines()[0] == "<!-- preview-engine:shop-pr-42-abc123 -->"
    assert is_our_comment(body, "shop-pr-42-abc123")
    assert not is_our_comment(body, "shop-pr-43-abc123")
    # A person quoting our comment does not make theirs ours.
    assert not is_our_comment("> " + body, "shop-pr-42-abc123")
    assert not is_our_comment("thanks!\n" + body, "shop-pr-42-abc123")


def test_table_lists_every_app_in_order_with_state_and_commit() -> None:
    body = render_comment(feedback())
    assert table_rows(body) == [
        "| App | URL |",
        "| web | <https://web.pr-42.preview.example.com> |",
        "| api | <https://api.pr-42.x> |",
    ]
    assert "`ready`" in body
    assert SHA[:12] in body
    assert "Preview environment ready" in body


def test_same_feedback_same_body_and_any_change_changes_it() -> None:
    base = render_comment(feedback())
    assert render_comment(feedback()) == base
    assert render_comment(feedback(state="updating")) != base
    assert render_comment(feedback(head_sha="f" * 40)) != base
    assert render_comment(feedback(urls={"web": "https://other"})) != base


def test_message_is_shown_in_a_fence_it_cannot_close() -> None:
    message = "step db failed:\n```\n<img src=x onerror=alert(1)> @acme/admins ````"
    body = render_comment(feedback(state="failed", message=message))
    fence = re.search(r"^(`{3,})text$", body, re.MULTILINE)
    assert fence is not None
    opening = fence.group(1)
    assert len(opening) > 4  # longer than the longest backtick run in the message
    inside = body.split(opening + "text\n", 1)[1].split("\n" + opening, 1)[0]
    assert inside == message


def test_table_cells_cannot_break_the_table_or_inject_html() -> None:
    body = render_comment(
        feedback(urls={"we|b <b>@team</b>": "javascript:alert(1)", "ok": "https://ok.example"})
    )
    rows = table_rows(body)
    assert len(rows) == 3
    for row in rows:
        assert len(re.split(r"(?<!\\)\|", row)) == 4  # two columns, escaped pipes aside
    assert "<b>" not in body
    assert "@team" not in body  # no mention pings
    assert "<javascript:" not in body  # not rendered as a link


def test_removed_preview_shows_no_urls_and_no_target() -> None:
    gone = feedback(state="destroyed")
    assert "| App | URL |" not in render_comment(gone)
    assert gone.target_url is None
    assert feedback().target_url == "https://web.pr-42.preview.example.com"
    assert feedback(urls={}).target_url is None
    assert feedback(urls={"web": "ftp://x"}).target_url is None


def test_long_message_is_truncated_in_the_comment() -> None:
    body = render_comment(feedback(state="failed", message="x" * 10_000))
    assert len(body) < 3000


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("creating", "pending"),
        ("updating", "pending"),
        ("ready", "success"),
        ("sleeping", "success"),
        ("destroying", "success"),
        ("destroyed", "success"),
        ("failed", "failure"),
    ],
)
def test_commit_state_mapping(state: str, expected: str) -> None:
    got, description = commit_state(feedback(state=state))
    assert got == expected
    assert 0 < len(description) <= DESCRIPTION_MAX


def test_commit_description_carries_the_message_on_one_line_within_140() -> None:
    state, description = commit_state(
        feedback(state="failed", message="step rds:\n  quota reached " + "y" * 300)
    )
    assert state == "failure"
    assert description.startswith("Preview environment failed: step rds: quota reached")
    assert "\n" not in description
    assert len(description) == DESCRIPTION_MAX
    assert description.endswith("…")


@pytest.mark.parametrize(
    "overrides",
    [
        {"environment_id": "x --> <script>"},
        {"environment_id": "Upper"},
        {"head_sha": "not-a-sha"},
        {"repository": "acme"},
        {"repository": "acme/platform/shop"},  # nested groups are GitLab only
        {"pr_number": 0},
        {"state": "unknown"},
    ],
)
def test_invalid_feedback_is_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        feedback(**overrides)


def test_gitlab_accepts_nested_groups() -> None:
    assert feedback(provider="gitlab", repository="acme/platform/shop").repository


def test_marker_helper_matches_render() -> None:
    assert render_comment(feedback()).startswith(comment_marker("shop-pr-42-abc123") + "\n")


# --- teardown receipt -----------------------------------------------------------------

FINISHED = datetime(2026, 3, 1, 10, 15, 42, tzinfo=UTC)


def receipt(**overrides: Any) -> TeardownReceipt:
    values: dict[str, Any] = {
        "finished_at": FINISHED,
        "removed": ["namespace shop-pr-42", "database clone shop_pr_42"],
        "checked": ["kubernetes:default", "postgres:preview"],
    }
    return TeardownReceipt(**(values | overrides))


def removed_items(body: str) -> list[str]:
    inside = body.split("<details><summary>Removed", 1)[1].split("</details>", 1)[0]
    return [line for line in inside.splitlines() if line.startswith("- ")]


def test_clean_receipt_lists_what_was_removed_when_and_what_was_checked() -> None:
    body = render_comment(feedback(state="destroyed", receipt=receipt()))
    assert "<details><summary>Removed 2 resources</summary>" in body
    assert removed_items(body) == ["- namespace shop-pr-42", "- database clone shop_pr_42"]
    assert "**Removed at:** 2026-03-01T10:15Z" in body
    assert "**Nothing left behind** (checked: kubernetes:default, postgres:preview)." in body
    assert "Left behind:" not in body and "sweeper" not in body
    # The receipt goes before the state line; the URLs of a removed preview do not show.
    assert body.index("Nothing left behind") < body.index("**State:**")
    assert "| App | URL |" not in body


def test_receipt_with_leftovers_and_unchecked_systems_hands_them_to_the_sweeper() -> None:
    body = render_comment(feedback(state="destroyed", receipt=receipt(
        leftovers=["aws: vpc-0abc (tag preview-env=shop-pr-42-abc123)"],
        unchecked=["aws:us-east-1: AccessDenied listing VPCs"],
    )))
    assert "Nothing left behind" not in body
    left = body.split("**Left behind:**\n", 1)[1].split("\n\n", 1)[0]
    assert left == "- aws: vpc-0abc (tag preview-env=shop-pr-42-abc123)"
    assert "Checked: kubernetes:default, postgres:preview." in body
    unchecked = body.split("**Not checked:**\n", 1)[1].split("\n\n", 1)[0]
    assert unchecked == "- aws:us-east-1: AccessDenied listing VPCs"
    assert "The orphan sweeper now owns what is left" in body


def test_receipt_with_only_unchecked_systems_is_not_called_clean() -> None:
    body = render_comment(feedback(state="destroyed", receipt=receipt(
        unchecked=["postgres:preview: connection refused"])))
    assert "**Nothing found left behind** (checked: kubernetes:default, postgres:preview)" in body
    assert "but not everything could be checked" in body
    assert "- postgres:preview: connection refused" in body
    assert "orphan sweeper" in body
    assert "✅" not in body


def test_receipt_time_is_utc_to_the_minute() -> None:
    paris = FINISHED.astimezone(timezone(timedelta(hours=1)))
    assert "**Removed at:** 2026-03-01T10:15Z" in render_comment(
        feedback(state="destroyed", receipt=receipt(finished_at=paris)))
    naive = datetime(2026, 3, 1, 23, 59, 59)  # taken as UTC
    assert "**Removed at:** 2026-03-01T23:59Z" in render_comment(
        feedback(state="destroyed", receipt=receipt(finished_at=naive)))


def test_receipt_lines_are_escaped_like_table_cells() -> None:
    hostile = "vpc <img src=x onerror=alert(1)> `code` @acme/admins | x\n## heading"
    body = render_comment(feedback(state="destroyed", receipt=receipt(
        removed=[hostile], leftovers=[hostile], unchecked=[hostile], checked=["<b>k8s</b>"])))
    assert "<img" not in body and "<b>" not in body
    assert "@acme" not in body  # no mention pings
    assert "`code`" not in body
    assert "\n## heading" not in body  # one line per item, no Markdown structure
    assert body.count("vpc &lt;img src=x onerror=alert(1)&gt; 'code' @\u200bacme/admins") == 3


@pytest.mark.parametrize("filler", ["x", "&", "<|@"])
def test_long_receipts_are_bounded_and_counted(filler: str) -> None:
    many = [f"resource {i} " + filler * 500 for i in range(500)]
    body = render_comment(feedback(state="destroyed", receipt=receipt(
        removed=many, leftovers=many, unchecked=many[:100])))
    assert len(body) < 40_000  # GitHub takes 65536 characters
    items = removed_items(body)
    assert len(items) == LIST_MAX + 1
    assert items[-1] == f"- … and {500 - LIST_MAX} more"
    assert all(len(item) <= 202 for item in items)
    assert all(re.search(r"&[a-z]*…", item) is None for item in items)  # no half entity
    assert "<details><summary>Removed 500 resources</summary>" in body


def test_receipt_with_nothing_removed_says_so() -> None:
    body = render_comment(feedback(state="destroyed", receipt=receipt(removed=[], checked=[])))
    assert "Removed 0 resources" in body and removed_items(body) == ["- nothing"]
    assert "**Nothing left behind** (checked: none)." in body
    assert "Removed 1 resource<" in render_comment(
        feedback(state="destroyed", receipt=receipt(removed=["namespace x"])))


def test_commit_status_of_a_removal_counts_what_was_left() -> None:
    assert commit_state(feedback(state="destroyed", receipt=receipt())) == (
        "success", "Preview environment removed")
    state, description = commit_state(feedback(
        state="destroyed", message="pull request closed",
        receipt=receipt(leftovers=["aws: vpc-1", "aws: subnet-2"])))
    assert state == "success"
    assert description == ("Preview environment removed (2 left behind, for the orphan "
                           "sweeper): pull request closed")
    _, unchecked = commit_state(feedback(state="destroyed", receipt=receipt(unchecked=["a: b"])))
    assert unchecked == "Preview environment removed (not every system could be checked)"


# --- deployments ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("creating", "in_progress"),
        ("updating", "in_progress"),
        ("ready", "success"),
        ("failed", "failure"),
        ("destroyed", "inactive"),
        ("sleeping", None),
        ("destroying", None),
        ("skipped", None),
    ],
)
def test_deployment_state_mapping(state: str, expected: str | None) -> None:
    assert deployment_state(feedback(state=state)) == expected


def test_one_deployment_environment_per_pull_or_merge_request() -> None:
    assert deployment_environment(feedback()) == "preview/pr-42"
    gitlab = feedback(provider="gitlab", repository="acme/platform/shop")
    assert deployment_environment(gitlab) == "preview/mr-42"


def test_skipped_state_has_its_own_headline_and_a_neutral_status() -> None:
    body = render_comment(feedback(state="skipped", urls={}, message="only docs changed"))
    assert "No preview for this pull request" in body
    assert commit_state(feedback(state="skipped", message="only docs changed")) == (
        "success", "No preview: only docs changed")


def test_the_migration_report_is_a_section_of_a_live_previews_comment() -> None:
    from domain.migration import LockHeld, MigrationReport, Rewrite

    report = MigrationReport(
        job="migrate", database="main", seconds=4.2, data_bytes=150_000_000,
        schema_changes=["~ column public.orders.amount: integer → bigint"],
        rewrites=[Rewrite(table="public.orders", bytes_before=120_000_000,
                          bytes_after=150_000_000)],
        locks=[LockHeld(table="public.orders", mode="AccessExclusiveLock", seconds=3.9,
                        blocks="reads and writes")], rows=[])
    body = render_comment(feedback(migrations=[report]))
    assert "#### Migrations" in body and "**migrate** on **main**" in body
    assert "- public.orders: 120 MB → 150 MB" in body
    assert "AccessExclusiveLock on public.orders for 3.9 s" in body
    # Before the state line, after the resources; gone with the preview.
    assert body.index("#### Migrations") < body.index("**State:**")
    assert "Migrations" not in render_comment(feedback(migrations=[report], state="destroyed"))
    assert "Migrations" not in render_comment(feedback())
