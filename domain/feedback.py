"""What a preview tells its pull request: one comment kept up to date, a commit status,
and a deployment (GitHub) or environment (GitLab).

Pure: the activity in activities/git_host/feedback.py sends what these functions render. The
comment carries a hidden marker naming the environment, so the activity finds its own
comment again instead of adding a new one on every update.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from domain.migration import MigrationReport, render_markdown
from domain.naming import DNS_LABEL

FeedbackState = Literal[
    "creating", "ready", "updating", "failed", "sleeping", "destroying", "destroyed", "skipped",
    "degraded",
]
# GitHub's commit status states; activities/git_host/feedback.py maps them to GitLab's.
CommitState = Literal["pending", "success", "failure", "error"]
# The GitHub deployment status states a preview uses.
DeploymentState = Literal["in_progress", "success", "failure", "inactive"]

STATUS_CONTEXT = "preview-engine"
DESCRIPTION_MAX = 140  # GitHub rejects longer status descriptions.
MESSAGE_MAX = 2000  # A comment is capped at 65536 characters; keep far below it.
# Items shown per list, the rest counted: the receipt's lists together stay far below
# GitHub's 65536 characters per comment (the resources are not shown with them).
LIST_MAX = 60
RESOURCES_MAX = 200
LINE_MAX = 200  # characters shown per list item
_MARKER_PREFIX = "<!-- preview-engine:"
_SAFE_URL = re.compile(r"^https?://[^\s<>|`\\]+$")


class ChangedFilesRequest(BaseModel):
    """Which pull request's changed files to list (paths, as the Git host names them)."""

    model_config = ConfigDict(frozen=True)

    provider: Literal["github", "gitlab"] = "github"
    repository: str
    pr_number: int = Field(ge=1)
    max_files: int = Field(3000, ge=1, le=10_000, description="GitHub lists at most 3000")


class RepositoryFileRequest(BaseModel):
    """One file of a repository at a commit (a blueprint's Compose file at a PR's head)."""

    model_config = ConfigDict(frozen=True)

    provider: Literal["github", "gitlab"] = "github"
    repository: str
    path: str = Field(min_length=1, max_length=300)
    ref: str = Field(pattern=r"^[0-9a-f]{7,64}$", description="The commit")


class RepositoryFolderRequest(RepositoryFileRequest):
    """A folder of a repository at a commit, every file under it (a blueprint's Helm
    chart at a PR's head). It travels in the preview's history, packed: hence the caps."""

    max_files: int = Field(300, ge=1, le=5000)
    max_bytes: int = Field(1 << 20, ge=1, description="Its files' sizes added up")
    max_packed_bytes: int = Field(128 << 10, ge=1, description="The packed folder")


class RepositoryFolder(BaseModel):
    """A folder's files packed as a gzip'd tar (names relative to the folder, sorted,
    without times or owners, so the same files always pack to the same bytes)."""

    model_config = ConfigDict(frozen=True)

    path: str
    archive: str = Field(description="base64 of the .tar.gz")
    digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the .tar.gz")
    files: int = Field(ge=0)
    size: int = Field(ge=0, description="Its files' sizes added up, unpacked")

    @property
    def packed_size(self) -> int:
        """The .tar.gz's size: base64 gives 3 bytes per 4 characters, less its padding."""
        return len(self.archive) * 3 // 4 - self.archive[-2:].count("=")


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
    migrations: list[MigrationReport] = Field(
        default_factory=list, max_length=50,
        description="What each deploy job's migration did to its database, when it last ran")
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
    "degraded": "⚠️ Preview environment damaged: part of it was removed",
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


def _item(text: str) -> str:
    """An escaped list item of at most LINE_MAX characters (escaping can grow text 5x)."""
    escaped = _cell(text)
    if len(escaped) <= LINE_MAX:
        return escaped
    cut = escaped[: LINE_MAX - 1]
    entity = cut.rfind("&", len(cut) - 5)
    if entity != -1 and ";" not in cut[entity:]:  # never half an entity
        cut = cut[:entity]
    return cut.removesuffix("\\") + "…"


