"""What a preview tells its pull request: one comment kept up to date and a commit status.

Pure: the activity in activities/github.py sends what these functions render. The
comment carries a hidden marker naming the environment, so the activity finds its own
comment again instead of adding a new one on every update.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from domain.naming import DNS_LABEL

FeedbackState = Literal[
    "creating", "ready", "updating", "failed", "sleeping", "destroying", "destroyed", "skipped"
]
# GitHub's commit status states; activities/github.py maps them to GitLab's.
CommitState = Literal["pending", "success", "failure", "error"]

STATUS_CONTEXT = "preview-engine"
DESCRIPTION_MAX = 140  # GitHub rejects longer status descriptions.
MESSAGE_MAX = 2000  # A comment is capped at 65536 characters; keep far below it.
_MARKER_PREFIX = "<!-- preview-engine:"
_SAFE_URL = re.compile(r"^https?://[^\s<>|`\\]+$")


class TeardownReceipt(BaseModel):
    """What a teardown removed, and what a check from outside found left afterwards."""

    model_config = ConfigDict(frozen=True)

    finished_at: datetime
    removed: list[str] = Field(default_factory=list, max_length=500,
                               description="One line per resource removed (step summaries)")
    checked: list[str] = Field(default_factory=list, max_length=100,
                               description="Systems listed afterwards: 'kubernetes:default', ...")
    leftovers: list[str] = Field(default_factory=list, max_length=500,
                                 description="'<system>: <resource>' still carrying our marks")
    unchecked: list[str] = Field(default_factory=list, max_length=100,
                                 description="'<system>: why it could not be listed'")

    @property
    def clean(self) -> bool:
        return not self.leftovers and not self.unchecked


class Feedback(BaseModel):
    """The state of one preview, as shown on its pull (merge) request.

    `message` is for people (the failed step and its error); it must never carry a
    secret, since it is posted publicly.
    """

    model_config = ConfigDict(frozen=True)

    provider: Literal["github", "gitlab"] = "github"
    repository: str = Field(
        pattern=r"^[^/\s]+(/[^/\s]+)+$", description="owner/name (GitLab: group/.../name)"
    )
    pr_number: int = Field(ge=1)
    head_sha: str = Field(pattern=r"^[0-9a-f]{7,64}$")
    state: FeedbackState
    urls: dict[str, str] = Field(default_factory=dict, description="app name → URL, primary first")
    resources: list[str] = Field(
        default_factory=list, max_length=200,
        description="What the preview is made of, one line each (step summaries)")
    message: str = ""
    receipt: TeardownReceipt | None = Field(None, description="Set when the preview is gone")
    # A DNS label, so it cannot close the HTML comment that holds the marker.
    environment_id: str = Field(pattern=DNS_LABEL.pattern, max_length=63)

    @model_validator(mode="after")
    def _github_repository_is_owner_name(self) -> Feedback:
        # GitLab allows nested groups; GitHub is exactly owner/name.
        if self.provider == "github" and self.repository.count("/") != 1:
            raise ValueError("a GitHub repository is owner/name")
        return self

    @property
    def target_url(self) -> str | None:
        """The link of the commit status: the first (primary) app's URL, when usable."""
        if self.state in ("destroying", "destroyed"):
            return None
        for url in self.urls.values():
            return url if _SAFE_URL.match(url) else None
        return None


def comment_marker(environment_id: str) -> str:
    return f"{_MARKER_PREFIX}{environment_id} -->"


def is_our_comment(body: str, environment_id: str) -> bool:
    # Only the first line counts: a person quoting our comment starts theirs with "> ".
    return body.split("\n", 1)[0].strip() == comment_marker(environment_id)


_HEADLINES: dict[str, str] = {
    "creating": "⏳ Creating the preview environment",
    "ready": "✅ Preview environment ready",
    "updating": "🔄 Updating the preview environment",
    "failed": "❌ Preview environment failed",
    "sleeping": "💤 Preview environment asleep",
    "destroying": "🧹 Removing the preview environment",
    "destroyed": "🗑️ Preview environment removed",
    "skipped": "⏭️ No preview for this pull request",
}


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: no HTML, no column breaks, one line."""
    text = " ".join(text.split())
    for char, escaped in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|")):
        text = text.replace(char, escaped)
    return text.replace("`", "'").replace("@", "@\u200b")  # no code spans, no mentions


def _link(url: str) -> str:
    return f"<{url}>" if _SAFE_URL.match(url) else _cell(url)


def _code_block(text: str) -> str:
    # A fence longer than any backtick run in the text cannot be closed by it; inside,
    # nothing is interpreted (no HTML, no @mentions, no links).
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def render_comment(feedback: Feedback) -> str:
    """The Markdown body of the pull request comment; equal input gives an equal body."""
    lines = [comment_marker(feedback.environment_id), f"### {_HEADLINES[feedback.state]}", ""]
    if feedback.urls and feedback.state not in ("destroying", "destroyed"):
        lines += ["| App | URL |", "|---|---|"]
        lines += [f"| {_cell(app)} | {_link(url)} |" for app, url in feedback.urls.items()]
        lines.append("")
    if feedback.resources and feedback.state not in ("destroying", "destroyed"):
        lines += ["<details><summary>Resources</summary>", ""]
        lines += [f"- {_cell(line)}" for line in feedback.resources]
        lines += ["", "</details>", ""]
    lines.append(
        f"**State:** `{feedback.state}` · **Commit:** `{feedback.head_sha[:12]}` · "
        f"**Environment:** `{feedback.environment_id}`"
    )
    message = feedback.message.strip()
    if message:
        if len(message) > MESSAGE_MAX:
            message = message[: MESSAGE_MAX - 1] + "…"
        lines += ["", _code_block(message)]
    return "\n".join(lines) + "\n"


_DESCRIPTIONS: dict[str, tuple[CommitState, str]] = {
    "creating": ("pending", "Creating the preview environment"),
    "updating": ("pending", "Updating the preview environment"),
    "ready": ("success", "Preview environment ready"),
    # A sleeping or removed preview is not a problem with the commit: success keeps a
    # required check from blocking the merge.
    "sleeping": ("success", "Preview environment asleep"),
    "destroying": ("success", "Removing the preview environment"),
    "destroyed": ("success", "Preview environment removed"),
    # Not a problem with the commit either: a neutral note saying why (GitHub commit
    # statuses have no neutral state; a required check must not block the merge).
    "skipped": ("success", "No preview"),
    # "error" (the check could not run) is not used: a failed preview is reported as a
    # failure of this commit's preview, with the step that failed.
    "failed": ("failure", "Preview environment failed"),
}


def commit_state(feedback: Feedback) -> tuple[CommitState, str]:
    """The commit status state and a one-line description of at most 140 characters."""
    state, description = _DESCRIPTIONS[feedback.state]
    message = " ".join(feedback.message.split())
    if message:
        description = f"{description}: {message}"
    if len(description) > DESCRIPTION_MAX:
        description = description[: DESCRIPTION_MAX - 1].rstrip() + "…"
    return state, description
