"""Whether a pull request, as it is now, should have a preview at all."""

from __future__ import annotations

from domain.blueprint import DraftBehaviour, ForkBehaviour, PreviewPolicy
from domain.pull_request import PullRequest


def skip_reason(policy: PreviewPolicy, pr: PullRequest) -> str | None:
    """None when the PR gets a preview; otherwise why not, in words for the PR."""
    if policy.opt_out_label and policy.opt_out_label in pr.labels:
        return f"label {policy.opt_out_label!r} opts out of previews"
    if policy.opt_in_label and policy.opt_in_label not in pr.labels:
        return f"previews are opt-in: add the label {policy.opt_in_label!r}"
    if pr.is_draft and policy.draft == DraftBehaviour.skip:
        return "draft pull requests get no preview until ready for review"
    if pr.is_fork and policy.forks == ForkBehaviour.skip:
        return "pull requests from forks get no preview"
    return None
