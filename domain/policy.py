"""Whether a pull request, as it is now, should have a preview at all."""

from __future__ import annotations

from collections.abc import Sequence

from domain.blueprint import Application, DraftBehaviour, ForkBehaviour, PreviewPolicy
from domain.paths import touched
from domain.pull_request import PullRequest


def filters_paths(policy: PreviewPolicy, applications: Sequence[Application]) -> bool:
    """Does planning need the PR's changed files?"""
    return bool(policy.paths or policy.ignore_paths or any(a.paths for a in applications))


def skip_reason(policy: PreviewPolicy, pr: PullRequest,
                changed_files: Sequence[str] | None = None) -> str | None:
    """None when the PR gets a preview; otherwise why not, in words for the PR."""
    filtered = changed_files is not None and (policy.paths or policy.ignore_paths)
    if filtered and not touched(changed_files or (), policy.paths, policy.ignore_paths):
        where = f" under {', '.join(policy.paths)}" if policy.paths else ""
        return (f"none of the {len(changed_files or ())} changed files{where} needs a "
                "preview (path filters of the blueprint)")
    if policy.opt_out_label and policy.opt_out_label in pr.labels:
        return f"label {policy.opt_out_label!r} opts out of previews"
    if policy.opt_in_label and policy.opt_in_label not in pr.labels:
        return f"previews are opt-in: add the label {policy.opt_in_label!r}"
    if pr.is_draft and policy.draft == DraftBehaviour.skip:
        return "draft pull requests get no preview until ready for review"
    if pr.is_fork and policy.forks == ForkBehaviour.skip:
        return "pull requests from forks get no preview"
    return None
