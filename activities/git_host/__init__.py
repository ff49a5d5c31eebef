"""GitHub and GitLab: the feedback a preview gives on its pull request (feedback.py),
what it reads from the PR's repository (repository.py), both over one client for the
two hosts' REST APIs (api.py)."""

from activities.git_host.api import GIT_HOST_REJECTED, GIT_HOST_UNAVAILABLE, GitHostClients
from activities.git_host.feedback import FeedbackActivities
from activities.git_host.repository import RepositoryActivities

__all__ = ["GIT_HOST_REJECTED", "GIT_HOST_UNAVAILABLE", "FeedbackActivities", "GitHostClients",
           "RepositoryActivities"]