def _bullets(items: list[str], limit: int = LIST_MAX) -> list[str]:
    """A Markdown list of escaped, shortened items; past `limit`, a count of the rest."""
    lines = [f"- {_item(item)}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"- … and {len(items) - limit} more")
    return lines


def _minute(moment: datetime) -> str:
    """ISO 8601 to the minute, in UTC (a naive time is taken as UTC)."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M}Z"


def _systems(names: list[str]) -> str:
    return ", ".join(_cell(name) for name in names) if names else "none"


def _receipt(receipt: TeardownReceipt) -> list[str]:
    """What a teardown removed and what was found afterwards, checked from outside."""
    count = len(receipt.removed)
    lines = [f"<details><summary>Removed {count} resource{'' if count == 1 else 's'}</summary>",
             ""]
    lines += _bullets(receipt.removed) or ["- nothing"]
    lines += ["", "</details>", "", f"**Removed at:** {_minute(receipt.finished_at)}", ""]
    if receipt.clean:
        return [*lines, f"✅ **Nothing left behind** (checked: {_systems(receipt.checked)}).", ""]
    if receipt.leftovers:
        lines += ["⚠️ **Left behind:**", *_bullets(receipt.leftovers), ""]
        if receipt.checked:
            lines += [f"Checked: {_systems(receipt.checked)}.", ""]
    else:
        lines += [f"**Nothing found left behind** (checked: {_systems(receipt.checked)}), "
                  "but not everything could be checked.", ""]
    if receipt.unchecked:
        lines += ["⚠️ **Not checked:**", *_bullets(receipt.unchecked), ""]
    lines += ["The orphan sweeper now owns what is left: it removes whatever still carries "
              "this environment's marks.", ""]
    return lines


def render_comment(feedback: Feedback) -> str:
    """The Markdown body of the pull request comment; equal input gives an equal body."""
    lines = [comment_marker(feedback.environment_id), f"### {_HEADLINES[feedback.state]}", ""]
    gone = feedback.state in ("destroying", "destroyed")
    if feedback.urls and not gone:
        lines += ["| App | URL |", "|---|---|"]
        lines += [f"| {_cell(app)} | {_link(url)} |" for app, url in feedback.urls.items()]
        lines.append("")
    if feedback.resources and not gone:
        lines += ["<details><summary>Resources</summary>", ""]
        lines += _bullets(feedback.resources, limit=RESOURCES_MAX)
        lines += ["", "</details>", ""]
    if feedback.migrations and not gone:
        lines += [render_markdown(feedback.migrations), ""]
    if feedback.receipt is not None:
        lines += _receipt(feedback.receipt)
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
    # Part of it was removed behind its back: not the commit's fault either, so a
    # required check stays green; the description and the comment say what is gone.
    "degraded": ("success", "Preview environment damaged"),
}


def commit_state(feedback: Feedback) -> tuple[CommitState, str]:
    """The commit status state and a one-line description of at most 140 characters."""
    state, description = _DESCRIPTIONS[feedback.state]
    receipt = feedback.receipt
    if receipt is not None and receipt.leftovers:
        description += f" ({len(receipt.leftovers)} left behind, for the orphan sweeper)"
    elif receipt is not None and not receipt.clean:
        description += " (not every system could be checked)"
    message = " ".join(feedback.message.split())
    if message:
        description = f"{description}: {message}"
    if len(description) > DESCRIPTION_MAX:
        description = description[: DESCRIPTION_MAX - 1].rstrip() + "…"
    return state, description


def deployment_environment(feedback: Feedback) -> str:
    """The Git host environment a preview is deployed to: one per pull (merge) request."""
    return f"preview/{'pr' if feedback.provider == 'github' else 'mr'}-{feedback.pr_number}"


_DEPLOYMENT_STATES: dict[str, DeploymentState] = {
    "creating": "in_progress",
    "updating": "in_progress",
    "ready": "success",
    "failed": "failure",
    "degraded": "failure",
    # A transient deployment set inactive shows as destroyed on GitHub.
    "destroyed": "inactive",
}


def deployment_state(feedback: Feedback) -> DeploymentState | None:
    """The GitHub deployment status to post; None leaves the deployment as it is
    (asleep, being removed, or no preview at all)."""
    return _DEPLOYMENT_STATES.get(feedback.state)
