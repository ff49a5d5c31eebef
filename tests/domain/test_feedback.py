"""The pull request comment and commit status a preview publishes."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from domain.feedback import (
    DESCRIPTION_MAX,
    Feedback,
    comment_marker,
    commit_state,
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
